"""An end-to-end audit of the model commands (issue 11): the researcher features work as
documented, and what a killed or misdirected run leaves behind is handled in one line.

Runs use a stub epoch (real checkpoints, ``model.keras`` and ``best.keras``) unless the
test is about what a real step writes.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import keras
import pytest
import tensorflow as tf
from conftest import fake_epoch, quick_config, run_cli

import amodal_model.predict as predict_module
import amodal_model.train as train_module
from amodal_model.predict import predict_run
from amodal_model.train import Trainer, train
from shapesgen import SceneConfig
from shapesgen.build import render_dataset
from shapesgen.coco import ExportConfig, export_coco
from shapesgen.errors import ConfigError, DatasetError, ShapesgenNote

QUICK = quick_config()


def marked_epoch(self: Any, epoch: int, callbacks: Any) -> dict[str, Any]:
    """A stub epoch that writes its number into the first weight, so a saved model says which epoch it is."""
    first = self.model.trainable_variables[0]
    first.assign(tf.fill(first.shape, float(epoch + 1)))
    return fake_epoch(self, epoch, callbacks)


def test_best_model_is_the_epoch_with_the_highest_validation_ap(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    aps = iter([0.2, 0.6, 0.4])
    monkeypatch.setattr(Trainer, "run_epoch", marked_epoch)
    monkeypatch.setattr(Trainer, "evaluate", lambda self, val, gt: {"AP": next(aps)})
    run = train(tiny_dataset, tmp_path / "run", QUICK.replace(epochs=3, eval_every=1), val=tiny_dataset)
    import amodal_model.model  # noqa: F401  (registers the model class)

    def epoch_of(name: str) -> float:
        return float(keras.saving.load_model(run / name).trainable_variables[0].numpy().flat[0])

    assert epoch_of("best.keras") == 2.0  # AP 0.6, not the last epoch's 0.4
    assert epoch_of("model.keras") == 3.0


def test_per_step_losses_are_in_the_tensorboard_events(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train_module, "STEP_LOG_EVERY", 1)
    run = train(tiny_dataset, tmp_path / "run", QUICK.replace(steps_per_epoch=2))
    steps: dict[str, list[int]] = {}
    for events in (run / "tensorboard").rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
    for term in train_module.LOSS_TERMS:
        assert sorted(steps[f"step/{term}"]) == [1, 2], steps
    assert steps["loss"] == [1]  # the epoch's row


def test_force_replaces_a_run_whose_save_was_killed(
    run_dir: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed while saving its model leaves ``model.partial.keras`` or
    ``best.partial.keras``: train wrote them, so they must not block ``force=True``."""
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    (run / "best.partial.keras").write_bytes(b"half a zip")
    (run / "model.partial.keras").write_bytes(b"half a zip")
    monkeypatch.setattr(Trainer, "run_epoch", fake_epoch)
    train(tiny_dataset, run, QUICK, force=True)
    assert not (run / "best.partial.keras").exists() and (run / "model.keras").is_file()


def test_a_run_without_its_final_model_says_what_to_use_instead(
    run_dir: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """A run stopped before its last epoch has checkpoints and perhaps a ``best.keras``: the
    refusal names both ways on instead of only asking whether training finished."""
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    (run / "model.keras").unlink()
    shutil.copy(run_dir / "model.keras", run / "best.keras")
    with pytest.raises(DatasetError, match=r"not finished.*best\.keras.*--resume") as caught:
        predict_run(run, tiny_dataset, tmp_path / "r.json", workers=1)
    assert "\n" not in str(caught.value)
    (run / "best.keras").unlink()
    result = run_cli("predict", "--model", run, "--data", tiny_dataset, "--out", tmp_path / "r.json", "-q")
    assert result.exit_code == 2 and "--resume" in result.stderr and "best.keras" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.json").exists()


def test_resume_of_a_finished_run_says_there_is_nothing_to_train(
    run_dir: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    monkeypatch.setattr(Trainer, "run_epoch", fake_epoch)
    with pytest.warns(ShapesgenNote, match=r"epochs=1: .* already trained 1 epoch\(s\), so resume=True has nothing"):
        train(tiny_dataset, run, QUICK, resume=True)
    assert (run / "model.keras").is_file()


def test_resume_of_a_missing_run_starts_one_and_says_so(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Trainer, "run_epoch", fake_epoch)
    with pytest.warns(ShapesgenNote, match="nothing to resume.*new run"):
        train(tiny_dataset, tmp_path / "typo", QUICK, resume=True)
    assert (tmp_path / "typo" / "model.keras").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShapesgenNote)
        train(tiny_dataset, tmp_path / "new", QUICK)  # no note without resume=True


def test_resume_notes_on_the_cli_are_one_line_naming_the_flags(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Trainer, "run_epoch", fake_epoch)
    args = ("--train", tiny_dataset, "--out", tmp_path / "run", "--resume", "--preset", "tiny", "--epochs", "1")
    args += ("--steps-per-epoch", "1", "--batch-size", "2", "-q")
    for flag in ("--resume", "--epochs"):  # a missing run, then the finished one
        result = run_cli("train", *args)
        assert result.exit_code == 0, result.output
        notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
        assert len(notes) == 1 and flag in notes[0] and "=" not in notes[0], result.stderr


@pytest.mark.parametrize("style", ["coco", "cocoa"])
def test_evaluate_takes_an_export_folder_as_train_and_predict_do(
    run_dir: Path, tiny_dataset: Path, tmp_path: Path, style: str
) -> None:
    folder = export_coco(tiny_dataset, tmp_path / "export", ExportConfig(style=style))
    predict_run(run_dir, folder, tmp_path / "dt.json", limit=3, workers=1)
    metrics = {}
    for name, gt in (("folder", folder), ("file", folder / "annotations.json")):
        result = run_cli("evaluate", "--gt", gt, "--dt", tmp_path / "dt.json", "--json", tmp_path / f"{name}.json")
        assert result.exit_code == 0, result.output
        scored = json.loads((tmp_path / f"{name}.json").read_text())
        metrics[name] = {k: v for k, v in scored.items() if k != "ground_truth_path"}
    assert metrics["folder"] == metrics["file"] and metrics["file"]["ground_truth"]["images"] == 12


@pytest.mark.parametrize(
    "option", [{"workers": 0}, {"workers": True}, {"bandwidth": -1.0}, {"min_pixels": 0}, {"score": "area"}]
)
def test_predict_checks_every_option_before_loading_the_model(
    run_dir: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: dict[str, Any]
) -> None:
    def no_load(*args: Any) -> None:
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(predict_module, "load_run", no_load)
    name = next(iter(option))
    with pytest.raises(ConfigError, match=f"^{name}=") as caught:
        predict_run(run_dir, tiny_dataset, tmp_path / "r.json", **option)
    assert "\n" not in str(caught.value) and not (tmp_path / "r.json").exists()


def test_resume_on_data_of_other_shapes_names_what_differs(
    run_dir: Path, tiny_config: SceneConfig, tmp_path: Path
) -> None:
    """A 3-layer run resumed on 2-layer data: the refusal says layers=2 against layers=3,
    not two DataSpec reprs to compare by eye."""
    two = render_dataset(tiny_config.replace(layers=2), tmp_path / "two.h5", num_scenes=2)
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"^resume=True: the training data has layers=2 but .* on layers=3: a"):
        train(two, run, QUICK, resume=True)


@pytest.mark.parametrize("model", ["no-such-model", " "])
def test_an_unknown_model_is_named_by_its_flag_on_the_cli(tiny_dataset: Path, tmp_path: Path, model: str) -> None:
    result = run_cli("predict", "--model", model, "--data", tiny_dataset, "--out", tmp_path / "r.json", "-q")
    assert result.exit_code == 2 and result.stderr.startswith(f"error: --model {model!r}"), result.stderr
