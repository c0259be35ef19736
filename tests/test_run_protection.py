"""No command's output may overwrite a training run's own files, even with --force: predict
into another run's model.keras, evaluate --json onto a run's train_config.json, and preview onto
its metrics.csv each destroyed a trained run before. Results beside them are fine."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import fake_epoch, quick_config, run_cli

from shapesgen.errors import DatasetError
from shapesgen.files import RUN_OWNED


@pytest.fixture(scope="module")
def other_run(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second finished run: the one the outputs aim at."""
    copy = tmp_path_factory.mktemp("other") / "run2"
    shutil.copytree(run_dir, copy)
    return copy


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("entry", ["model.keras", "train_config.json", "checkpoints/checkpoint"])
def test_predict_refuses_another_runs_files(tiny_dataset: Path, run_dir: Path, other_run: Path, entry: str) -> None:
    before = snapshot(other_run)
    out = other_run / entry
    result = run_cli("predict", "--model", run_dir, "--data", tiny_dataset, "--out", out, "--force", "-q")
    assert result.exit_code == 2, result.output
    assert "of the training run" in result.stderr and "Traceback" not in result.stderr
    assert snapshot(other_run) == before


def test_evaluate_and_preview_refuse_a_runs_files(tiny_dataset: Path, other_run: Path, tmp_path: Path) -> None:
    before = snapshot(other_run)
    target = other_run / "train_config.json"
    result = run_cli("evaluate", "--gt", tiny_dataset, "--oracle-layers", 2, "--json", target, "--force")
    assert result.exit_code == 2 and "--json" in result.stderr and "of the training run" in result.stderr
    result = run_cli("preview", tiny_dataset, "--out", other_run / "metrics.csv", "--force")
    assert result.exit_code == 2 and "of the training run" in result.stderr, result.output
    assert snapshot(other_run) == before
    beside = other_run / "oracle.json"
    assert run_cli("evaluate", "--gt", tiny_dataset, "--oracle-layers", 2, "--json", beside).exit_code == 0
    assert beside.is_file()


def test_every_entry_train_writes_is_protected(run_dir: Path) -> None:
    from amodal_model.train import RUN_ENTRIES

    assert {name for name in RUN_ENTRIES if ".partial" not in name} <= set(RUN_OWNED)
    assert {p.name for p in run_dir.iterdir()} <= set(RUN_OWNED)


def test_render_refuses_a_runs_files_even_with_force(other_run: Path) -> None:
    """``render --out run/train_config.json --force`` replaced the run's config with a dataset."""
    before = snapshot(other_run)
    for entry in ("train_config.json", "model.keras", "checkpoints/x.h5"):
        result = run_cli("render", "--num", 2, "--image-size", 64, "--out", other_run / entry, "--force", "-q")
        assert result.exit_code == 2 and "of the training run" in result.stderr, result.output
    assert snapshot(other_run) == before


def test_no_output_lands_inside_a_sharded_dataset_or_an_export(
    tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``evaluate --gt ds/dataset.h5 --json ds/shard-00001.h5 --force`` overwrote a shard, and
    ``--json export/images/000000.png --force`` an exported image; render and preview too."""
    from shapesgen.coco import export_coco
    from shapesgen.shards import render_sharded
    from shapesgen.storage.reader import open_dataset

    root = tmp_path_factory.mktemp("owned")
    with open_dataset(tiny_dataset) as ds:
        config = ds.config
    sharded = render_sharded(config, root / "ds", num_scenes=4, shard_size=2)
    export = export_coco(tiny_dataset, root / "export")
    png = next((export / "images").iterdir())
    kept = {**snapshot(sharded), **{f"export/{k}": v for k, v in snapshot(export).items()}}
    commands = [
        ("evaluate", "--gt", sharded / "dataset.h5", "--oracle-layers", 1, "--json", sharded / "shard-00001.h5"),
        ("evaluate", "--gt", export, "--oracle-layers", 1, "--json", png),
        ("evaluate", "--gt", tiny_dataset, "--oracle-layers", 1, "--json", export / "SHA256SUMS"),
        ("render", "--num", 2, "--image-size", 64, "--out", sharded / "extra.h5", "-q"),
        ("render", "--num", 2, "--image-size", 64, "--seed", 99, "--out", sharded / "shard-00001.h5", "-q"),
        ("preview", tiny_dataset, "--out", png, "-q"),
    ]
    for command in commands:
        result = run_cli(*command, "--force")
        assert result.exit_code == 2, (command, result.output)
        assert "is inside the" in result.stderr and "give a path outside it" in result.stderr, result.stderr
    assert {**snapshot(sharded), **{f"export/{k}": v for k, v in snapshot(export).items()}} == kept


def test_a_folder_named_like_a_dataset_by_its_files_alone_takes_outputs(tiny_dataset: Path, tmp_path: Path) -> None:
    """A web app's manifest.json, or a folder with a SHA256SUMS and an annotations.json of its
    own, is not a sharded dataset or an export: outputs anywhere in it were refused."""
    (tmp_path / "manifest.json").write_text('{"name": "my-web-app"}')
    (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  notes.txt\n")
    (tmp_path / "annotations.json").write_text("{}")
    for command in (
        ("render", "--num", 2, "--image-size", 64, "--out", tmp_path / "train.h5", "-q"),
        ("preview", tiny_dataset, "--out", tmp_path / "p.png", "-q"),
        ("evaluate", "--gt", tiny_dataset, "--oracle-layers", 1, "--json", tmp_path / "m.json"),
    ):
        result = run_cli(*command)
        assert result.exit_code == 0, (command, result.stderr)


def test_a_run_whose_resume_was_stopped_is_unfinished_to_predict(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume rewrites train_config.json as it starts: stopped, the run held the old
    model.keras beside the new settings, and predicting with the folder mixed the two."""
    from amodal_model.predict import load_run
    from amodal_model.train import Trainer, TrainingInterrupted, train

    monkeypatch.setattr(Trainer, "run_epoch", fake_epoch)
    run = train(tiny_dataset, tmp_path / "run", quick_config().replace(epochs=2))
    assert load_run(run)[1].optimiser.epochs == 2

    def stopped(self: Any, epoch: int, callbacks: Any) -> dict[str, Any]:
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "run_epoch", stopped)
    with pytest.raises(TrainingInterrupted):
        train(tiny_dataset, run, quick_config().replace(epochs=5, score="completeness"), resume=True)
    with pytest.raises(DatasetError, match="resumed and has not finished.*model from before.*--resume") as caught:
        load_run(run)
    assert caught.value.param == "run_dir"
    _, before, _ = load_run(run / "model.keras")
    assert before.optimiser.epochs == 2 and before.inference.score == "class"
    monkeypatch.setattr(Trainer, "run_epoch", fake_epoch)
    train(tiny_dataset, run, quick_config().replace(epochs=5, score="completeness"), resume=True)
    _, finished, _ = load_run(run)
    assert finished.optimiser.epochs == 5 and finished.inference.score == "completeness"


def test_predicting_with_a_run_that_is_training_says_so(run_dir: Path, tmp_path: Path) -> None:
    """It advised `--resume`, which the running trainer's lock refuses."""
    from amodal_model.predict import load_run
    from shapesgen.files import exclusive_lock

    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    (run / "model.keras").unlink()
    with pytest.raises(DatasetError, match="--resume"):
        load_run(run)
    with exclusive_lock(run, "out"), pytest.raises(DatasetError, match="it is training now") as caught:
        load_run(run)
    assert "--resume" not in str(caught.value)


def test_a_damaged_checkpoint_index_on_resume_is_one_line(tiny_dataset: Path, tmp_path: Path) -> None:
    """TensorFlow logged two ParseError warnings before the error line."""
    import subprocess
    import sys

    from conftest import stub_trained

    from amodal_model.config import TRAIN_PRESETS

    config = TRAIN_PRESETS["tiny"].replace(epochs=1, steps_per_epoch=1, eval_every=0)
    run = stub_trained(tiny_dataset, tmp_path / "run", config)
    (run / "checkpoints" / "checkpoint").write_text("garbage {{\n")
    args = ["train", "--train", str(tiny_dataset), "--out", str(run), "--preset", "tiny", "--resume", "-q"]
    args += ["--epochs", "2", "--steps-per-epoch", "1", "--eval-every", "0"]
    result = subprocess.run([sys.executable, "-m", "shapesgen", *args], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"error: --out {str(run)!r}: its checkpoint cannot be restored (no readable checkpoint in "
        f"{run / 'checkpoints'}); remove the folder or pass --force to start again"
    ], result.stderr
