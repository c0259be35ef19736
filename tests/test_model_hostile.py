"""Hostile cases for today's model commands that fail (each is a bug found by review).

Runs are made with a stub epoch (real checkpoint and ``model.keras``), so every case
is fast. Each test names what happens now and what should.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import fake_epoch, flat_train_config, quick_config, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

import amodal_model.data as data_module
import amodal_model.train as train_module
from amodal_model import inference, pretrained
from amodal_model.config import FLAT_FIELDS, MAX_BANDWIDTH, RESUME_MAY_CHANGE, TRAIN_PRESETS, TrainConfig
from amodal_model.data import open_source
from amodal_model.inference import InferenceConfig, clusterer
from amodal_model.predict import predict_run
from amodal_model.train import Trainer, TrainingDiverged, train
from shapesgen.coco import ExportConfig, export_coco
from shapesgen.errors import ConfigError, DatasetError, ResourceError, ShapesgenError, ShapesgenNote
from shapesgen.evaluate import evaluate_files
from shapesgen.storage.reader import open_dataset

TINY = TRAIN_PRESETS["tiny"]
QUICK = quick_config()


@pytest.fixture()
def run_copy(run_dir: Path, tmp_path: Path) -> Path:
    """A private run folder with a ``best.keras`` (as a run trained with ``val`` has)."""
    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    shutil.copy(copy / "model.keras", copy / "best.keras")
    return copy


@pytest.fixture()
def export(tiny_dataset: Path, tmp_path: Path) -> Path:
    return export_coco(tiny_dataset, tmp_path / "export", ExportConfig())


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


# --- predict writes over its inputs ------------------------------------------------------------------


@pytest.mark.parametrize("target", ["annotations.json", "config.json", "images/000000.png"])
def test_predict_never_overwrites_a_file_of_the_export_it_reads(run_dir: Path, export: Path, target: str) -> None:
    """``--data EXPORT --out EXPORT/annotations.json --force`` replaces the input annotations."""
    before = snapshot(export)
    with pytest.raises(ShapesgenError):
        predict_run(run_dir, export, export / target, limit=2, workers=1, force=True)
    assert snapshot(export) == before


def test_predict_never_overwrites_the_annotations_given_as_data(run_dir: Path, export: Path) -> None:
    before = snapshot(export)
    with pytest.raises(ShapesgenError):
        predict_run(run_dir, export / "annotations.json", export / "config.json", limit=2, workers=1, force=True)
    assert snapshot(export) == before


@pytest.mark.parametrize("target", ["model.keras", "train_config.json", "metrics.csv"])
def test_predict_with_a_model_file_of_a_run_never_overwrites_the_run(
    run_copy: Path, tiny_dataset: Path, target: str
) -> None:
    """``--model RUN/best.keras --out RUN/model.keras --force`` replaces the run's final model."""
    before = snapshot(run_copy)
    with pytest.raises(ShapesgenError):
        predict_run(run_copy / "best.keras", tiny_dataset, run_copy / target, limit=2, workers=1, force=True)
    assert snapshot(run_copy) == before


def test_predict_never_overwrites_the_runs_best_model(run_copy: Path, tiny_dataset: Path) -> None:
    """``best.keras`` is a run file (train writes it) but is missing from predict's protected list."""
    before = snapshot(run_copy)
    with pytest.raises(ShapesgenError):
        predict_run(run_copy, tiny_dataset, run_copy / "best.keras", limit=2, workers=1, force=True)
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("target", ["MODEL_CARD.md", "metrics.json"])
def test_predict_never_overwrites_a_shipped_models_files(
    run_dir: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    monkeypatch.setattr(pretrained, "PRETRAINED", tmp_path / "pretrained")
    (tmp_path / "pretrained").mkdir()
    folder = pretrained.package_run(run_dir, "shipped", "# shipped\n\nA model.\n", {"AP": 0.5})
    before = snapshot(folder)
    with pytest.raises(ShapesgenError):
        predict_run("shipped", tiny_dataset, folder / target, limit=2, workers=1, force=True)
    assert snapshot(folder) == before


# --- Ctrl-C with clustering workers --------------------------------------------------------------------


def test_ctrl_c_reaching_an_idle_clustering_worker_prints_no_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C goes to the whole process group. A spawned clustering worker waiting for
    its next image dies with a KeyboardInterrupt traceback (``shapesgen predict
    --workers 2`` then shows about 38 lines under its one error line); render's
    workers ignore SIGINT and leave the stop to the parent."""
    rng = np.random.default_rng(0)
    outputs = {
        "semantic": rng.dirichlet(np.ones(3), (1, 2, 8, 8)).astype(np.float32),
        "embedding": rng.normal(0, 1, (1, 2, 8, 8, 3)).astype(np.float32),
    }
    with clusterer(InferenceConfig(), 2) as pool:
        pool.submit(outputs, [0])()
        assert pool.pool is not None
        processes = dict(pool.pool._processes)  # type: ignore[attr-defined]
        time.sleep(1)  # the worker is back waiting for its next image
        for pid in processes:
            os.kill(pid, signal.SIGINT)
        time.sleep(1.5)
        alive = [pid for pid, process in processes.items() if process.is_alive()]
    err = capfd.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert alive == list(processes)


# --- library API ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(run_dir: Path) -> Any:
    import keras

    return keras.saving.load_model(run_dir / "model.keras")


@pytest.fixture(scope="module")
def images(tiny_dataset: Path) -> np.ndarray:
    with open_dataset(tiny_dataset) as ds:
        return ds.images[:3]


@pytest.mark.parametrize("batch_size", [0, -1])
def test_predict_instances_refuses_a_bad_batch_size(model: Any, images: np.ndarray, batch_size: int) -> None:
    """``batch_size=-1`` silently returns no records; ``0`` is a raw ``range()`` ValueError."""
    with pytest.raises(ConfigError, match="batch_size"):
        model.predict_instances(images, batch_size=batch_size)


def test_predict_instances_refuses_a_negative_first_index(model: Any, images: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="first_index"):
        model.predict_instances(images, first_index=-1)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((64, 64, 1), np.uint8),  # one image without the batch axis
        np.zeros((2, 32, 32, 1), np.uint8),  # another image size
        np.zeros((2, 64, 64, 3), np.uint8),  # RGB for a grey model
        np.full((2, 64, 64, 1), "a"),  # not numbers
    ],
    ids=["no-batch-axis", "32px", "rgb", "strings"],
)
def test_predict_instances_bad_images_are_one_config_error(model: Any, bad: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="images") as caught:
        model.predict_instances(bad)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("seed", [-1, "x", 2**40])
def test_inference_config_validates_its_seed(seed: object) -> None:
    """InferenceConfig checks every field but ``seed``; a bad one fails later inside NumPy."""
    with pytest.raises(ConfigError, match="seed"):
        InferenceConfig(seed=seed)  # type: ignore[arg-type]


def test_default_workers_work_on_a_machine_with_many_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default (one per core) is refused by the clusterer's own cap on a 300-core machine."""
    started: list[int] = []

    class NoPool:
        def __init__(self, workers: int, **kwargs: Any) -> None:
            started.append(workers)

        def shutdown(self, **kwargs: Any) -> None:
            pass

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(300)), raising=False)
    monkeypatch.setattr(inference, "ProcessPoolExecutor", NoPool)
    with clusterer(InferenceConfig(), None) as pool:
        assert 1 <= pool.workers <= 300 and started == [pool.workers]


def test_a_killed_clustering_worker_is_a_resource_error(
    run_dir: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed (out of memory) is an internal error, exit 70 ("a bug in shapesgen"),
    where render says "a render worker died" with exit 1."""

    def dying(self: inference.Clusterer, outputs: Any, indices: Any) -> Any:
        assert self.pool is not None
        future = self.pool.submit(os._exit, 9)  # the worker process dies, as under the OOM killer
        return lambda: future.result()

    monkeypatch.setattr(inference.Clusterer, "submit", dying)
    with pytest.raises(ResourceError, match="worker"):
        predict_run(run_dir, tiny_dataset, tmp_path / "results.json", limit=4, workers=2)
    assert not (tmp_path / "results.json").exists()


# --- package_run -----------------------------------------------------------------------------------


@pytest.fixture()
def shipping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(pretrained, "PRETRAINED", tmp_path / "pretrained")
    (tmp_path / "pretrained").mkdir()
    return tmp_path / "pretrained"


def test_package_run_is_deterministic(run_dir: Path, shipping: Path) -> None:
    """Keras writes ``date_saved`` and the weights' zip time into the file, so the same
    run packaged twice differs, and so does the SHA-256 its model card records."""
    first = pretrained.package_run(run_dir, "a", "# a\n\nA model.\n")
    first_bytes = (first / "model.keras").read_bytes()
    first_card = (first / "MODEL_CARD.md").read_text()
    time.sleep(2.1)  # the zip and metadata times have a resolution of seconds
    again = pretrained.package_run(run_dir, "a", "# a\n\nA model.\n")
    assert (again / "model.keras").read_bytes() == first_bytes
    assert (again / "MODEL_CARD.md").read_text() == first_card


@pytest.mark.parametrize("name", ["a/b", "", "..", "x.keras"])
def test_package_run_refuses_a_name_predict_cannot_use(run_dir: Path, shipping: Path, name: str) -> None:
    """'a/b', '' and '..' fail with raw FileNotFoundError/FileExistsError; 'x.keras' is
    packaged but ``predict --model x.keras`` reads it as a (missing) file path."""
    with pytest.raises(ConfigError, match="name"):
        pretrained.package_run(run_dir, name, "# x\n")


@pytest.mark.parametrize("setting", [{"embedding_dim": 8}, {"epochs": 7}])
def test_package_run_takes_only_inference_settings(run_dir: Path, shipping: Path, setting: dict[str, Any]) -> None:
    """``embedding_dim=8`` is a raw Keras ValueError (weights do not fit); ``epochs=7``
    silently rewrites the shipped model's training config."""
    with pytest.raises(ConfigError):
        pretrained.package_run(run_dir, "m", "# m\n", **setting)


# --- predict details ---------------------------------------------------------------------------------


def test_a_huge_bandwidth_is_refused_or_used_without_overflow(
    run_dir: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """``--bandwidth 1e300`` is accepted (finite in float64) and overflows in float32:
    two RuntimeWarnings, four raw lines on stderr, under a successful command."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        try:
            predict_run(run_dir, tiny_dataset, tmp_path / "r.json", limit=2, workers=1, bandwidth=1e300)
        except ConfigError:
            pass  # refusing it is fine too


# --- train -------------------------------------------------------------------------------------------

NEW_FIELDS = (  # TrainConfig fields a run folder saved before today's commit does not have
    "head",
    "head_conv",
    "l2",
    "loss_normalisation",
    "output_kernel",
    "precision",
    "schedule",
    "score",
    "separable_units",
    "visible_targets",
)


def test_resuming_a_run_saved_before_the_loss_options_keeps_its_loss(
    run_dir: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older run was trained with means over pairs and layers and with hidden instances
    as targets; its train_config.json has no ``loss_normalisation``/``visible_targets``,
    which now default to the reference loss, so ``--resume`` silently switches the loss
    mid-run (and rewrites train_config.json to say so)."""
    old = Path(shutil.copytree(run_dir, tmp_path / "old"))
    saved = flat_train_config(TrainConfig.from_json((old / "train_config.json").read_text()))
    for name in NEW_FIELDS:
        saved.pop(name, None)
    (old / "train_config.json").write_text(json.dumps(saved, indent=2) + "\n")
    monkeypatch.setattr(Trainer, "run_epoch", fake_epoch)
    try:
        train(tiny_dataset, old, QUICK.replace(epochs=2), resume=True)
    except ShapesgenError:
        return  # refusing to resume with another loss is right too
    now = json.loads((old / "train_config.json").read_text())  # rewritten nested by concern
    assert (now["loss"]["loss_normalisation"], now["loss"]["visible_targets"]) == ("mean", False)
    assert TrainConfig.from_dict(now).model == QUICK.model


@pytest.mark.parametrize("field", ["d_dist", "d_var", "var_weight", "dist_weight", "ce_weight", "learning_rate"])
def test_loss_settings_beyond_float32_are_refused(field: str) -> None:
    """1e39 is finite in Python but inf in the float32 loss: ``--d-dist 1e39`` trains,
    prints a NumPy RuntimeWarning and fails with "training diverged ... lower the
    learning rate", naming --lr instead of the flag at fault."""
    with pytest.raises(ConfigError, match=field):
        TINY.replace(**{field: 1e39})


# --- third pass (issue 11 leftovers) ------------------------------------------------------------------


def edit_annotations(export: Path, change: Any) -> Path:
    path = export / "annotations.json"
    (export / "SHA256SUMS").unlink()  # it would refuse the edit
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))
    return export


def without_annotations(document: dict[str, Any]) -> None:
    document["annotations"] = []


def with_empty_regions(document: dict[str, Any]) -> None:  # COCOA: one record per image, no region
    for annotation in document["annotations"]:
        annotation["regions"] = []


@pytest.mark.parametrize(("style", "change"), [("coco", without_annotations), ("cocoa", with_empty_regions)])
def test_an_export_without_any_annotation_is_refused(
    tiny_dataset: Path, tmp_path: Path, style: str, change: Any
) -> None:
    """An export with no annotated instance trained as all background, silently."""
    export = edit_annotations(export_coco(tiny_dataset, tmp_path / "export", ExportConfig(style=style)), change)
    with pytest.raises(DatasetError, match="annotates no instance in any of its 12 images") as caught:
        train(export, tmp_path / "run", QUICK)
    assert "\n" not in str(caught.value) and "annotations.json" in str(caught.value)
    assert not (tmp_path / "run").exists()
    result = run_cli("train", "--train", export, "--out", tmp_path / "run", "--preset", "tiny", "-q")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: --train ")


def test_an_export_with_some_images_unannotated_trains_with_one_note(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def drop_two_images(document: dict[str, Any]) -> None:
        document["annotations"] = [a for a in document["annotations"] if a["image_id"] not in (3, 5)]

    export = edit_annotations(
        export_coco(tiny_dataset, tmp_path / "export", ExportConfig(segmentation="polygon", include_hidden=True)),
        drop_two_images,
    )
    monkeypatch.setattr(Trainer, "run_epoch", fake_epoch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(export, tmp_path / "run", QUICK)
    notes = [str(w.message) for w in caught if issubclass(w.category, ShapesgenNote)]
    assert len(notes) == 1 and "2 of 12 images have no annotated instance" in notes[0], notes


def test_a_refused_train_on_an_rle_export_prints_its_error_alone(export: Path, tmp_path: Path) -> None:
    """The approximate-targets note came before the refusal: two lines for one error."""
    result = run_cli("train", "--train", export, "--out", tmp_path / "run", "--preset", "tiny", "--batch-size", 100)
    assert result.exit_code == 2 and result.stderr.startswith("error: --batch-size 100 is invalid")
    assert result.stderr.count("\n") == 1, result.stderr


def test_a_training_on_an_rle_export_gives_its_note_once(
    export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Trainer, "run_epoch", fake_epoch)
    result = run_cli(
        "train", "--train", export, "--out", tmp_path / "run", "--preset", "tiny", "--epochs", 1,
        "--steps-per-epoch", 1, "--batch-size", 2, "--eval-every", 0, "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("note:") == 1 and "layer targets are approximate" in result.stderr


# sharded dataset folders -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A sharded render of 6 tiny scenes (shards of 4 and 2) and the single-file render of the same scenes."""
    from conftest import TINY as SCENES

    from shapesgen.build import render_dataset
    from shapesgen.shards import render_sharded

    root = tmp_path_factory.mktemp("sharded")
    return render_sharded(SCENES, root / "ds", num_scenes=6, shard_size=4), render_dataset(
        SCENES, root / "single.h5", num_scenes=6
    )


def test_train_and_validation_take_a_sharded_folder(
    sharded: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--train dir/`` and ``--val dir/`` were refused ("not a COCO export" / "pass its single-file view")."""
    folder, _ = sharded
    monkeypatch.setattr(Trainer, "run_epoch", fake_epoch)
    run = train(folder, tmp_path / "run", QUICK.replace(eval_every=1, eval_scenes=3), val=folder)
    assert (run / "model.keras").is_file() and (run / "best.keras").is_file()
    assert open_source(folder).path == folder / "dataset.h5"


def test_predict_and_evaluate_take_a_sharded_folder(run_dir: Path, sharded: tuple[Path, Path], tmp_path: Path) -> None:
    folder, single = sharded
    ours = predict_run(run_dir, folder, tmp_path / "sharded.json", workers=1)
    theirs = predict_run(run_dir, single, tmp_path / "single.json", workers=1)
    assert ours.read_bytes() == theirs.read_bytes()
    metrics, _ = evaluate_files(folder, dt=ours)
    assert metrics["all"] == evaluate_files(single, dt=theirs)[0]["all"]
    result = run_cli("predict", "--model", run_dir, "--data", folder, "--out", tmp_path / "cli.json", "--workers", 1)
    assert result.exit_code == 0, result.stderr
    result = run_cli("evaluate", "--gt", folder, "--dt", ours)
    assert result.exit_code == 0, result.stderr


def test_outputs_never_go_inside_a_sharded_folder_read(
    run_dir: Path, sharded: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, _ = sharded
    copy = Path(shutil.copytree(folder, tmp_path / "ds"))
    before = snapshot(copy)
    for target in ("manifest.json", "dataset.h5", "results.json"):
        with pytest.raises(ConfigError, match="inside the sharded dataset|is the input data file"):
            predict_run(run_dir, copy, copy / target, workers=1, force=True)
        with pytest.raises(ConfigError, match="inside the sharded dataset|would overwrite an input"):
            evaluate_files(copy, oracle_layers=1, json_out=copy / target, force=True)
    assert snapshot(copy) == before


def test_a_sharded_folder_without_its_virtual_file_is_one_line(sharded: tuple[Path, Path], tmp_path: Path) -> None:
    copy = Path(shutil.copytree(sharded[0], tmp_path / "ds"))
    (copy / "dataset.h5").unlink()
    with pytest.raises(DatasetError, match="sharded dataset without its dataset.h5") as caught:
        train(copy, tmp_path / "run", QUICK)
    assert caught.value.param == "train_source"


# divergence --------------------------------------------------------------------------------------------


def test_a_diverging_learning_rate_saves_nothing_and_says_where(tiny_dataset: Path, tmp_path: Path) -> None:
    """``--lr 1e30`` for one step saved a model of weights near 1e30 (its loss is nan) as a success."""
    with pytest.raises(TrainingDiverged, match=r"in epoch 1, step 1 .*try learning_rate=1e\+29 or lower") as caught:
        train(tiny_dataset, tmp_path / "run", QUICK.replace(learning_rate=1e30))
    assert caught.value.exit_code == 1 and caught.value.param == "learning_rate" and "\n" not in str(caught.value)
    assert not (tmp_path / "run").exists() and not list(tmp_path.iterdir())


def test_a_run_diverging_on_resume_keeps_its_last_good_checkpoint(
    run_dir: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    before = snapshot(run)

    def diverging(self: Trainer, batch: dict[str, Any]) -> dict[str, Any]:
        return dict.fromkeys(train_module.LOSS_TERMS, float("nan"))

    monkeypatch.setattr(Trainer, "_step", diverging)
    with pytest.raises(TrainingDiverged, match="in epoch 2, step 1 .*the checkpoint of epoch 1 is kept"):
        train(tiny_dataset, run, QUICK.replace(epochs=2), resume=True)
    kept = ("checkpoints", "model.keras", "metrics.csv", "scene_config.json")  # train_config.json records epochs=2
    after = snapshot(run)
    assert {k: v for k, v in after.items() if k.startswith(kept)} == {
        k: v for k, v in before.items() if k.startswith(kept)
    }
    assert not (run / "best.keras").exists()


def test_diverging_on_the_cli_is_one_line_exit_1(tiny_dataset: Path, tmp_path: Path) -> None:
    result = run_cli(
        "train", "--train", tiny_dataset, "--out", tmp_path / "run", "--preset", "tiny", "--epochs", 1,
        "--steps-per-epoch", 1, "--batch-size", 2, "--eval-every", 0, "--lr", "1e30", "-q",
    )  # fmt: skip
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "epoch 1, step 1" in result.stderr and "try --lr 1e+29 or lower" in result.stderr
    assert not (tmp_path / "run").exists()


# resume ------------------------------------------------------------------------------------------------


def test_resume_may_change_inference_and_evaluation_settings_and_records_them(
    run_dir: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--resume --score product`` (or --eval-every, --bandwidth...) was refused as "other settings"."""
    import keras

    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    monkeypatch.setattr(Trainer, "run_epoch", fake_epoch)
    changes = {
        "epochs": 2,
        "score": "product",
        "eval_every": 3,
        "eval_scenes": 5,
        "bandwidth": 2.0,
        "min_pixels": 3,
        "max_clusters": 9,
        "max_iterations": 7,
        "small_clusters": "merge",
        "hidden_clusters": "drop",
        "merge_radius": 2.0,
        "convex_hull": True,
        "max_background": 0.6,
        "cluster_scope": "all",
    }
    assert {f"{FLAT_FIELDS[k][0]}.{k}" for k in changes} == RESUME_MAY_CHANGE
    train(tiny_dataset, run, QUICK.replace(**changes), resume=True)
    saved = TrainConfig.from_json((run / "train_config.json").read_text())
    assert saved == QUICK.replace(**changes)
    assert keras.saving.load_model(run / "model.keras").train_config.inference.score == "product"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"learning_rate": 1e-3}, "trained with learning_rate=0.002, now learning_rate=0.001: "),
        ({"seed": 5, "batch_size": 4}, r"trained with batch_size=2, now batch_size=4 \(and 1 more setting\(s\)\)"),
        ({"visible_targets": False}, "trained with visible_targets=True, now visible_targets=False"),
    ],
)
def test_resume_refuses_a_training_setting_naming_it(
    run_dir: Path, tiny_dataset: Path, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    with pytest.raises(ConfigError, match=message) as caught:
        train(tiny_dataset, run, QUICK.replace(epochs=2, **change), resume=True)
    assert "\n" not in str(caught.value)


def test_resume_refusal_names_the_flag_on_the_cli(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Trainer, "run_epoch", fake_epoch)
    common = ["--train", tiny_dataset, "--out", tmp_path / "run", "--preset", "tiny", "--steps-per-epoch", 1]
    common += ["--batch-size", 2, "--eval-every", 0, "-q"]
    assert run_cli("train", *common, "--epochs", 1).exit_code == 0
    result = run_cli("train", *common, "--epochs", 2, "--lr", "0.001", "--resume")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "--resume: " in result.stderr and "trained with --lr 0.002, now --lr 0.001" in result.stderr
    assert run_cli("train", *common, "--epochs", 2, "--score", "completeness", "--resume").exit_code == 0


# help texts --------------------------------------------------------------------------------------------


def test_data_options_say_what_they_take() -> None:
    import typer

    from shapesgen_cli.app import app

    command = typer.main.get_command(app)
    helps = {
        (name, param.name): " ".join((param.help or "").split())  # type: ignore[attr-defined]
        for name, sub in command.commands.items()  # type: ignore[attr-defined]
        for param in sub.params
    }
    for key in (("train", "train_source"), ("predict", "data")):
        assert "HDF5 file" in helps[key] and "sharded dataset folder" in helps[key] and "COCO-amodal" in helps[key]
    assert "sharded dataset folder" in helps[("train", "val")] and "sharded dataset folder" in helps[("evaluate", "gt")]
    assert "render:" in helps[("train", "train_source")]


# TensorFlow warnings -----------------------------------------------------------------------------------


def test_predicting_again_logs_no_tensorflow_warning(
    run_dir: Path, model: Any, tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Each call made a new tf.function: evaluating every epoch (or predicting a few files) retraced
    and TensorFlow logged retracing / AutoGraph warnings under the progress bar."""
    from amodal_model.predict import infer_fn, predict_hdf5

    caplog.set_level(logging.WARNING)
    first = [predict_hdf5(model, QUICK, model.scene_config, tiny_dataset, batch_size=5) for _ in range(3)]
    for name in ("a.json", "b.json"):
        predict_run(run_dir, tiny_dataset, tmp_path / name, limit=3, batch_size=2, workers=1)
    logged = caplog.text + capfd.readouterr().err
    assert "AutoGraph" not in logged and "retracing" not in logged, logged
    assert infer_fn(model) is infer_fn(model) and first[0] == first[2]


# one source of truth -----------------------------------------------------------------------------------


def test_inference_defaults_are_the_training_defaults() -> None:
    assert InferenceConfig() == TrainConfig().inference and inference.InferenceConfig is InferenceConfig


@settings(max_examples=80, deadline=None)
@given(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.floats(min_value=1e5, max_value=1e7),
        st.integers(-3, 3),
        st.integers(10**5, 10**7),
        st.just(MAX_BANDWIDTH),
    )
)
def test_bandwidth_bounds_are_the_same_for_training_and_inference(value: float) -> None:
    """TrainConfig took any bandwidth up to 1e30, InferenceConfig only up to 1e6: a model
    trained with --bandwidth 1e7 could not predict with its own settings."""

    def accepted(make: Any) -> bool:
        try:
            make(bandwidth=value)
        except ConfigError:
            return False
        return True

    assert accepted(TrainConfig().replace) == accepted(InferenceConfig)


def test_predict_opens_the_data_file_once(
    run_dir: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[Path] = []
    original = data_module.open_dataset

    def counting(path: Any, **kwargs: Any) -> Any:
        opened.append(Path(path))
        return original(path, **kwargs)

    monkeypatch.setattr(data_module, "open_dataset", counting)
    predict_run(run_dir, tiny_dataset, tmp_path / "r.json", limit=4, batch_size=2, workers=1)
    assert opened == [tiny_dataset]


def test_a_validation_file_at_another_mask_size_is_refused_before_training(
    sharded: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its mask size was not checked until the first validation, after an epoch of training."""
    from conftest import TINY

    from shapesgen.build import render_dataset

    val = render_dataset(TINY.replace(mask_size=TINY.mask_size * 2), tmp_path / "val.h5", num_scenes=2)
    epochs: list[int] = []
    monkeypatch.setattr(Trainer, "run_epoch", lambda self, *a, **k: epochs.append(1))
    with pytest.raises(
        ConfigError, match=r"^val='.*val\.h5': classes .* at 64 px masks, but the model was trained on .* at 32 px"
    ):
        train(sharded[1], tmp_path / "run", QUICK.replace(eval_every=1, eval_scenes=2), val=val)
    assert epochs == [] and not (tmp_path / "run").exists()
