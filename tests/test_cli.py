"""The CLI: thin over the library, clean errors with exit code 2, end-to-end runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

import shapesgen.build
from shapesgen import SceneConfig, __version__
from shapesgen.storage.layout import FORMAT_VERSION
from shapesgen_cli.app import app

runner = CliRunner()


def invoke(*args: str) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def render_small(out: Path, *extra: object, layers: int, num: int, seed: int) -> Any:
    """``shapesgen render`` of a small 64 px dataset, 2 instances per class."""
    return invoke(
        "render",
        "--instances",
        2,
        "--layers",
        layers,
        "--num",
        num,
        "--seed",
        seed,
        "--image-size",
        64,
        "--mask-size",
        32,
        "--out",
        out,
        *extra,
    )


def test_render_passes_exactly_the_built_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    received: dict[str, Any] = {}

    def fake(config: SceneConfig, out: Path, **kwargs: Any) -> Path:
        received.update(config=config, out=out, **kwargs)
        return Path(out)

    monkeypatch.setattr(shapesgen.build, "render_dataset", fake)
    result = invoke(
        "render",
        "--instances",
        12,
        "--layers",
        3,
        "--num",
        1000,
        "--seed",
        7,
        "--out",
        tmp_path / "s.h5",
        "--workers",
        2,
        "--size",
        "rectangle=0.1x0.5",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    expected = SceneConfig(instances_per_class=12, layers=3, seed=7).replace(
        shapes=SceneConfig().shapes[:2] + (SceneConfig().shapes[2].__class__(kind="rectangle", size=(0.1, 0.5)),)
    )
    assert received["config"] == expected
    assert received["num_scenes"] == 1000 and received["workers"] == 2
    assert received["resume"] is False and received["force"] is False


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--instances", "0"], "--instances 0"),
        (["--layers", "0"], "--layers 0"),
        (["--mask-size", "60"], "--mask-size 60"),
        (["--classes", "circle,blob"], "--classes ['circle', 'blob'] is invalid: class 'blob' is not one of"),
        (["--classes", "circle,,circle"], "class '' is not one of"),
        (["--size", "rectangle=2x1"], "rectangle"),
        (["--size", "rectangle=0.1x0.8x0.3"], "a rectangle takes width and height"),
        (["--size", "circle=nan"], "--size 'circle=nan' is invalid: each number must be in [1e-06, 1]"),
        (["--num", "0"], "--num 0"),
        (["--workers", "0"], "--workers 0"),
        (["--anchor-range", "0.5"], "--anchor-range '0.5'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    result = invoke("render", "--out", tmp_path / "x.h5", "--num", "2", *args)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "x.h5.partial").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--preset", "nope"], "'nope'"), (["--num", "ten"], "--num"), (["--bogus"], "--bogus")],
)
def test_typer_usage_errors_name_the_option(tmp_path: Path, args: list[str], needle: str) -> None:
    result = invoke("render", "--out", tmp_path / "x.h5", *args)
    assert result.exit_code == 2 and needle in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_render_info_validate_preview_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "data" / "s.h5"
    result = render_small(out, "--quiet", layers=3, num=6, seed=3)
    assert result.exit_code == 0, result.output
    again = invoke("render", "--num", 6, "--out", out, "--quiet")
    assert again.exit_code == 2 and "--force" in again.output

    info = invoke("info", out, "--json")
    assert info.exit_code == 0, info.output
    summary = json.loads(info.output)
    assert summary["scenes"] == 6 and summary["instances"] == 36 and summary["seed"] == 3
    assert sum(summary["occlusion_bands"].values()) == summary["visible_instances"]
    assert sum(summary["stack_depth_pixels"].values()) == 6 * 32 * 32
    assert "stack depth" in invoke("info", out).output

    checked = invoke("validate", out, "--deep", "--quiet")
    assert checked.exit_code == 0 and "all invariants hold" in checked.output

    png = tmp_path / "p.png"
    shown = invoke("preview", out, "--out", png, "--count", 2)
    assert shown.exit_code == 0, shown.output
    with Image.open(png) as image:
        assert image.width > 5 * 64 and image.height > 2 * 64  # image + 3 layers + amodal columns


def test_bad_files_are_clean_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # preview's default --out is ./preview.png: never the checkout's own
    (tmp_path / "bad.h5").write_text("garbage")
    for command in ("info", "validate", "preview"):
        result = invoke(command, tmp_path / "bad.h5")
        assert result.exit_code == 2 and "not a readable HDF5 file" in result.output
        assert "Traceback" not in result.output


def test_validation_failure_exits_1(tiny_dataset: Path, tmp_path: Path) -> None:
    import shutil

    import h5py

    bad = tmp_path / "bad.h5"
    shutil.copy(tiny_dataset, bad)
    with h5py.File(bad, "r+") as f:
        f["images"][0] = 0
    result = invoke("validate", bad, "--quiet")
    assert result.exit_code == 1 and "images: SHA-256" in result.output


def test_export_and_evaluate_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "p.h5"
    result = render_small(data, "--coco", tmp_path / "share", "--quiet", layers=2, num=5, seed=1)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "share" / "annotations.json").exists() and (tmp_path / "share" / "SHA256SUMS").exists()
    cocoa = invoke("export", "coco", data, "--out", tmp_path / "cocoa", "--style", "cocoa", "--quiet")
    assert cocoa.exit_code == 0, cocoa.output
    bad = invoke("export", "coco", data, "--out", tmp_path / "x", "--style", "kitti")
    assert bad.exit_code == 2 and "'kitti'" in bad.output and "Traceback" not in bad.output

    metrics_path = tmp_path / "m.json"
    oracle = invoke("evaluate", "--gt", data, "--oracle-layers", 2, "--json", metrics_path, "--per-class")
    assert oracle.exit_code == 0, oracle.output
    assert "AR heavy" in oracle.output and "class-aware" in oracle.output
    metrics = json.loads(metrics_path.read_text())
    assert set(metrics["bands"]) == {"none", "partial", "heavy"} and 0 < metrics["all"]["AP"] <= 1

    predictions = tmp_path / "dt.json"
    predictions.write_text(
        json.dumps([{"image_id": 1, "segmentation": {"size": [32, 32], "counts": "PP1"}, "score": 0.5}])
    )
    scored = invoke("evaluate", "--gt", tmp_path / "share" / "annotations.json", "--dt", predictions)
    assert scored.exit_code == 0, scored.output
    assert "resized" in scored.output  # the export is at image resolution (64 px)
    neither = invoke("evaluate", "--gt", data)
    assert neither.exit_code == 2 and "exactly one of --dt" in neither.output


def test_train_builds_the_config_from_preset_and_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import amodal_model.train
    from amodal_model.config import TRAIN_PRESETS

    received: dict[str, Any] = {}

    def fake(source: str, out: Path, config: Any, **kwargs: Any) -> Path:
        received.update(source=source, out=out, config=config, **kwargs)
        return Path(out)

    monkeypatch.setattr(amodal_model.train, "train", fake)
    result = invoke(
        "train",
        "--train",
        "render:paper,instances=6",
        "--out",
        tmp_path / "r",
        "--preset",
        "cpu",
        "--epochs",
        7,
        "--hinge",
        "linear",
        "--distance-scope",
        "all",
        "--reg-weight",
        1.0,
        "--d-dist",
        2.0,
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert received["config"] == TRAIN_PRESETS["cpu"].replace(
        epochs=7, hinge="linear", distance_scope="all", reg_weight=1.0, d_dist=2.0
    )
    assert received["source"] == "render:paper,instances=6" and received["resume"] is False
    bad = invoke("train", "--train", "x.h5", "--out", tmp_path / "r", "--hinge", "cubic")
    assert bad.exit_code == 2 and "'cubic'" in bad.output and "Traceback" not in bad.output
    monkeypatch.undo()
    missing = invoke("train", "--train", tmp_path / "none.h5", "--out", tmp_path / "r2")
    assert missing.exit_code == 2 and "no such file" in missing.output
    weights = invoke("train", "--train", "x.h5", "--out", tmp_path / "r", "--backbone-weights", tmp_path / "w.h5")
    assert weights.exit_code == 2 and "no such file" in weights.output


def test_render_starts_from_a_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    received: dict[str, Any] = {}
    monkeypatch.setattr(
        shapesgen.build, "render_dataset", lambda config, out, **kw: received.update(config=config) or out
    )
    config = SceneConfig(image_size=128, mask_size=32, instances_per_class=4, layers=3, seed=9)
    (tmp_path / "c.json").write_text(config.to_json())
    result = invoke("render", "--config", tmp_path / "c.json", "--layers", 4, "--out", tmp_path / "x.h5", "-q")
    assert result.exit_code == 0, result.output
    assert received["config"] == config.replace(layers=4)
    (tmp_path / "bad.json").write_text('{"image_size": 64, "colour": 1}')
    bad = invoke("render", "--config", tmp_path / "bad.json", "--out", tmp_path / "y.h5")
    assert bad.exit_code == 2 and "unknown config field(s) ['colour']" in bad.output


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and f"shapesgen {__version__} (HDF5 format {FORMAT_VERSION})" in result.output


def test_resume_and_force_together_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "x.h5"
    result = invoke("render", "--instances", "3", "--num", "4", "--out", str(out), "--resume", "--force")
    assert result.exit_code == 2 and "--resume and --force conflict" in result.output
    assert "Traceback" not in result.output and not any(tmp_path.iterdir())


def test_resume_with_force_and_coco_replaces_only_the_export(tmp_path: Path) -> None:
    out, share = tmp_path / "x.h5", tmp_path / "share"
    first = ["render", "--instances", "3", "--num", "4", "--seed", "3", "--out", str(out), "--coco", str(share)]
    assert invoke(*first).exit_code == 0
    written = out.stat().st_mtime_ns
    again = invoke(*first, "--resume", "--force")
    assert again.exit_code == 0, again.output
    assert out.stat().st_mtime_ns == written and (share / "annotations.json").is_file()


def test_a_flag_that_may_be_left_out_is_not_offered_none() -> None:
    """The library says ``seed=-1 ... must be None or an integer``; a flag cannot be None
    (leaving it out is), so the command's line does not offer it."""
    result = invoke("render", "--seed", "-1", "--out", "never.h5")
    assert result.exit_code == 2 and "--seed -1 is invalid: must be an integer in [0, " in result.output
    assert "None" not in result.output and not Path("never.h5").exists()


def test_a_single_file_out_ending_in_a_slash_is_refused(tmp_path: Path) -> None:
    """``--out x.h5/`` names a folder; a render without --shard-size wrote the file x.h5."""
    result = invoke("render", "--instances", "1", "--num", "2", "--out", f"{tmp_path / 'x.h5'}/")
    assert result.exit_code == 2 and "ends with '/', a folder" in result.output and "--shard-size N" in result.output
    assert not any(tmp_path.iterdir())
