"""``--force`` replaces an earlier output of the command's own kind, never another file that
happens to sit at the path: ``predict --out d.h5 --force`` and ``evaluate --json d.h5 --force``
turned a dataset into a 3-byte ``[]`` and a metrics JSON before."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pytest
from conftest import run_cli

from shapesgen.errors import ConfigError
from shapesgen.files import write_atomically


@pytest.mark.parametrize(
    ("head", "kind", "named"),
    [
        (b"\x89HDF\r\n\x1a\n" + bytes(40), "results", "an HDF5 file"),
        (b"PK\x03\x04" + bytes(40), "metrics", "a zip file"),
        (b"\x89PNG\r\n\x1a\n" + bytes(40), "results", "a PNG image"),
        (b"epoch,steps,seconds\n1,2,3\n", "metrics", "another kind of file"),
        (b'{"AP": 0.5}\n', "PNG", "a JSON file"),
        (b'{"user": "important notes"}\n', "results", "a JSON file"),
        (b'{"user": "important notes"}\n', "metrics", "a JSON file"),
        (b'["a", "list"]\n', "results", "a JSON file"),
        (b'{\n  "all": {"AP": 0.5}}\n', "results", "a metrics file"),
        (b'[{"image_id": 1, "score": 0.5}]\n', "metrics", "a COCO results list"),
        (b'{"image_size": 256, "shapes": []}\n', "metrics", "a JSON file"),
    ],
)
def test_another_kind_of_file_is_kept(tmp_path: Path, head: bytes, kind: str, named: str) -> None:
    target = tmp_path / "out"
    target.write_bytes(head)
    wanted = {"results": "a COCO results list", "metrics": "a metrics file", "PNG": "a PNG file"}[kind]
    with pytest.raises(ConfigError, match=f"is {named}.*, not {wanted}:"):
        write_atomically(target, b"new", force=True, kind=kind)
    assert target.read_bytes() == head


@pytest.mark.parametrize(
    ("old", "kind"),
    [
        (b"", "results"),
        (b'  [{"image_id": 1}]\n', "results"),
        (b"[]\n", "results"),
        (b'[{"category_id": 1, "segmentation": {"size": [4, 4], "counts": "16"}, "image_id": 2}]', "results"),
        (b'{\n  "all": {\n    "AP": 1}}', "metrics"),
        (b"{}\n", "metrics"),
        (b"\x89PNG\r\n\x1a\nrest", "PNG"),
    ],
)
def test_an_earlier_output_of_the_kind_or_an_empty_file_is_replaced(tmp_path: Path, old: bytes, kind: str) -> None:
    target = tmp_path / "out"
    target.write_bytes(old)
    write_atomically(target, b"new", force=True, kind=kind)
    assert target.read_bytes() == b"new"


def test_evaluate_and_preview_keep_a_dataset_at_their_output(tiny_dataset: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.h5"
    shutil.copyfile(tiny_dataset, victim)
    result = run_cli("evaluate", "--gt", tiny_dataset, "--oracle-layers", 2, "--json", victim, "--force")
    assert result.exit_code == 2, result.output
    assert "--json" in result.stderr and "is an HDF5 file" in result.stderr and "Traceback" not in result.stderr
    png = tmp_path / "victim.png"
    shutil.copyfile(tiny_dataset, png)
    result = run_cli("preview", tiny_dataset, "--out", png, "--force")
    assert result.exit_code == 2 and "is an HDF5 file" in result.stderr, result.output
    assert victim.read_bytes() == png.read_bytes() == tiny_dataset.read_bytes()
    earlier = tmp_path / "metrics.json"
    earlier.write_text("{}\n")
    assert run_cli("evaluate", "--gt", tiny_dataset, "--oracle-layers", 2, "--json", earlier, "--force").exit_code == 0
    assert '"AP"' in earlier.read_text()


def test_predict_keeps_a_dataset_at_its_output(tiny_dataset: Path, run_dir: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.h5"
    shutil.copyfile(tiny_dataset, victim)
    result = run_cli("predict", "--model", run_dir, "--data", tiny_dataset, "--out", victim, "--force", "-q")
    assert result.exit_code == 2, result.output
    assert "is an HDF5 file" in result.stderr and "Traceback" not in result.stderr
    assert victim.read_bytes() == tiny_dataset.read_bytes()


@pytest.mark.parametrize(
    ("name", "content", "named"),
    [
        ("notes.txt", b"precious\n", "another kind of file"),
        ("model.keras", b"PK\x03\x04" + bytes(40), "a zip file"),
        ("mine.json", b'{"mine": 1}\n', "a JSON file"),
        ("picture.png", b"\x89PNG\r\n\x1a\n" + bytes(40), "a PNG image"),
    ],
)
def test_render_force_keeps_a_file_that_is_not_a_dataset(tmp_path: Path, name: str, content: bytes, named: str) -> None:
    victim = tmp_path / name
    victim.write_bytes(content)
    result = run_cli("render", "--num", 2, "--out", victim, "--force", "-q")
    assert result.exit_code == 2, result.output
    assert f"is {named}" in result.stderr and "not an HDF5 file" in result.stderr and "Traceback" not in result.stderr
    assert victim.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_render_force_replaces_an_earlier_dataset_or_an_empty_file(tmp_path: Path) -> None:
    earlier, empty = tmp_path / "d.h5", tmp_path / "empty.h5"
    assert run_cli("render", "--num", 2, "--out", earlier, "-q").exit_code == 0
    empty.write_bytes(b"")
    for target in (earlier, empty):
        result = run_cli("render", "--num", 3, "--out", target, "--force", "-q")
        assert result.exit_code == 0, result.output
        with h5py.File(target, "r") as file:
            assert len(file["images"]) == 3


def test_render_force_keeps_an_hdf5_file_shapesgen_did_not_write(tmp_path: Path) -> None:
    """A user's own HDF5 data (or a Keras .h5 model) has the HDF5 signature too."""
    victim = tmp_path / "mine.h5"
    with h5py.File(victim, "w") as file:
        file.create_dataset("x", data=[1, 2, 3])
    before = victim.read_bytes()
    result = run_cli("render", "--num", 2, "--out", victim, "--force", "-q")
    assert result.exit_code == 2, result.output
    assert "is an HDF5 file that shapesgen did not write" in result.stderr and "Traceback" not in result.stderr
    assert victim.read_bytes() == before


def test_predict_and_evaluate_keep_a_users_json_and_each_others_output(
    tiny_dataset: Path, run_dir: Path, tmp_path: Path
) -> None:
    """``--force`` took any JSON file: notes, a scene config, evaluate's metrics under
    predict's --out and predictions under evaluate's --json were all replaced."""
    notes, results, metrics = tmp_path / "notes.json", tmp_path / "results.json", tmp_path / "metrics.json"
    notes.write_text('{"user": "important notes"}\n')
    predict = ("predict", "--model", run_dir, "--data", tiny_dataset, "-q")
    assert run_cli(*predict, "--out", results).exit_code == 0
    evaluate = ("evaluate", "--gt", tiny_dataset, "--dt", results)
    assert run_cli(*evaluate, "--json", metrics).exit_code == 0
    before = {path: path.read_bytes() for path in (notes, results, metrics)}
    for args, victim in [
        ((*predict, "--out", notes), notes),
        ((*predict, "--out", metrics), metrics),
        ((*evaluate, "--json", notes), notes),
        ((*evaluate, "--json", results), results),
    ]:
        result = run_cli(*args, "--force")
        assert result.exit_code == 2 and "force=True" not in result.stderr, result.output
        assert "only an earlier output of this command" in result.stderr and "Traceback" not in result.stderr
        assert victim.read_bytes() == before[victim]
    assert {path: path.read_bytes() for path in before} == before
    assert run_cli(*predict, "--out", results, "--force").exit_code == 0
    assert run_cli(*evaluate, "--json", metrics, "--force").exit_code == 0
