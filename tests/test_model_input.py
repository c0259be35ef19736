"""Bad input, faults and misuse for ``train`` and ``predict``: one clean error, nothing left behind.

Training steps are the slow part, so most cases fail before the first one; where a
run folder is needed, ``Trainer.run_epoch`` is replaced by a stub that returns a log
row at once (checkpoints, publishing and ``model.keras`` stay real).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import tensorflow as tf
from conftest import damaged_copy, fake_epoch, flat_train_config, run_cli, stub_trained
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import amodal_model.train as train_module
from amodal_model.config import (
    CONCERNS,
    FLAT_FIELDS,
    MAX_SEED,
    TRAIN_PRESETS,
    LossConfig,
    TrainConfig,
    build_train_config,
)
from amodal_model.predict import predict_run
from amodal_model.train import Trainer, TrainingDiverged, TrainingInterrupted, train
from shapesgen.errors import ConfigError, DatasetError, ResourceError, ShapesgenError

SMALL = TRAIN_PRESETS["tiny"].replace(feature_channels=8, head_filters=(8, 4), embedding_dim=4)
QUICK = SMALL.replace(epochs=1, batch_size=2, steps_per_epoch=1, eval_every=0)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with the bytes of each file (None for folders)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def one_line(exc: BaseException) -> None:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text, text


@pytest.fixture()
def data(tiny_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the 12-scene dataset (64 px, 3 layers) inside ``tmp_path``."""
    return Path(shutil.copy(tiny_dataset, tmp_path / "data.h5"))


@pytest.fixture(scope="module")
def run_dir(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run folder (real checkpoint and model.keras, stub epoch)."""
    return stub_trained(tiny_dataset, tmp_path_factory.mktemp("runs") / "run", QUICK)


# --- TrainConfig -------------------------------------------------------------------------------------

BAD_FIELDS = [
    ("learning_rate", float("inf"), "learning_rate=inf is invalid: must be a number > 0 and <= 1e+30"),
    ("learning_rate", float("nan"), "learning_rate=nan is invalid"),
    ("learning_rate", 0.0, "learning_rate=0.0 is invalid"),
    ("reg_weight", float("inf"), "reg_weight=inf is invalid: must be a number >= 0 and <= 1e+30"),
    ("bandwidth", "x", "bandwidth='x' is invalid"),
    ("bandwidth", [1.5], "bandwidth=[1.5] is invalid"),
    ("d_dist", True, "d_dist=True is invalid"),
    ("dropout", 1.0, "dropout=1.0 is invalid: must be a finite number in [0, 1)"),
    ("seed", -1, f"seed=-1 is invalid: must be an integer in [0, {MAX_SEED}]"),
    ("seed", 2**32, "seed=4294967296 is invalid"),
    ("seed", 1.0, "seed=1.0 is invalid"),
    ("epochs", 0, "epochs=0 is invalid"),
    ("epochs", 10**4400, "epochs=<integer of about 4401 digits> is invalid"),
    ("batch_size", 2.0, "batch_size=2.0 is invalid: must be an integer"),
    ("batch_size", True, "batch_size=True is invalid"),
    ("batch_size", 10**6, "batch_size=1000000 is invalid"),
    ("feature_channels", 10**9, "feature_channels=1000000000 is invalid"),
    ("steps_per_epoch", 0, "steps_per_epoch=0 is invalid: must be None (one pass) or an integer"),
    ("eval_every", -1, "eval_every=-1 is invalid"),
    ("head_filters", [], "head_filters=[] is invalid"),
    ("head_filters", [8, 0], "head_filters=[8, 0] is invalid"),
    ("head_filters", "abc", "head_filters='abc' is invalid"),
    ("head_filters", 8, "head_filters=8 is invalid"),
    ("backbone", "resnet", "backbone='resnet' is invalid: must be one of 'xception', 'mobilenetv2', 'tiny'"),
    ("backbone", ["tiny"], "backbone=['tiny'] is invalid"),
    ("hinge", None, "hinge=None is invalid"),
    ("distance_scope", "some", "distance_scope='some' is invalid"),
    ("backbone_weights", 3, "backbone_weights=3 is invalid"),
    ("backbone_weights", "", "backbone_weights='' is invalid"),
]


@pytest.mark.parametrize(
    ("field", "value", "message"), BAD_FIELDS, ids=[m.split(" is invalid")[0] for _, _, m in BAD_FIELDS]
)
def test_bad_field_is_one_config_error_naming_it(field: str, value: Any, message: str) -> None:
    for make in (lambda: TrainConfig.from_dict({field: value}), lambda: SMALL.replace(**{field: value})):
        with pytest.raises(ConfigError) as caught:
            make()
        assert str(caught.value).startswith(message) and caught.value.param == field
        one_line(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"bandwidth": "x"}', "bandwidth='x' is invalid"),
        ('{"nope": 1}', "unknown train config field(s) ['nope']"),
        ("[1, 2]", "must be a JSON object, not list"),
        ('{"seed": ' + "7" * 4400 + "}", "more than 4300 digits"),
        ("[" * 100_000, "not valid JSON"),
        ("{", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
    ],
    ids=["wrong-type", "unknown-key", "list", "4400-digits", "deep", "truncated", "binary"],
)
def test_hand_edited_train_config_json_is_one_config_error(text: str | bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        TrainConfig.from_json(text)
    one_line(caught.value)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([*sorted(FLAT_FIELDS), *CONCERNS, "extra"]), JSON, max_size=4))
def test_random_json_objects_give_a_config_or_a_config_error(data: dict[str, Any]) -> None:
    try:
        config = TrainConfig.from_dict(data)
    except ConfigError as exc:
        one_line(exc)
    else:
        assert TrainConfig.from_json(config.to_json()) == config


def test_presets_by_name() -> None:
    assert build_train_config("tiny", epochs=3, seed=None).optimiser.epochs == 3
    with pytest.raises(ConfigError, match="preset='huge' is invalid") as caught:
        build_train_config("huge")
    assert caught.value.param == "preset"


# --- train: refusals before any work leave nothing behind --------------------------------------------


def foreign_hdf5(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    return path


TRAIN_REFUSALS: dict[str, Any] = {
    "foreign-hdf5": lambda d, t: dict(train_source=foreign_hdf5(t / "foreign.h5"), out=t / "run"),
    "not-hdf5": lambda d, t: dict(train_source=t / "notes.txt", out=t / "run"),
    "missing": lambda d, t: dict(train_source=t / "nope.h5", out=t / "run"),
    "folder-as-data": lambda d, t: dict(train_source=t / "keep", out=t / "run"),
    "bad-live-spec": lambda d, t: dict(train_source="render:paper,colour=3", out=t / "run"),
    "live-unknown-preset": lambda d, t: dict(train_source="render:nope", out=t / "run"),
    "live-huge-number": lambda d, t: dict(train_source="render:paper,instances=" + "9" * 5000, out=t / "run"),
    "live-too-many-instances": lambda d, t: dict(train_source="render:paper,instances=99999", out=t / "run"),
    "live-impossible-layers": lambda d, t: dict(train_source="render:paper,layers=99999999", out=t / "run"),
    "live-layers-past-the-instances": lambda d, t: dict(
        train_source="render:paper,layers=3000,instances=2", out=t / "run"
    ),
    "live-empty": lambda d, t: dict(train_source="render:", out=t / "run"),
    "live-no-preset": lambda d, t: dict(train_source="render:,instances=2", out=t / "run"),
    "live-empty-setting": lambda d, t: dict(train_source="render:paper,,instances=2", out=t / "run"),
    "live-setting-twice": lambda d, t: dict(train_source="render:paper,instances=2,instances=3", out=t / "run"),
    "foreign-val": lambda d, t: dict(train_source=d, out=t / "run", val=foreign_hdf5(t / "foreign.h5")),
    "out-is-a-file": lambda d, t: dict(train_source=d, out=t / "notes.txt"),
    "out-under-a-file": lambda d, t: dict(train_source=d, out=t / "notes.txt" / "run"),
    "out-empty": lambda d, t: dict(train_source=d, out=""),
    "out-dot": lambda d, t: dict(train_source=d, out="."),
    "out-root": lambda d, t: dict(train_source=d, out="/"),
    "out-not-empty": lambda d, t: dict(train_source=d, out=t / "keep"),
    "force-non-run-folder": lambda d, t: dict(train_source=d, out=t / "keep", force=True),
    "force-folder-holding-data": lambda d, t: dict(train_source=d, out=t, force=True),
    "resume-non-run-folder": lambda d, t: dict(train_source=d, out=t / "keep", resume=True),
    "batch-larger-than-data": lambda d, t: dict(train_source=d, out=t / "run", config=QUICK.replace(batch_size=16)),
    "missing-weights": lambda d, t: dict(
        train_source=d, out=t / "run", config=QUICK.replace(backbone_weights=str(t / "w.weights.h5"))
    ),
    "image-size-not-multiple-of-16": lambda d, t: dict(train_source="render:paper", out=t / "run"),
    "resume-not-bool": lambda d, t: dict(train_source=d, out=t / "run", resume="yes"),
    "config-not-a-config": lambda d, t: dict(train_source=d, out=t / "run", config={"epochs": 1}),
}


@pytest.mark.parametrize("case", sorted(TRAIN_REFUSALS))
def test_train_refusal_is_one_line_and_leaves_nothing(
    case: str, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "notes.txt").write_text("not a dataset")
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "mine.txt").write_text("precious")
    kwargs = {"config": QUICK, **TRAIN_REFUSALS[case](data, tmp_path)}
    if case == "image-size-not-multiple-of-16":
        monkeypatch.setattr(train_module, "open_source", lambda spec: _source_of_size(72))
    before = snapshot(tmp_path)
    with pytest.raises(ShapesgenError) as caught:
        train(**kwargs)
    one_line(caught.value)
    assert snapshot(tmp_path) == before


def _source_of_size(size: int) -> Any:
    from amodal_model.data import Source
    from shapesgen import SceneConfig

    return Source(SceneConfig(image_size=size, mask_size=size // 4, instances_per_class=1, seed=0))


def test_force_names_the_reason_it_refuses(data: Path, tmp_path: Path) -> None:
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "mine.txt").write_text("precious")
    with pytest.raises(DatasetError, match="is not a training run") as caught:
        train(data, tmp_path / "keep", QUICK, force=True)
    assert caught.value.param == "out"
    with pytest.raises(ConfigError, match="holds the input") as held:
        train(data, tmp_path, QUICK, force=True)
    assert held.value.param == "out"


# --- train: faults during the run ---------------------------------------------------------------------


def no_space(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_at_the_first_checkpoint_leaves_no_run_folder(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Trainer, "run_epoch", fake_epoch)
    monkeypatch.setattr(tf.train.CheckpointManager, "save", no_space)
    before = snapshot(tmp_path)
    with pytest.raises(ResourceError, match="no space left on device") as caught:  # the system's: exit 1
        train(data, tmp_path / "runs" / "new", QUICK)
    one_line(caught.value)
    assert snapshot(tmp_path) == before  # no run, no runs/, no .partial, no .lock


def test_ctrl_c_before_the_first_checkpoint_leaves_no_run_folder(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "run_epoch", interrupted)
    before = snapshot(tmp_path)
    with pytest.raises(TrainingInterrupted, match="nothing was kept"):
        train(data, tmp_path / "run", QUICK)
    assert snapshot(tmp_path) == before


def test_force_keeps_the_old_run_until_the_new_one_has_a_checkpoint(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = tmp_path / "run"
    old.mkdir()
    (old / "train_config.json").write_text(QUICK.to_json())
    (old / "metrics.csv").write_text("old run")
    for left in [
        "checkpoints/checkpoint.tmp5f3a",
        "checkpoints/ckpt-2_temp/part-00000-of-00001.index",
        "checkpoints/ckpt-2_temp/part-00000-of-00001.data-00000-of-00001.tempstate2839247869088279901",
    ]:
        (old / left).parent.mkdir(parents=True, exist_ok=True)
        (old / left).write_text("a save cut short")  # TensorFlow's own leftovers: the run's to replace
    monkeypatch.setattr(Trainer, "run_epoch", fake_epoch)
    monkeypatch.setattr(tf.train.CheckpointManager, "save", no_space)
    before = snapshot(tmp_path)
    with pytest.raises(ResourceError, match="no space left"):
        train(data, old, QUICK, force=True)
    assert snapshot(tmp_path) == before
    monkeypatch.undo()
    monkeypatch.setattr(Trainer, "run_epoch", fake_epoch)
    assert train(data, old, QUICK, force=True) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.h5", "run"]
    assert (old / "metrics.csv").read_text() != "old run" and (old / "model.keras").is_file()


def test_force_never_replaces_a_run_holding_user_files_or_the_backbone_weights(data: Path, tmp_path: Path) -> None:
    old = tmp_path / "run"
    old.mkdir()
    (old / "train_config.json").write_text(QUICK.to_json())
    (old / "results.json").write_text("[]")  # the user's predictions, kept beside the run
    before = snapshot(tmp_path)
    with pytest.raises(DatasetError, match="holds 'results.json', which a run does not write"):
        train(data, old, QUICK, force=True)
    (old / "results.json").unlink()
    for inner in ["checkpoints/my.h5", "tensorboard/notes.txt", "checkpoints/ckpt-3_temp/notes.txt"]:
        (old / inner).parent.mkdir(parents=True, exist_ok=True)
        (old / inner).write_text("mine")  # inside the run's own subfolders: deleted with them
        before = snapshot(tmp_path)
        with pytest.raises(DatasetError, match=f"holds '{inner}', which a run does not write"):
            train(data, old, QUICK, force=True)
        assert snapshot(tmp_path) == before
        (old / inner).unlink()
    shutil.rmtree(old / "checkpoints")
    shutil.rmtree(old / "tensorboard")
    weights = old / "checkpoints"
    weights.mkdir()
    (weights / "w.weights.h5").write_bytes(b"weights")
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match="holds the input"):
        train(data, old, QUICK.replace(backbone_weights=str(weights / "w.weights.h5")), force=True)
    assert snapshot(tmp_path) == before


def test_resume_of_a_damaged_run_is_one_line_and_changes_nothing(
    run_dir: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    data = tiny_dataset
    config = QUICK.replace(epochs=2)
    marker = copy / "train_config.json"
    saved = marker.read_text()
    for concern, edit, message in [
        ("inference", {"bandwidth": "x"}, "bandwidth='x' is invalid"),
        ("optimiser", {"epochs": 10**30}, "epochs=1000000000000000000000000000000 is invalid"),
        (None, {"rogue": 1}, "unknown train config field"),
    ]:
        damaged = json.loads(saved)
        (damaged[concern] if concern else damaged).update(edit)
        marker.write_text(json.dumps(damaged))
        before = snapshot(tmp_path)
        with pytest.raises(DatasetError, match=message) as caught:
            train(data, copy, config, resume=True)
        one_line(caught.value)
        assert caught.value.param == "out" and snapshot(tmp_path) == before
    marker.write_text(saved)
    for index in (copy / "checkpoints").glob("*.index"):
        index.write_bytes(b"\0" * 64)
    before = snapshot(tmp_path)
    with pytest.raises(DatasetError, match="checkpoint cannot be restored") as caught:
        train(data, copy, config, resume=True)
    one_line(caught.value)
    assert snapshot(tmp_path) == before
    for damage in ("garbage index", "no checkpoints"):  # resuming must never silently start over
        shutil.rmtree(copy)
        shutil.copytree(run_dir, copy)
        if damage == "no checkpoints":
            shutil.rmtree(copy / "checkpoints")
        else:
            (copy / "checkpoints" / "checkpoint").write_text("garbage")
        before = snapshot(tmp_path)
        with pytest.raises(DatasetError, match="no readable checkpoint") as caught:
            train(data, copy, config, resume=True)
        one_line(caught.value)
        assert snapshot(tmp_path) == before, damage


# --- predict -------------------------------------------------------------------------------------------


def edit_json(name: str, **changes: Any) -> Any:
    def edit(run: Path) -> None:
        path = run / name
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    return edit


def edit_train_config(**changes: Any) -> Any:
    """Change fields, by flat name, inside their concerns' objects of a run's train_config.json."""

    def edit(run: Path) -> None:
        path = run / "train_config.json"
        saved = json.loads(path.read_text())
        for name, value in changes.items():
            for concern in FLAT_FIELDS[name]:
                saved[concern][name] = value
        path.write_text(json.dumps(saved))

    return edit


PREDICT_RUN_DAMAGE: dict[str, Any] = {
    "train-config-wrong-type": (edit_train_config(bandwidth="x"), "bandwidth='x' is invalid"),
    "train-config-list": (lambda r: (r / "train_config.json").write_text("[]"), "must be a JSON object"),
    "train-config-embedding": (edit_train_config(embedding_dim=5), "do not match"),
    "scene-config-shapes-string": (edit_json("scene_config.json", shapes="circle"), "scene_config.json"),
    "scene-config-layers": (edit_json("scene_config.json", layers=4), "do not match"),
    "scene-config-missing": (lambda r: (r / "scene_config.json").unlink(), "no such file"),
    "model-garbage": (lambda r: (r / "model.keras").write_bytes(os.urandom(4096)), "not a Keras model file"),
    "model-missing": (lambda r: (r / "model.keras").unlink(), "no model.keras inside"),
}


@pytest.mark.parametrize("case", sorted(PREDICT_RUN_DAMAGE))
def test_predict_with_a_damaged_run_is_one_line_and_writes_nothing(
    case: str, run_dir: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    damage, message = PREDICT_RUN_DAMAGE[case]
    damage(copy)
    before = snapshot(tmp_path)
    with pytest.raises(DatasetError, match=message) as caught:
        predict_run(copy, tiny_dataset, tmp_path / "results.json")
    one_line(caught.value)
    assert caught.value.param == "run_dir" and snapshot(tmp_path) == before


PREDICT_REFUSALS: dict[str, Any] = {
    "foreign-data": lambda r, d, t: dict(data=foreign_hdf5(t / "foreign.h5"), out=t / "results.json"),
    "missing-data": lambda r, d, t: dict(data=t / "nope.h5", out=t / "results.json"),
    "out-is-the-data": lambda r, d, t: dict(data=d, out=d),
    "out-is-the-model": lambda r, d, t: dict(data=d, out=r / "model.keras"),
    "out-is-a-folder": lambda r, d, t: dict(data=d, out=t),
    "out-under-a-file": lambda r, d, t: dict(data=d, out=d / "results.json"),
    "out-empty": lambda r, d, t: dict(data=d, out=""),
    "run-missing": lambda r, d, t: dict(run_dir=t / "nope", data=d, out=t / "results.json"),
    "run-is-a-file": lambda r, d, t: dict(run_dir=d, data=d, out=t / "results.json"),
    "limit-zero": lambda r, d, t: dict(data=d, out=t / "results.json", limit=0),
    "batch-size-bool": lambda r, d, t: dict(data=d, out=t / "results.json", batch_size=True),
}


@pytest.mark.parametrize("case", sorted(PREDICT_REFUSALS))
def test_predict_refusal_is_one_line_and_writes_nothing(case: str, run_dir: Path, data: Path, tmp_path: Path) -> None:
    kwargs = {"run_dir": run_dir, **PREDICT_REFUSALS[case](run_dir, data, tmp_path)}
    before, run_before = snapshot(tmp_path), snapshot(run_dir)
    with pytest.raises(ShapesgenError) as caught:
        predict_run(**kwargs)
    one_line(caught.value)
    assert snapshot(tmp_path) == before and snapshot(run_dir) == run_before


def test_predict_disk_full_leaves_no_partial_results(
    run_dir: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import io

    real_fdopen = os.fdopen

    class FullDisk(io.BufferedWriter):
        def write(self, data: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_disk_file(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        return FullDisk(real_fdopen(fd, "wb", buffering=0)) if "w" in mode else real_fdopen(fd, mode, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", full_disk_file)  # the temporary file is created, then the disk is full
    before = snapshot(tmp_path)
    with pytest.raises(ResourceError, match="No space left") as caught:
        predict_run(run_dir, data, tmp_path / "out" / "results.json", limit=2)
    one_line(caught.value)
    monkeypatch.undo()
    assert snapshot(tmp_path) == before


def test_unwritable_folder_is_one_line_for_train_and_predict(run_dir: Path, data: Path, tmp_path: Path) -> None:
    """``/sys`` refuses new entries even to root (EPERM), unlike a chmod-ed folder: bad input
    (exit 2), as for every command, not the system's failure."""
    before = snapshot(tmp_path)
    with pytest.raises(DatasetError, match="not permitted|ermission denied") as caught:
        train(data, Path("/sys/shapesgen-test-run"), QUICK)
    one_line(caught.value)
    with pytest.raises(DatasetError, match="not permitted|ermission denied") as caught:
        predict_run(run_dir, data, Path("/sys/shapesgen-test/results.json"))
    one_line(caught.value)
    assert snapshot(tmp_path) == before
    assert not Path("/sys/shapesgen-test-run").exists() and not Path("/sys/shapesgen-test").exists()


# --- the same through the command line -----------------------------------------------------------------


def assert_clean_failure(result: Any, root: Path, before: dict[str, bytes | None]) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert snapshot(root) == before


CLI_TRAIN = {
    "foreign-hdf5": lambda d, t: ["--train", foreign_hdf5(t / "foreign.h5"), "--out", t / "run"],
    "out-is-a-file": lambda d, t: ["--train", d, "--out", t / "notes.txt"],
    "force-non-run-folder": lambda d, t: ["--train", d, "--out", t / "keep", "--force"],
    "seed-negative": lambda d, t: ["--train", d, "--out", t / "run", "--seed", "-1"],
    "seed-over-32-bits": lambda d, t: ["--train", d, "--out", t / "run", "--seed", str(2**32)],
    "lr-inf": lambda d, t: ["--train", d, "--out", t / "run", "--lr", "inf"],
    "reg-weight-inf": lambda d, t: ["--train", d, "--out", t / "run", "--reg-weight", "inf"],
    "bad-live-spec": lambda d, t: ["--train", "render:paper,instances=x", "--out", t / "run"],
}


@pytest.mark.parametrize("case", sorted(CLI_TRAIN))
def test_cli_train_refusal(case: str, data: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a dataset")
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "mine.txt").write_text("precious")
    args = CLI_TRAIN[case](data, tmp_path)
    before = snapshot(tmp_path)
    result = run_cli("train", *args, "--preset", "tiny", "--epochs", "1", "-q")
    assert_clean_failure(result, tmp_path, before)


def test_cli_predict_refusal(run_dir: Path, data: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    edit_train_config(bandwidth="x")(copy)
    before = snapshot(tmp_path)
    for args in (
        ["--model", copy, "--data", data, "--out", tmp_path / "results.json"],
        ["--model", run_dir, "--data", data, "--out", data],
    ):
        assert_clean_failure(run_cli("predict", *args, "-q"), tmp_path, before)


def test_predict_never_writes_over_the_run_or_an_existing_file(run_dir: Path, data: Path, tmp_path: Path) -> None:
    for target in (run_dir / "metrics.csv", run_dir / "checkpoints" / "checkpoint", run_dir / "model.keras"):
        with pytest.raises(ConfigError, match="file of the run"):
            predict_run(run_dir, data, target, limit=1)
    existing = tmp_path / "results.json"
    existing.write_text("[] mine")
    with pytest.raises(DatasetError, match="force=True"):
        predict_run(run_dir, data, existing, limit=1)
    assert existing.read_text() == "[] mine"
    assert predict_run(run_dir, data, existing, limit=1, force=True) == existing and existing.read_text() != "[] mine"
    beside = predict_run(run_dir, data, run_dir / "results.json", limit=1)  # results may sit beside the run files
    assert beside.is_file()
    beside.unlink()


@pytest.mark.parametrize("change", [{"instances_per_class": 1, "mask_size": 16}, {"shapes": "circle,square"}])
def test_predict_refuses_data_of_other_classes_or_mask_size(
    change: dict[str, Any], run_dir: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    from shapesgen import open_dataset
    from shapesgen.build import render_dataset
    from shapesgen.config import build_config, parse_classes

    with open_dataset(tiny_dataset) as ds:
        base = ds.config
    if "shapes" in change:
        other = build_config(base=base, classes=parse_classes(change["shapes"]))
    else:
        other = base.replace(**change)
    data = render_dataset(other, tmp_path / "other.h5", num_scenes=2)
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match="model was trained on") as caught:
        predict_run(run_dir, data, tmp_path / "r.json")
    one_line(caught.value)
    assert snapshot(tmp_path) == before


def test_a_diverged_training_fails_and_keeps_nothing(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def diverged(self: Trainer, epoch: int, callbacks: Any) -> dict[str, Any]:
        return {**fake_epoch(self, epoch, callbacks), "loss": float("nan")}

    monkeypatch.setattr(Trainer, "run_epoch", diverged)
    before = snapshot(tmp_path)
    with pytest.raises(TrainingDiverged, match="training diverged in epoch 1") as caught:
        train(data, tmp_path / "run", QUICK)
    assert caught.value.param == "learning_rate" and caught.value.exit_code == 1
    assert snapshot(tmp_path) == before


def test_a_run_with_results_beside_it_resumes(
    run_dir: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    (copy / "results.json").write_text("[]")  # the README's workflow: predictions written into the run folder
    monkeypatch.setattr(Trainer, "run_epoch", fake_epoch)
    config = TrainConfig.from_json((copy / "train_config.json").read_text())
    assert train(tiny_dataset, copy, config.replace(epochs=config.optimiser.epochs + 1), resume=True)
    assert (copy / "results.json").read_text() == "[]"


def test_a_damaged_validation_file_is_refused_before_training(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import h5py

    val = Path(shutil.copy(data, tmp_path / "val.h5"))
    with h5py.File(val, "r") as f:  # one byte inverted inside the compressed chunk of scene 1's image
        chunk = f["images"].id.get_chunk_info_by_coord((1, 0, 0, 0))
    with val.open("r+b") as file:
        file.seek(chunk.byte_offset + chunk.size // 2)
        byte = file.read(1)[0]
        file.seek(chunk.byte_offset + chunk.size // 2)
        file.write(bytes([byte ^ 0xFF]))
    epochs: list[int] = []
    monkeypatch.setattr(Trainer, "run_epoch", lambda self, epoch, callbacks: epochs.append(epoch) or {})
    before = snapshot(tmp_path)
    with pytest.raises(DatasetError, match="val.h5.*images") as caught:
        train(data, tmp_path / "run", QUICK.replace(eval_every=1), val=val)
    one_line(caught.value)
    assert epochs == [] and snapshot(tmp_path) == before


def test_a_run_folder_with_the_old_flat_train_config_predicts_and_resumes(
    run_dir: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run saved before the split by concern has one flat train_config.json: it is read
    (flat -> nested), ``--resume`` takes it as the same settings and rewrites it nested."""
    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    (copy / "train_config.json").write_text(json.dumps(flat_train_config(QUICK), indent=2) + "\n")
    assert predict_run(copy, tiny_dataset, tmp_path / "r.json", limit=2, workers=1).is_file()
    monkeypatch.setattr(Trainer, "run_epoch", fake_epoch)
    with pytest.raises(ConfigError, match="trained with learning_rate=0.002, now learning_rate=0.001"):
        train(tiny_dataset, copy, QUICK.replace(epochs=2, learning_rate=1e-3), resume=True)
    train(tiny_dataset, copy, QUICK.replace(epochs=2), resume=True)
    saved = json.loads((copy / "train_config.json").read_text())
    assert set(saved) == set(CONCERNS) and TrainConfig.from_dict(saved) == QUICK.replace(epochs=2)


def test_the_cli_puts_each_flag_in_its_concern(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    received: dict[str, Any] = {}
    monkeypatch.setattr(train_module, "train", lambda source, out, config, **kw: received.update(config=config) or out)
    flags = ["--preset", "cpu-fast", "--embedding-dim", 4, "--d-dist", 2.0, "--lr", 0.01, "--epochs", 3]
    flags += ["--eval-scenes", 9, "--score", "product", "--seed", 5, "--all-targets", "--norm-free-bias", "-q"]
    assert run_cli("train", "--train", "x.h5", "--out", tmp_path / "r", *flags).exit_code == 0
    config = received["config"]
    assert config.model == TRAIN_PRESETS["cpu-fast"].model.replace(embedding_dim=4, norm_free_bias=True)
    assert config.loss == LossConfig(d_dist=2.0, visible_targets=False)
    assert (config.optimiser.learning_rate, config.optimiser.epochs, config.optimiser.seed) == (0.01, 3, 5)
    assert (config.evaluation.eval_scenes, config.inference.score, config.inference.seed) == (9, "product", 5)
    bad = run_cli("train", "--train", "x.h5", "--out", tmp_path / "r", "--d-dist", -1)
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "--d-dist" in bad.stderr and "is invalid: must be a number > 0" in bad.stderr


def test_cli_names_the_training_data_by_its_flag(tiny_dataset: Path, tmp_path: Path) -> None:
    """Layers past the instance count hung training (a 3000-layer model); both refusals name
    --train, not the library's train_source."""
    result = run_cli("train", "--train", "render:paper,layers=3000,instances=2", "--out", tmp_path / "a")
    assert result.exit_code == 2 and "--train 'render:paper,layers=3000,instances=2'" in result.stderr
    assert "at most 6 layers" in result.stderr and "train_source" not in result.stderr
    result = run_cli("train", "--train", tiny_dataset, "--out", tmp_path / "b", "--preset", "tiny", "--batch-size", 16)
    assert result.exit_code == 2 and "--batch-size 16 is invalid: --train" in result.stderr, result.stderr
    assert "has only 12 scene(s)" in result.stderr and not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_out_refusals_say_what_the_folder_is_and_what_to_do(data: Path, tmp_path: Path) -> None:
    """A link to a file was called broken, a folder of other files was told to pass --resume
    or --force (both then refused), and a default left out showed as None."""
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "file.txt")
    with pytest.raises(DatasetError, match="is a file, not a run folder"):
        train(data, tmp_path / "link", QUICK)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="is a broken symbolic link"):
        train(data, tmp_path / "dangling", QUICK)
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "mine.txt").write_text("precious")
    with pytest.raises(DatasetError, match="is not a training run: give a new or empty folder"):
        train(data, tmp_path / "keep", QUICK)
    run = stub_trained(data, tmp_path / "run", QUICK.replace(steps_per_epoch=3))
    with pytest.raises(ConfigError, match="trained with steps_per_epoch=3, now steps_per_epoch not given"):
        train(data, run, QUICK.replace(steps_per_epoch=None), resume=True)


def test_a_device_given_as_the_model_is_named_a_device(tiny_dataset: Path, tmp_path: Path) -> None:
    result = run_cli("predict", "--model", "/dev/null", "--data", tiny_dataset, "--out", tmp_path / "r.json")
    assert result.exit_code == 2 and "is a device, not a run folder or a .keras file" in result.stderr, result.stderr
    assert not (tmp_path / "r.json").exists()


def test_predicting_a_whole_file_checks_its_images_against_the_checksums(
    run_dir: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """A file with an image zeroed after it was written was predicted without a word."""
    damaged = damaged_copy(tiny_dataset, tmp_path / "damaged.h5", "images", 3)
    with pytest.raises(
        DatasetError, match=r"dataset images does not match the checksum .* no predictions were written"
    ):
        predict_run(run_dir, damaged, tmp_path / "r.json", workers=1)
    assert not (tmp_path / "r.json").exists()
    assert predict_run(run_dir, tiny_dataset, tmp_path / "whole.json", workers=1).is_file()
    assert predict_run(run_dir, damaged, tmp_path / "first.json", limit=3, workers=1).is_file()  # scenes 0-2 only


def test_validation_during_training_does_not_throw_away_an_epoch_over_a_damaged_image(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """predict's image check, run by each validation on a small file, raised after the epoch
    was trained and before it was saved; training checks no input's checksums (README)."""
    val = damaged_copy(data, tmp_path / "val.h5", "images", 0)
    monkeypatch.setattr(Trainer, "run_epoch", fake_epoch)
    run = train(data, tmp_path / "run", QUICK.replace(eval_every=1, eval_scenes=50), val=val)
    assert (run / "model.keras").is_file() and "AP" in (run / "metrics.csv").read_text().splitlines()[0]
