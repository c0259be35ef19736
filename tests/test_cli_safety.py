"""Nothing lost: --force never deletes an input or a folder that is not ours, two
processes never write one output, and every refusal comes before any work."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
from conftest import run_cli

from shapesgen import files
from shapesgen.files import exclusive_lock, partial_path
from shapesgen.validate import validate_file

SMALL = ("--instances", 1, "--layers", 2, "--image-size", 64, "--mask-size", 32, "--seed", 3)


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and folder (``None``) under ``folder``."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))
    }


def one_error_line(result: object, code: int = 2) -> str:
    """Assert a clean failure: ``code``, one stderr line, no traceback; return the line."""
    assert result.exit_code == code, result.output  # type: ignore[attr-defined]
    lines = [line for line in result.stderr.splitlines() if line.strip()]  # type: ignore[attr-defined]
    assert len(lines) == 1, result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in result.output and "internal error" not in lines[0]  # type: ignore[attr-defined]
    return lines[0]


@pytest.fixture()
def rendered(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    result = run_cli("render", "--out", data / "mine.h5", "--num", 3, "-q", *SMALL)
    assert result.exit_code == 0, result.output
    (data / "notes.txt").write_text("a user's file")
    return data / "mine.h5"


def test_export_into_the_folder_holding_its_input_is_refused(rendered: Path) -> None:
    before = tree(rendered.parent)
    for out in (rendered.parent, rendered.parent.parent, rendered):
        line = one_error_line(run_cli("export", "coco", rendered, "--out", out, "--force", "-q"))
        assert "--out" in line and ("contains the input" in line or "the dataset it exports" in line)
    assert tree(rendered.parent) == before


def test_force_only_replaces_a_previous_untouched_export(rendered: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8 precious")
    line = one_error_line(run_cli("export", "coco", rendered, "--out", foreign, "--force", "-q"))
    assert "not a shapesgen export" in line and (foreign / "holiday.jpg").exists()

    export = tmp_path / "export"
    assert run_cli("export", "coco", rendered, "--out", export, "-q").exit_code == 0
    assert run_cli("export", "coco", rendered, "--out", export, "--force", "-q").exit_code == 0  # ours: replaced
    (export / "my_labels.json").write_text("{}")  # a user adds a file: no longer ours to delete
    line = one_error_line(run_cli("export", "coco", rendered, "--out", export, "--force", "-q"))
    assert "files were added" in line and (export / "my_labels.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "export", "photos"]


def test_render_coco_problems_are_found_before_rendering(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    cases = [
        (["--out", out / "data.h5", "--coco", out, "--force"], "contains the input"),
        (["--out", out / "data.h5", "--coco", out / "data.h5"], "the dataset it exports"),
        (["--out", tmp_path / "d.h5", "--coco", out], "exists"),
        (["--out", tmp_path / "d.h5", "--coco", out, "--force"], "not a shapesgen export"),
        (["--out", tmp_path / "d.h5", "--coco", ""], "--coco"),
        (["--out", tmp_path / "d.h5", "--coco", tmp_path / "d.h5" / "sub"], "which is a file"),
    ]
    for args, needle in cases:
        line = one_error_line(run_cli("render", "--num", 2, "-q", *SMALL, *args))
        assert needle in line and "--coco" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and tree(out) == {"keep.txt": b"keep"}


def test_render_refuses_an_output_another_process_holds(tmp_path: Path) -> None:
    out = tmp_path / "x.h5"
    with exclusive_lock(out, "out"):
        for extra in ([], ["--force"], ["--resume"]):
            line = one_error_line(run_cli("render", "--out", out, "--num", 2, "-q", *SMALL, *extra), code=1)
            assert "another process" in line and "x.h5.lock" in line
        assert not out.exists() and not (tmp_path / "x.h5.partial").exists()
    assert run_cli("render", "--out", out, "--num", 2, "-q", *SMALL).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5"]  # the lock file is gone with its holder


@pytest.mark.parametrize("left", [b"", b"a user's notes\n"])
def test_a_lock_file_left_empty_by_a_killed_process_goes_with_the_next_holder(tmp_path: Path, left: bytes) -> None:
    """A process killed between creating its lock file and marking it leaves it empty (a Dask
    worker killed as its shard started did, in a clean-clone test run): the next holder
    takes it and removes it. A file with other content is not ours and stays."""
    out = tmp_path / "x.h5"
    (tmp_path / "x.h5.lock").write_bytes(left)
    with exclusive_lock(out, "out"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if not left else ["x.h5.lock"])


def test_a_second_render_with_force_cannot_take_over_a_running_one(tmp_path: Path) -> None:
    """The race of issue 8: B --force while A renders. A must finish and publish valid data."""
    out = tmp_path / "race.h5"
    args = ["render", "--out", str(out), "--num", "4000", "--seed", "1", "--instances", "2", "-q"]
    first = subprocess.Popen(
        [sys.executable, "-m", "shapesgen", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    partial = tmp_path / "race.h5.partial"
    deadline = time.monotonic() + 60
    while not partial.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert partial.exists(), "the first render never started writing"
    first.send_signal(signal.SIGSTOP)  # A holds its lock, mid-render, for as long as B runs
    try:
        second = subprocess.run(
            [sys.executable, "-m", "shapesgen", *args, "--force"], capture_output=True, text=True, timeout=120
        )
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 1 and "another process" in second.stderr and "Traceback" not in second.stderr
    assert not out.exists()  # nothing published while A runs
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert validate_file(out, regenerate=3) == 4000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["race.h5"]


def test_interrupted_render_keeps_its_partial_and_its_lock_is_free(tmp_path: Path) -> None:
    out = tmp_path / "cut.h5"
    args = ["render", "--out", str(out), "--num", "20000", "--seed", "2", "--instances", "2", "-q"]
    proc = subprocess.Popen([sys.executable, "-m", "shapesgen", *args], stderr=subprocess.PIPE, text=True)
    partial = tmp_path / "cut.h5.partial"
    deadline = time.monotonic() + 60
    while not partial.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not out.exists() and partial.exists()
    result = subprocess.run(
        [sys.executable, "-m", "shapesgen", *args[:4], "200", *args[5:], "--force"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr  # a killed holder's lock file holds no lock
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.h5"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--num", 10**12], "--num"),
        (["--num", 10**8, "--image-size", 4096, "--mask-size", 64], "--num"),
        (["--instances", 65535], "--instances"),
        (["--instances", 3000], "memory"),
        (["--image-size", 200000], "--image-size"),
        (["--layers", 10**6], "--layers"),
        (["--out", ""], "--out"),
        (["--out", "."], "--out"),
        (["--out", "/"], "--out"),
        (["--anchor-range", ""], "--anchor-range"),
        (["--rotation-range", "nan,1"], "--rotation-range"),
        (["--seed", -1], "--seed"),
        (["--compression", 12], "--compression"),
    ],
)
def test_impossible_renders_are_refused_up_front(
    tmp_path: Path, args: list[object], needle: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    base = ["render", "--out", tmp_path / "big.h5", "--num", 2, "-q", "--seed", 1]
    line = one_error_line(run_cli(*base, *args))
    assert needle in line, line
    assert list(tmp_path.iterdir()) == []


def test_config_files_are_checked_and_never_block(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    bad = {
        "shapes.json": {"shapes": "circle"},
        "size.json": {"shapes": [{"kind": "circle", "size": 0.2}]},
        "extra.json": {"shapes": [{"kind": "circle", "size": [0.2], "colour": "red"}]},
        "anchor.json": {"anchor_range": 5},
        "segments.json": {"circle_segments": 10**7},
    }
    for name, data in bad.items():
        (tmp_path / name).write_text(json.dumps(data))
    (tmp_path / "digits.json").write_text('{"seed": ' + "9" * 4400 + "}")
    (tmp_path / "deep.json").write_text("[" * 100000 + "]" * 100000)
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    names = [*bad, "digits.json", "deep.json", "binary.json", "fifo.json"]
    for name in names:
        line = one_error_line(run_cli("render", "--out", tmp_path / "o.h5", "--config", tmp_path / name, "-q"))
        assert "--config" in line or "shapes" in line or "anchor_range" in line or "circle_segments" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


@pytest.mark.parametrize("config", [SMALL, ("--seed", 1)])  # the paper preset's memory check sees 1 worker
def test_workers_are_capped_with_a_note(tmp_path: Path, config: tuple[object, ...]) -> None:
    result = run_cli("render", "--out", tmp_path / "w.h5", "--num", 3, "--workers", 100000, "-q", *config)
    assert result.exit_code == 0, result.output
    assert "note:" in result.stderr and "--workers 100000 lowered to 1" in result.stderr
    with h5py.File(tmp_path / "w.h5") as file:
        assert int(file.attrs["scenes_written"]) == 3


def test_outputs_never_overwrite_inputs_even_with_force(rendered: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"seed": 1, "instances_per_class": 1, "image_size": 64, "mask_size": 32}))
    disguised = tmp_path / "scenes.png"  # an HDF5 file with a PNG name
    disguised.write_bytes(rendered.read_bytes())
    before = {config: config.read_bytes(), disguised: disguised.read_bytes()}
    cases = [
        (["render", "--config", config, "--out", config, "--force", "--num", 2, "-q"], "--config"),
        (["preview", disguised, "--out", disguised], "PATH"),
        (["evaluate", "--gt", rendered, "--oracle-layers", 1, "--json", rendered], "--json"),
    ]
    for args, needle in cases:
        line = one_error_line(run_cli(*args))
        assert "overwrite" in line and needle in line, line
    assert {path: path.read_bytes() for path in before} == before


def test_a_full_disk_during_render_or_export_leaves_nothing(
    tmp_path: Path, rendered: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import shapesgen.coco
    import shapesgen.storage.writer

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    before = tree(tmp_path)
    monkeypatch.setattr(shapesgen.storage.writer.DatasetWriter, "append", full)
    line = one_error_line(run_cli("render", "--out", tmp_path / "new" / "d.h5", "--num", 3, "-q", *SMALL), code=1)
    assert "No space left" in line and "nothing was kept" in line
    monkeypatch.setattr(shapesgen.coco, "_write_export", full)
    line = one_error_line(run_cli("export", "coco", rendered, "--out", tmp_path / "exp", "-q"), code=1)
    assert "No space left" in line and "--out" in line
    assert tree(tmp_path) == before and not (tmp_path / "new").exists()


@pytest.mark.parametrize("sharded", [False, True])
def test_layers_beyond_the_instances_render_with_a_note(tmp_path: Path, sharded: bool) -> None:
    shards = ("--shard-size", 2) if sharded else ()
    args = ("--instances", 1, "--layers", 5, "--image-size", 64, "--mask-size", 32, "--seed", 3, *shards)
    result = run_cli("render", "--out", tmp_path / ("set" if sharded else "d.h5"), "--num", 3, "-q", *args)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "note: --layers 5 is more than the 3 instances a scene holds: layers 4 to 5 are always empty (and stored all "
        "the same)"
    ]


@pytest.mark.parametrize(
    ("number", "kind"),
    [
        (errno.EACCES, "DatasetError"),
        (errno.EROFS, "DatasetError"),
        (errno.ENOTDIR, "DatasetError"),
        (errno.ENAMETOOLONG, "DatasetError"),
        (errno.ENOSPC, "ResourceError"),
        (errno.EDQUOT, "ResourceError"),
        (errno.EIO, "ResourceError"),
    ],
)
def test_a_refused_write_is_bad_input_only_when_the_place_is_the_users_choice(number: int, kind: str) -> None:
    error = files.write_refusal("out='x': cannot create the folder", OSError(number, os.strerror(number)), "out")
    assert type(error).__name__ == kind
    assert str(error) == f"out='x': cannot create the folder ({os.strerror(number)})"


@pytest.mark.parametrize("sharded", [False, True])
def test_creating_the_output_folder_exits_1_on_a_full_disk_and_2_under_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sharded: bool
) -> None:
    import shapesgen.build
    import shapesgen.shards

    shards = ("--shard-size", 2) if sharded else ()
    name = "set" if sharded else "d.h5"
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    line = one_error_line(run_cli("render", "--out", blocker / "sub" / name, "--num", 3, "-q", *SMALL, *shards))
    assert "--out" in line and "is a file, not a folder" in line, line

    def full(folder: Path) -> list[Path]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shapesgen.build, "make_parents", full)
    monkeypatch.setattr(shapesgen.shards, "make_parents", full)
    line = one_error_line(run_cli("render", "--out", tmp_path / "new" / name, "--num", 3, "-q", *SMALL, *shards), 1)
    assert "--out" in line and "No space left" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"] and blocker.read_text() == "mine"


def test_render_coco_never_replaces_a_folder_holding_its_config(rendered: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    assert run_cli("export", "coco", rendered, "--out", export, "-q").exit_code == 0
    before = tree(export)
    config = export / "config.json"  # an export's own config, the documented way to rebuild it
    line = one_error_line(
        run_cli("render", "--config", config, "--out", tmp_path / "b.h5", "--coco", export, "--force", "--num", 2)
    )
    assert "--coco" in line and "overwrite the input" in line
    assert tree(export) == before and not (tmp_path / "b.h5").exists()


def test_a_bad_value_inside_a_config_file_names_the_file_not_a_flag(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"layers": 0}))
    line = one_error_line(run_cli("render", "--config", config, "--out", tmp_path / "x.h5", "-q"))
    assert line.startswith("error: --config ") and "layers=0 is invalid" in line and "--layers" not in line


def test_force_never_replaces_a_look_alike_or_hand_edited_export(rendered: Path, tmp_path: Path) -> None:
    import hashlib

    mine = tmp_path / "mycoco"  # a user's own COCO folder with a valid-looking manifest
    (mine / "images").mkdir(parents=True)
    files = {"annotations.json": b"{}", "images/cat.png": b"png", "thesis.tex": b"tex"}
    for name, data in files.items():
        (mine / name).write_bytes(data)
    (mine / "SHA256SUMS").write_text("".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in files.items()))
    edited = tmp_path / "edited"
    assert run_cli("export", "coco", rendered, "--out", edited, "-q").exit_code == 0
    (edited / "annotations.json").write_text("HAND-CORRECTED")
    unfinished = tmp_path / "h.partial"  # a user folder with the staging name of --out h
    (unfinished / "images").mkdir(parents=True)
    (unfinished / "README.md").write_text("notes")
    before = tree(tmp_path)
    for out in (mine, edited, tmp_path / "h"):
        line = one_error_line(run_cli("export", "coco", rendered, "--out", out, "--force", "-q"))
        assert "--out" in line and ("not a shapesgen export" in line or "unfinished" in line), line
    assert tree(tmp_path) == before


def test_render_never_resumes_or_deletes_a_partial_file_it_did_not_begin(rendered: Path, tmp_path: Path) -> None:
    """``<out>.partial`` that is the user's (text, another program's HDF5, a folder, a link) is
    neither an interrupted render to resume nor one that --force may delete."""
    foreign_h5 = tmp_path / "theirs.h5.partial"
    with h5py.File(foreign_h5, "w") as file:
        file.attrs["format"] = "someone-else"
    (tmp_path / "text.h5.partial").write_text("mine")
    (tmp_path / "dir.h5.partial").mkdir()
    (tmp_path / "link.h5.partial").symlink_to(rendered)
    before = tree(tmp_path)
    for name, says in [
        ("theirs", "an HDF5 file that shapesgen did not write"),
        ("text", "is not an HDF5 file"),
        ("dir", "is not a plain file"),
        ("link", "is not a plain file"),
    ]:
        for flag in ([], ["--force"], ["--resume"]):
            line = one_error_line(run_cli("render", "--out", tmp_path / f"{name}.h5", "--num", 2, "-q", *SMALL, *flag))
            assert says in line and "not an interrupted render" in line, (name, flag, line)
    assert tree(tmp_path) == before
    (tmp_path / "empty.h5.partial").write_bytes(b"")  # a render killed as it created its file: ours
    line = one_error_line(run_cli("render", "--out", tmp_path / "empty.h5", "--num", 2, "-q", *SMALL))
    assert "an interrupted render exists" in line, line
    assert run_cli("render", "--out", tmp_path / "empty.h5", "--num", 2, "-q", *SMALL, "--force").exit_code == 0


def test_single_file_outputs_replace_only_regular_files_and_only_with_force(rendered: Path, tmp_path: Path) -> None:
    fifo, link, notes = tmp_path / "fifo.png", tmp_path / "link.json", tmp_path / "notes.json"
    os.mkfifo(fifo)
    link.symlink_to(notes)
    notes.write_text('{"all": {"AP": 0.5}}')  # evaluate's earlier metrics: --force may replace them
    before = tree(tmp_path)
    cases = [
        (["preview", rendered, "--out", fifo, "--force"], 2, "not a regular file"),
        (["evaluate", "--gt", rendered, "--oracle-layers", 1, "--json", link, "--force"], 2, "not a regular file"),
        (["evaluate", "--gt", rendered, "--oracle-layers", 1, "--json", notes], 2, "pass --force"),
    ]
    for args, code, needle in cases:
        result = run_cli(*args)
        line = [x for x in result.stderr.splitlines() if x.strip()]
        assert result.exit_code == code and len(line) == 1 and needle in line[0], result.stderr
    assert tree(tmp_path) == before and fifo.is_fifo() and link.is_symlink()
    assert run_cli("evaluate", "--gt", rendered, "--oracle-layers", 1, "--json", notes, "--force").exit_code == 0
    assert json.loads(notes.read_text())["predictions"] == "oracle K=1"


def _start_render(out: Path, *extra: str) -> subprocess.Popen[str]:
    args = ["render", "--out", str(out), "--num", "200000", "--seed", "4", "--instances", "1", "-q", *extra]
    proc = subprocess.Popen([sys.executable, "-m", "shapesgen", *args], stderr=subprocess.PIPE, text=True)
    partial, deadline = partial_path(out), time.monotonic() + 60
    while not partial.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)
    return proc


def test_sigterm_stops_a_render_like_ctrl_c(tmp_path: Path) -> None:
    out = tmp_path / "t.h5"
    proc = _start_render(out)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 143 and len(lines) == 1 and "is kept: rerun with --resume" in lines[0], stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.h5.partial"]  # no lock file, no output


def test_workers_die_with_a_killed_parent_and_free_the_output(tmp_path: Path) -> None:
    out = tmp_path / "k.h5"
    proc = _start_render(out, "--workers", "2", "--image-size", "64", "--mask-size", "32")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while True:  # the kernel kills the workers at once; their inherited lock goes with them
        result = run_cli("render", "--out", out, "--num", 2, "--seed", 4, "-q", "--force", *SMALL[:-2])
        if result.exit_code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert result.exit_code == 0, result.stderr


def test_link_loops_long_names_and_unwritable_coco_folders_are_refused_up_front(rendered: Path, tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    (tmp_path / "loop2").symlink_to(loop)
    loop.symlink_to(tmp_path / "loop2")
    long_name = "a" * 250 + ".h5"  # valid alone, too long once .partial.lock is added
    cases = [
        (["render", "--num", 2, *SMALL, "--out", loop], 2, "link loop"),
        (["export", "coco", rendered, "--out", loop], 2, "link loop"),
        (["evaluate", "--gt", rendered, "--oracle-layers", 1, "--json", loop], 2, "link loop"),
        (["render", "--num", 2, *SMALL, "--out", tmp_path / "new" / long_name], 2, "longer than"),
        (["render", "--num", 2, *SMALL, "--out", tmp_path / "x.h5", "--coco", "/proc/none/coco"], 1, "--coco"),
        (["render", "--num", 2, *SMALL, "--out", tmp_path / "x.h5", "--coco", "/proc/coco"], 1, "--coco"),
        (["render", "--num", 2, *SMALL, "--out", tmp_path / "x.h5", "--size", "circle=1e-300"], 2, "'circle=1e-300'"),
    ]
    before = tree(tmp_path)
    for args, code, needle in cases:
        line = one_error_line(run_cli(*args), code=code)
        assert needle in line, line
    assert tree(tmp_path) == before


def test_train_and_predict_without_tensorflow_say_how_to_install_it(
    rendered: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shapesgen_cli.model

    def missing(name: str) -> None:
        raise ModuleNotFoundError("No module named 'keras'", name="keras")

    monkeypatch.setattr(shapesgen_cli.model.importlib, "import_module", missing)
    before = tree(tmp_path)
    for args in (
        ["train", "--train", rendered, "--out", tmp_path / "run", "--preset", "tiny"],
        ["predict", "--model", tmp_path / "run", "--data", rendered, "--out", tmp_path / "r.json"],
    ):
        line = one_error_line(run_cli(*args), code=1)
        assert "pip install 'shapesgen[train-cpu]'" in line
    assert tree(tmp_path) == before


def test_a_broken_install_is_not_reported_as_missing_tensorflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """An ImportError of the package's own modules (a half-upgraded install) is an unexpected
    error, not advice to install TensorFlow."""
    import shapesgen_cli.model

    def broken(name: str) -> None:
        raise ImportError("cannot import name 'decode_sized' from 'shapesgen.coco'", name="shapesgen.coco")

    monkeypatch.setattr(shapesgen_cli.model.importlib, "import_module", broken)
    with pytest.raises(ImportError, match="decode_sized"):
        shapesgen_cli.model._model_module("train")


def test_hand_edited_values_are_one_line_pointing_at_validate(rendered: Path, tmp_path: Path) -> None:
    """Readers check structure at open, not every stored value; values a command would
    index with are checked where it uses them (evaluate's checksum check finds the edit first)."""
    import shutil

    layer_id, vertex = tmp_path / "layer_id.h5", tmp_path / "vertex.h5"
    shutil.copy(rendered, layer_id)
    shutil.copy(rendered, vertex)
    with h5py.File(layer_id, "r+") as f:
        f["layers"][0, 0, 0, 0] = 999
    with h5py.File(vertex, "r+") as f:
        f["vertices"][0, 0] = float("nan")
    before = tree(tmp_path)
    cases = [
        (["evaluate", "--gt", layer_id, "--oracle-layers", 1], "dataset layers does not match the checksum"),
        (["export", "coco", layer_id, "--out", tmp_path / "e1", "-q"], "instance id 999"),
        (["export", "coco", vertex, "--out", tmp_path / "e2", "-q"], "not all finite"),
        (
            ["train", "--train", layer_id, "--out", tmp_path / "run", "--preset", "tiny", "--batch-size", 2],
            "out of range",
        ),
    ]
    for args, needle in cases:
        line = one_error_line(run_cli(*args))
        assert needle in line and "shapesgen validate" in line, line
    assert tree(tmp_path) == before


def test_a_link_at_the_lock_path_is_refused_not_followed(rendered: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.png"
    lock = tmp_path / "p.png.lock"
    lock.symlink_to(tmp_path / "missing" / "target")
    line = one_error_line(run_cli("preview", rendered, "--out", out), code=1)
    assert "symbolic link" in line and not out.exists() and lock.is_symlink()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["render", "--bogus"], "error: No such option: --bogus"),
        (["render", "--instances", "many"], "error: Invalid value for '--instances'"),
        (["predict", "--model", "m", "--data", "d.h5", "--out", "r.json", "--score", "best"], "'best' is not one of"),
        (["bogus"], "error: No such command 'bogus'"),
        (["info"], "error: Missing argument 'path'"),
    ],
)
def test_a_malformed_command_line_is_one_line_and_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    """The installed command, not the test runner: click would print a usage block and a
    boxed message; shapesgen prints one line that says where the options are listed."""
    result = subprocess.run([sys.executable, "-m", "shapesgen", *args], capture_output=True, text=True, cwd=tmp_path)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert says in lines[0] and "--help" in lines[0] and result.stdout == "" and not any(tmp_path.iterdir())


def test_ctrl_c_inside_a_string_exec_still_exits_130_under_python_m(tmp_path: Path) -> None:
    """A Ctrl-C that lands while a dataclass or namedtuple builds its methods (a string ``exec``)
    sets CPython's unhandled-KeyboardInterrupt flag; under ``python -m`` the interpreter then
    killed itself with SIGINT after the CLI's one line (status -2, not 130)."""
    (tmp_path / "interrupted_cli.py").write_text(
        "import sys\n"
        "import typer\n"
        "from shapesgen_cli import app as cli_app\n"
        "from shapesgen_cli.entry import main\n"
        "def stop(*args, **kwargs):\n"
        "    exec('raise KeyboardInterrupt', {})\n"
        "typer.main.get_command = lambda app: type('Command', (), {'main': stop})()\n"
        "main()\n"
    )
    run = run_module(tmp_path, "interrupted_cli")
    assert (run.returncode, run.stderr) == (130, "error: interrupted\n")


def run_module(folder: Path, name: str) -> subprocess.CompletedProcess[str]:
    """``python -m name`` for a module written in ``folder``, run there."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", name], capture_output=True, text=True, env=env, cwd=folder, timeout=120, check=False
    )


def test_a_write_hdf5_could_not_end_ends_the_process_without_its_exit_handlers(tmp_path: Path) -> None:
    """After a write HDF5 began and failed (a disk another program filled), HDF5's own exit
    handler crashed the process (status 139) after the one error line: the CLI ends at once."""
    (tmp_path / "full_disk_cli.py").write_text(
        "import atexit, sys\n"
        "from shapesgen.storage.writer import DatasetWriter\n"
        "from shapesgen_cli.entry import main\n"
        "def broken(self, batch):\n"
        "    raise RuntimeError(\"Unable to flush dataset (errno = 28, error message = 'No space left on device')\")\n"
        "DatasetWriter.append = broken\n"
        "atexit.register(lambda: print('exit handlers ran', file=sys.stderr))\n"
        "sys.argv = ['shapesgen', 'render', '--out', 'd.h5', '--num', '3', '-q', '--instances', '1']\n"
        "main()\n"
    )
    run = run_module(tmp_path, "full_disk_cli")
    assert run.returncode == 1, run.stderr
    assert run.stderr == "error: writing d.h5.partial failed (No space left on device); nothing was kept\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == ["full_disk_cli.py"]


@pytest.mark.parametrize(
    "args",
    [
        ("render", "--num", 2, "--out", "{under}/d.h5", "-q"),
        ("render", "--num", 2, "--shard-size", 1, "--out", "{under}/shards", "-q"),
        ("export", "coco", "{data}", "--out", "{under}/coco", "-q"),
        ("evaluate", "--gt", "{data}", "--oracle-layers", 2, "--json", "{under}/m.json"),
    ],
)
def test_an_output_under_a_file_is_a_usage_error_naming_it(
    tmp_path: Path, tiny_dataset: Path, args: tuple[object, ...]
) -> None:
    """It was exit 1, 'cannot create <out>.lock (Not a directory)'."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    given = [str(a).format(under=notes, data=tiny_dataset) if isinstance(a, str) else a for a in args]
    result = run_cli(*given)
    assert result.exit_code == 2, result.output
    assert f"{notes} is a file, not a folder" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert notes.read_text() == "mine\n" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    "args",
    [
        ("render", "--num", 2, "--shard-size", 1, "--out", "{out}/shards", "-q"),
        ("export", "coco", "{data}", "--out", "{out}/coco", "-q"),
        ("preview", "{data}", "--out", "{out}/p.png"),
        ("evaluate", "--gt", "{data}", "--oracle-layers", 2, "--json", "{out}/m.json"),
    ],
)
@pytest.mark.parametrize(("number", "code"), [(errno.EPERM, 2), (errno.EACCES, 2), (errno.EROFS, 2), (errno.EIO, 1)])
def test_a_folder_that_refuses_writes_is_a_usage_error_and_a_failing_disk_is_not(
    tmp_path: Path,
    tiny_dataset: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[object, ...],
    number: int,
    code: int,
) -> None:
    """An immutable folder gave exit 2 for `render --out FILE` (its own check) but exit 1
    for every command that found it on taking its lock."""
    real_open = os.open

    def refusing_open(path: object, flags: int, *rest: int, **kw: object) -> int:
        if str(path).endswith(".lock"):
            raise OSError(number, os.strerror(number), str(path))
        return real_open(path, flags, *rest, **kw)

    monkeypatch.setattr(files.os, "open", refusing_open)
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli(*[str(a).format(out=out, data=tiny_dataset) if isinstance(a, str) else a for a in args])
    assert result.exit_code == code, result.output
    assert f"({os.strerror(number)})" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not any(out.iterdir())
