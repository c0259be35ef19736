"""predict's inference flags (``--small-clusters``, ``--hidden-clusters``, ``--merge-radius``,
``--max-background``, ``--convex-hull``) end to end: they reach ``predict_run`` and change what
the shipped model predicts; bad values and combinations end in one line, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

import amodal_model.predict as predict_module
from amodal_model import pretrained
from shapesgen.build import render_dataset
from shapesgen.datasets import dataset_spec

MODEL = "paper6-2layers"
FLAGS = {
    "--small-clusters": "merge",
    "--hidden-clusters": "drop",
    "--merge-radius": "5",
    "--max-background": "0.6",
    "--min-pixels": "40",
    "--cluster-scope": "all",
}
KWARGS = {
    "small_clusters": "merge",
    "hidden_clusters": "drop",
    "merge_radius": 5.0,
    "max_background": 0.6,
    "cluster_scope": "all",
}

pytestmark = pytest.mark.skipif(MODEL not in pretrained.shipped_models(), reason=f"{MODEL} is not shipped")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two scenes of the data the shipped model was trained on."""
    config = dataset_spec("paper-6").config.replace(seed=11)
    return render_dataset(config, tmp_path_factory.mktemp("data") / "two.h5", num_scenes=2)


def predict(scenes: Path, out: Path, *flags: str) -> list[dict[str, Any]]:
    result = run_cli("predict", "--model", MODEL, "--data", scenes, "--out", out, "--workers", "1", "-q", *flags)
    assert result.exit_code == 0, result.stderr
    records: list[dict[str, Any]] = json.loads(out.read_text())
    return records


def test_the_flags_reach_predict_run_and_change_the_predictions(
    scenes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    original = predict_module.predict_run

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(predict_module, "predict_run", spy)
    default = predict(scenes, tmp_path / "default.json")
    assert calls[-1]["convex_hull"] is None and calls[-1]["max_background"] is None
    tuned = predict(scenes, tmp_path / "tuned.json", *(item for pair in FLAGS.items() for item in pair))
    assert {key: calls[-1][key] for key in KWARGS} == KWARGS and calls[-1]["min_pixels"] == 40
    assert default and tuned and default != tuned
    hull = predict(scenes, tmp_path / "hull.json", "--convex-hull")
    assert calls[-1]["convex_hull"] is True
    assert [r["image_id"] for r in hull] == [r["image_id"] for r in default]  # the same instances, other masks
    assert [r["segmentation"] for r in hull] != [r["segmentation"] for r in default]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--merge-radius", "0"], "--merge-radius 0.0"),
        (["--merge-radius", "-1"], "--merge-radius -1.0"),
        (["--merge-radius", "nan"], "--merge-radius nan"),
        (["--merge-radius", "1e9"], "--merge-radius 1000000000.0"),
        (["--max-background", "0"], "--max-background 0.0"),
        (["--max-background", "1.5"], "--max-background 1.5"),
        (["--max-background", "nan"], "--max-background nan"),
        (["--small-clusters", "merge", "--merge-radius", "inf"], "--merge-radius inf"),
        (["--hidden-clusters", "merge", "--max-background", "-0.1"], "--max-background -0.1"),
    ],
)
def test_bad_values_end_in_one_line_naming_the_flag(
    scenes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], named: str
) -> None:
    monkeypatch.setattr(predict_module, "load_run", lambda *args: pytest.fail("loaded before checking the flags"))
    out = tmp_path / "r.json"
    result = run_cli("predict", "--model", MODEL, "--data", scenes, "--out", out, "-q", *flags)
    lines = result.stderr.splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {named}"), result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--small-clusters", "keep"], "--small-clusters"),
        (["--hidden-clusters", "merged"], "--hidden-clusters"),
        (["--merge-radius", "near"], "--merge-radius"),
        (["--convex-hull=yes"], "--convex-hull"),
    ],
)
def test_values_of_another_kind_are_usage_errors(scenes: Path, tmp_path: Path, flags: list[str], named: str) -> None:
    result = run_cli("predict", "--model", MODEL, "--data", scenes, "--out", tmp_path / "r.json", "-q", *flags)
    assert result.exit_code == 2 and named in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "r.json").exists()


def test_a_merge_radius_without_a_merge_is_refused(scenes: Path, tmp_path: Path) -> None:
    """The shipped model merges both cluster kinds; with neither merged the radius would be ignored."""
    out = tmp_path / "r.json"
    flags = ["--small-clusters", "drop", "--hidden-clusters", "keep", "--merge-radius", "5"]
    result = run_cli("predict", "--model", MODEL, "--data", scenes, "--out", out, "-q", *flags)
    lines = result.stderr.splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: --merge-radius 5.0 has no effect") and "'merge'" in lines[0], lines[0]
    assert not out.exists()
    assert predict(scenes, out, "--small-clusters", "drop", "--merge-radius", "5")  # hidden clusters still merge


def test_settings_that_drop_every_instance_are_noted(run_dir: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    """``--min-pixels 99999999`` wrote ``[]`` with exit 0 and not a word."""
    out = tmp_path / "none.json"
    result = run_cli("predict", "--model", run_dir, "--data", tiny_dataset, "--out", out, "--min-pixels", 1024, "-q")
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) == []
    assert "note: no instance was predicted in any image (inference settings: " in result.stderr
    assert "1024): the results file is an empty list" in result.stderr
