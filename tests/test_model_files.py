"""Self-contained model files, shipped models by name, and COCO exports as model input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from conftest import run_cli

from amodal_model import pretrained
from amodal_model.config import TRAIN_PRESETS, TrainConfig
from amodal_model.data import file_batches
from amodal_model.model import LayeredEmbeddingModel
from amodal_model.predict import load_run, predict_run
from amodal_model.train import Trainer, train
from shapesgen import DatasetError, SceneConfig
from shapesgen.coco import ExportConfig, export_coco
from shapesgen.errors import ShapesgenNote
from shapesgen.renderer import render_scenes
from shapesgen.storage.reader import open_dataset

QUICK = TRAIN_PRESETS["tiny"].replace(
    feature_channels=8, head_filters=(8, 4), embedding_dim=4, epochs=1, batch_size=2, steps_per_epoch=2, eval_every=0
)


@pytest.fixture(scope="module")
def run_dir(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tiny_dataset, tmp_path_factory.mktemp("runs") / "run", QUICK.replace(score="product"))


@pytest.fixture(scope="module")
def exact_export(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export whose layer targets are exact (polygons with hidden instances)."""
    out = tmp_path_factory.mktemp("exports") / "coco"
    return export_coco(tiny_dataset, out, ExportConfig(segmentation="polygon", include_hidden=True))


def test_a_saved_model_carries_its_configs_and_predicts_with_one_call(run_dir: Path, tiny_dataset: Path) -> None:
    model = keras.saving.load_model(run_dir / "model.keras")
    assert isinstance(model, LayeredEmbeddingModel)
    assert model.train_config.inference.score == "product" and model.data_spec.layers == 3
    scene = model.scene_config
    assert (
        isinstance(scene, SceneConfig)
        and scene.class_names == SceneConfig.from_json((run_dir / "scene_config.json").read_text()).class_names
    )
    with open_dataset(tiny_dataset) as ds:
        images = ds.images[:4]
    records = model.predict_instances(images)
    assert {r["image_id"] for r in records} <= {1, 2, 3, 4}
    reference = predict_run(run_dir, tiny_dataset, run_dir.parent / "ref.json", limit=4, workers=1)
    assert json.loads(reference.read_text()) == records


def test_a_model_file_alone_or_a_folder_with_only_the_model_predicts(
    run_dir: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    alone = tmp_path / "copy.keras"
    alone.write_bytes((run_dir / "model.keras").read_bytes())
    folder = tmp_path / "model_only"
    folder.mkdir()
    (folder / "model.keras").write_bytes(alone.read_bytes())
    outputs = [
        predict_run(m, tiny_dataset, tmp_path / f"r{i}.json", limit=3, workers=1)
        for i, m in enumerate((run_dir, alone, folder))
    ]
    texts = {p.read_text() for p in outputs}
    assert len(texts) == 1


def test_predict_time_overrides_change_the_records(run_dir: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    base = json.loads(predict_run(run_dir, tiny_dataset, tmp_path / "a.json", limit=3, workers=1).read_text())
    by_class = json.loads(
        predict_run(run_dir, tiny_dataset, tmp_path / "b.json", limit=3, score="class", workers=1).read_text()
    )
    assert [r["segmentation"] for r in base] == [r["segmentation"] for r in by_class]
    assert all(p["score"] <= c["score"] + 1e-6 for p, c in zip(base, by_class, strict=True))  # product <= class
    with pytest.warns(ShapesgenNote, match="no instance was predicted in any image"):
        fewer = predict_run(run_dir, tiny_dataset, tmp_path / "c.json", limit=3, min_pixels=10**6, workers=1)
    assert json.loads(fewer.read_text()) == []


def test_a_shipped_model_is_found_by_name(
    run_dir: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pretrained, "PRETRAINED", tmp_path / "pretrained")
    (tmp_path / "pretrained").mkdir()
    folder = pretrained.package_run(
        run_dir,
        "tiny-test",
        "# tiny-test\n\nA model for tests.\n",
        {"AP": 0.0},
        score="completeness",
        small_clusters="merge",
        max_background=0.6,
    )
    assert pretrained.shipped_models() == ["tiny-test"]
    carried = keras.saving.load_model(folder / "model.keras").train_config.inference
    assert (carried.score, carried.small_clusters, carried.max_background) == ("completeness", "merge", 0.6)
    assert "SHA-256" in (folder / "MODEL_CARD.md").read_text()
    assert json.loads((folder / "metrics.json").read_text()) == {"AP": 0.0}
    out = tmp_path / "results.json"
    result = run_cli(
        "predict", "--model", "tiny-test", "--data", tiny_dataset, "--out", out, "--limit", "2", "--workers", "1", "-q"
    )
    assert result.exit_code == 0, result.stderr
    listed = run_cli("models")
    assert listed.exit_code == 0 and listed.stdout.startswith("tiny-test\t-\tA model for tests.")
    unknown = run_cli("predict", "--model", "no-such-model", "--data", tiny_dataset, "--out", tmp_path / "x.json")
    assert unknown.exit_code == 2 and "not a shipped model (shipped: tiny-test)" in unknown.stderr
    assert not (tmp_path / "x.json").exists()


def test_training_and_prediction_take_a_coco_export(
    exact_export: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []
    original = Trainer._step

    def recording_step(self: Trainer, batch: dict[str, Any]) -> Any:
        seen.append({k: np.asarray(v) for k, v in batch.items()})
        return original(self, batch)

    monkeypatch.setattr(Trainer, "_step", recording_step)
    monkeypatch.setattr(Trainer, "__init__", _eager(Trainer.__init__))
    from_export = train(exact_export, tmp_path / "export_run", QUICK)
    from_hdf5_targets, seen[:] = list(seen), []
    train(tiny_dataset, tmp_path / "hdf5_run", QUICK)
    assert len(seen) == len(from_hdf5_targets) == 2
    for a, b in zip(seen, from_hdf5_targets, strict=True):
        for key in a:
            assert np.array_equal(a[key], b[key]), key
    on_export = predict_run(from_export, exact_export, tmp_path / "e.json", limit=4, workers=1)
    on_hdf5 = predict_run(from_export, tiny_dataset, tmp_path / "h.json", limit=4, workers=1)
    assert on_export.read_text() == on_hdf5.read_text()


def _eager(init: Any) -> Any:
    """Trainer.__init__ with an eager step, so the recording wrapper sees concrete tensors."""

    def wrapped(self: Trainer, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.step = lambda batch: type(self)._step(self, batch)

    return wrapped


def test_batches_of_an_export_equal_those_of_its_source(exact_export: Path, tiny_dataset: Path) -> None:
    ours = list(file_batches(exact_export, 4, 3, 1, True))
    source = list(file_batches(tiny_dataset, 4, 3, 1, True))
    for a, b in zip(ours, source, strict=True):
        for key in a:
            assert np.array_equal(a[key], b[key]), key


def test_an_old_style_model_file_without_configs_is_refused_by_itself(run_dir: Path, tmp_path: Path) -> None:
    model = load_run(run_dir)[0]
    keras.Model(model.input, model.output).save(tmp_path / "plain.keras")  # as the previous train saved it
    with pytest.raises(DatasetError, match="does not carry its configs"):
        load_run(tmp_path / "plain.keras")


@pytest.mark.parametrize("name", pretrained.shipped_models())
def test_a_shipped_model_with_the_old_flat_config_loads_and_predicts_as_when_saved_nested(
    name: str, tmp_path: Path
) -> None:
    """A model file holding the flat train_config of before the split by concern (as the
    first shipped files did) loads with that config, and the model saved again (nested
    config) rebuilds the same layers and predicts the same records."""
    import zipfile

    shipped = pretrained.PRETRAINED / name / "model.keras"
    with zipfile.ZipFile(shipped) as archive:
        entries = {info.filename: archive.read(info.filename) for info in archive.infolist()}
    outer = json.loads(entries["config.json"])
    stored = outer["config"]["train_config"]
    if "model" in stored:  # saved nested: write the flat form an older file holds
        assert stored["optimiser"]["seed"] == stored["inference"]["seed"]
        stored = {key: value for concern in stored.values() for key, value in concern.items()}
        outer["config"]["train_config"] = stored
    assert "backbone" in stored and "model" not in stored
    entries["config.json"] = json.dumps(outer).encode()
    path = tmp_path / "flat.keras"
    with zipfile.ZipFile(path, "w") as archive:
        for entry, data in entries.items():
            archive.writestr(entry, data)
    model, config, scene = load_run(path)
    assert config == TrainConfig.from_dict(stored) and config.inference.score == stored["score"]
    assert config.model.backbone == stored["backbone"] and config.optimiser.seed == stored["seed"]
    assert config == load_run(shipped)[1]
    assert model.get_config()["train_config"] == config.to_dict()
    model.save(tmp_path / "again.keras")
    again = keras.saving.load_model(tmp_path / "again.keras")
    assert [w.path for w in again.weights] == [w.path for w in model.weights]
    images = np.stack([s.image for s in render_scenes(scene.replace(seed=5), range(2))])
    assert again.predict_instances(images) == model.predict_instances(images)


def test_models_lists_each_shipped_models_test_figures() -> None:
    from amodal_model import pretrained

    listed = run_cli("models")
    assert listed.exit_code == 0
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [row[0] for row in rows] == pretrained.shipped_models() and all(len(row) == 3 for row in rows)
    for name, figures, _ in rows:
        metrics = json.loads((pretrained.PRETRAINED / name / "metrics.json").read_text())
        assert figures == (f"test AP {metrics['all']['AP']:.4f}, AR heavy {metrics['bands']['heavy']['AR100']:.4f}")


def test_the_same_config_and_seed_train_a_byte_identical_model_file(tiny_dataset: Path, tmp_path: Path) -> None:
    """model.keras differed between two runs of one command (its save date and zip times)."""
    from conftest import quick_config

    config = quick_config().replace(epochs=2, eval_every=1, eval_scenes=2)
    first = train(tiny_dataset, tmp_path / "a", config, val=tiny_dataset)
    second = train(tiny_dataset, tmp_path / "b", config, val=tiny_dataset)
    for name in ("model.keras", "best.keras"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    model, saved, _ = load_run(first)
    assert saved == config and model.train_config == config
