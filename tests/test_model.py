"""The layered-embedding model at tiny sizes: build, serialise, loss, clustering, training."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from typer.testing import CliRunner

from amodal_model.cluster import cluster_instances, threshold_mean_shift
from amodal_model.config import TRAIN_PRESETS, LossConfig, TrainConfig
from amodal_model.loss import discriminative_loss, total_loss
from amodal_model.model import DataSpec, build_model
from amodal_model.train import train
from shapesgen import ConfigError, DatasetError, SceneConfig
from shapesgen.build import render_dataset
from shapesgen_cli.app import app

TINY = TRAIN_PRESETS["tiny"]
SMALL = TINY.replace(feature_channels=8, head_filters=(8, 4), embedding_dim=4)


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("backbone", ["tiny", "mobilenetv2"])
def test_model_builds_for_each_layer_count(layers: int, backbone: str) -> None:
    spec = DataSpec(image_size=64, channels=1, mask_size=16, layers=layers, num_classes=3)
    model = build_model(SMALL.replace(backbone=backbone), spec)
    out = model(np.zeros((2, 64, 64, 1), np.float32))
    assert out["semantic"].shape == (2, layers, 16, 16, 4)
    assert out["embedding"].shape == (2, layers, 16, 16, 4)
    assert np.allclose(out["semantic"].numpy().sum(-1), 1.0, atol=1e-5)


def test_paper_backbone_is_the_aligned_xception_deeplab() -> None:
    model = build_model(TrainConfig(), DataSpec(256, 1, 64, 2, 3))
    assert 40e6 < model.count_params() < 55e6  # the reference: about 47 M with the heads
    assert model.output["embedding"].shape[1:] == (2, 64, 64, 6)
    assert any(isinstance(layer, keras.layers.GroupNormalization) for layer in model.layers)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


GOLDEN_WEIGHTS = Path(__file__).parent / "golden" / "preset_weights.json"


@pytest.mark.parametrize("preset", sorted(TRAIN_PRESETS))
def test_each_preset_builds_the_weights_it_built_before_the_config_split(preset: str) -> None:
    """Every weight's name and shape, per preset, as the flat TrainConfig built them (3 layers,
    64 px): trained runs and shipped models keep loading into the same layers."""
    golden = json.loads(GOLDEN_WEIGHTS.read_text())[preset]
    model = build_model(TRAIN_PRESETS[preset], DataSpec(64, 1, 16, 3, 3))
    lines = [f"{w.path} {list(w.shape)}" for w in model.weights]
    assert model.name == golden["model_name"] and len(lines) == golden["weights"]
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == golden["sha256"]


def test_get_config_round_trip_and_save_load_give_identical_outputs(tmp_path: Path) -> None:
    model = build_model(SMALL, DataSpec(64, 1, 16, 2, 3))
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 1)).astype(np.float32)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert type(clone) is type(model) and clone.get_config() == model.get_config()
    assert model.get_config()["train_config"] == SMALL.to_dict()  # each concern nested under its name
    clone.set_weights(model.get_weights())
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    for other in (clone, loaded):
        for key in ("semantic", "embedding"):
            assert np.array_equal(model(x)[key].numpy(), other(x)[key].numpy())


def test_position_scale_adds_each_pixels_row_and_column_and_survives_saving(tmp_path: Path) -> None:
    spec = DataSpec(64, 1, 16, 2, 3)
    plain = build_model(SMALL, spec)
    placed = build_model(SMALL.replace(position_scale=4.0), spec)
    by_path = {w.path: w for w in plain.weights}
    assert sorted(by_path) == sorted(w.path for w in placed.weights)  # no weights of its own
    for weight in placed.weights:
        weight.assign(by_path[weight.path])
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 1)).astype(np.float32)
    added = placed(x)["embedding"].numpy() - plain(x)["embedding"].numpy()
    centres = (np.arange(16) + 0.5) * 4.0 / 16
    assert np.allclose(added[..., 0], centres[:, None], atol=1e-5)  # row, the same in every column and layer
    assert np.allclose(added[..., 1], centres[None, :], atol=1e-5)
    assert np.allclose(added[..., 2:], 0.0, atol=1e-6)
    placed.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.train_config.model.position_scale == 4.0
    assert np.array_equal(loaded(x)["embedding"].numpy(), placed(x)["embedding"].numpy())


def test_image_size_must_suit_the_network() -> None:
    with pytest.raises(ConfigError, match="multiple of 16"):
        build_model(SMALL, DataSpec(72, 1, 18, 2, 3))


def naive_push(mu: dict, present: list, pairs: list, group: dict, config: LossConfig, hinge: Any) -> float:
    """The distance term of one image over ``pairs``, members grouped by ``group``."""
    d = [hinge(2 * config.d_dist - np.abs(mu[a] - mu[c]).sum()) for a, c in pairs]
    if config.loss_normalisation == "mean":
        return float(np.mean(d)) if d else 0.0
    total = 0.0  # each group's pair sum / (n (n - 1) + 1), summed over the groups (classes, or all instances)
    for g in set(group.values()):
        members = [k for k in present if group[k] == g]
        n = len(members)
        total += sum(x for (a, _), x in zip(pairs, d, strict=True) if a in members) / (n * (n - 1) + 1)
    return total


def naive_loss(emb: np.ndarray, ids: np.ndarray, classes: np.ndarray, config: LossConfig) -> dict[str, float]:
    """Per image, per instance Python reference of the vectorised loss."""
    sq = config.hinge == "squared"
    hinge = (lambda v: max(v, 0.0) ** 2) if sq else (lambda v: max(v, 0.0))
    var, dist, reg = [], [], []
    for b in range(len(emb)):
        e, i = emb[b].reshape(-1, emb.shape[-1]), ids[b].ravel()
        present = [k for k in range(1, classes.shape[1]) if (i == k).any()]
        mu = {k: e[i == k].mean(0) for k in present}
        if config.pull_balance == "layers":  # each layer's mean pull, then the mean over the instance's layers
            per_layer = [
                (emb[b, layer].reshape(-1, emb.shape[-1]), ids[b, layer].ravel()) for layer in range(emb.shape[1])
            ]
            v = [
                np.mean(
                    [
                        np.mean([hinge(np.abs(p - mu[k]).sum() - config.d_var) for p in el[il == k]])
                        for el, il in per_layer
                        if (il == k).any()
                    ]
                )
                for k in present
            ]
        else:
            v = [np.mean([hinge(np.abs(p - mu[k]).sum() - config.d_var) for p in e[i == k]]) for k in present]
        pairs = [
            (a, c)
            for a in present
            for c in present
            if a != c and (config.distance_scope == "all" or classes[b, a] == classes[b, c])
        ]
        var.append(np.mean(v) if v else 0.0)
        group = {k: classes[b, k] if config.distance_scope == "class" else 0 for k in present}
        total = naive_push(mu, present, pairs, group, config, hinge)
        if config.distance_scope == "class" and config.cross_class_weight > 0:
            every = [(a, c) for a in present for c in present if a != c]
            total += config.cross_class_weight * naive_push(
                mu, present, every, dict.fromkeys(present, 0), config, hinge
            )
        dist.append(total)
        reg.append(np.mean([np.abs(mu[k]).sum() for k in present]) if present else 0.0)
    return {"variance": np.mean(var), "distance": np.mean(dist), "regularisation": np.mean(reg)}


@pytest.mark.parametrize("normalisation", ["reference", "mean"])
@pytest.mark.parametrize("hinge", ["squared", "linear"])
@pytest.mark.parametrize(("scope", "cross"), [("class", 0.0), ("all", 0.0), ("class", 0.3)])
@pytest.mark.parametrize("balance", ["pixels", "layers"])
def test_vectorised_loss_equals_the_per_instance_reference(
    hinge: str, scope: str, cross: float, normalisation: str, balance: str
) -> None:
    rng = np.random.default_rng(1)
    config = LossConfig(
        hinge=hinge,
        distance_scope=scope,
        loss_normalisation=normalisation,
        cross_class_weight=cross,
        pull_balance=balance,
    )
    emb = rng.normal(0, 1.5, (3, 2, 6, 6, 4)).astype(np.float32)
    ids = rng.integers(0, 6, (3, 2, 6, 6)).astype(np.int32)
    ids[2] = 0  # an image with no instance
    ids[1] = np.where(ids[1] > 0, 3, 0)  # an image with one instance
    classes = np.concatenate([np.zeros((3, 1), np.int32), rng.integers(1, 3, (3, 6)).astype(np.int32)], 1)
    ours = {
        k: float(v)
        for k, v in discriminative_loss(tf.constant(emb), tf.constant(ids), tf.constant(classes), config).items()
    }
    reference = naive_loss(emb, ids, classes, config)
    for key in reference:
        assert ours[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-6), key


def perfect_batch(spread: float) -> tuple[dict, dict]:
    """Two instances of one class per image, embeddings at their centres (+ noise)."""
    ids = np.zeros((2, 2, 8, 8), np.int32)
    ids[:, 0, :4] = 1
    ids[:, 0, 4:] = 2
    ids[:, 1, 2:6] = 1  # instance 1 continues under instance 2 in layer 2
    centres = np.array([[0, 0, 0], [0.0, 0.0, 0.0], [3.5, 0.0, 0.0]], np.float32)
    emb = centres[ids] + np.random.default_rng(0).normal(0, spread, ids.shape + (3,)).astype(np.float32)
    class_layers = np.where(ids > 0, 1, 0).astype(np.int32)
    semantic = np.eye(2, dtype=np.float32)[class_layers]
    classes = np.array([[0, 1, 1], [0, 1, 1]], np.int32)
    outputs = {"embedding": tf.constant(emb), "semantic": tf.constant(semantic)}
    targets = {
        "layers": tf.constant(ids),
        "class_layers": tf.constant(class_layers),
        "instance_classes": tf.constant(classes),
    }
    return outputs, targets


def test_loss_is_zero_for_perfect_separated_embeddings_and_positive_otherwise() -> None:
    config = LossConfig(reg_weight=0.0)
    outputs, targets = perfect_batch(0.0)
    terms = {k: float(v) for k, v in total_loss(outputs, targets, config).items()}
    assert terms["variance"] == 0 and terms["distance"] == 0
    assert terms["loss"] == pytest.approx(0.0, abs=1e-5)
    noisy, _ = perfect_batch(0.6)
    assert float(total_loss(noisy, targets, config)["variance"]) > 0
    close = dict(outputs, embedding=outputs["embedding"] * 0.3)
    assert float(total_loss(close, targets, config)["distance"]) > 0


@pytest.mark.parametrize("instances", [0, 1])
def test_gradient_is_finite_with_zero_or_one_instance(instances: int) -> None:
    model = build_model(SMALL, DataSpec(64, 1, 16, 2, 3))
    ids = np.zeros((2, 2, 16, 16), np.int32)
    if instances:
        ids[:, 0, 3:9, 3:9] = 1
    targets = {
        "layers": tf.constant(ids),
        "class_layers": tf.constant(np.minimum(ids, 1)),
        "instance_classes": tf.constant(np.array([[0, 1, 2], [0, 1, 2]], np.int32)),
    }
    with tf.GradientTape() as tape:
        loss = total_loss(model(np.zeros((2, 64, 64, 1), np.float32), training=True), targets, SMALL.loss)["loss"]
    grads = tape.gradient(loss, model.trainable_variables)
    assert np.isfinite(float(loss))
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)


def test_clustering_recovers_well_separated_instances_exactly() -> None:
    rng = np.random.default_rng(3)
    m = 12
    truth = np.zeros((2, m, m), np.int32)
    truth[0, :6] = 1
    truth[0, 6:] = 2
    truth[1, 3:9, :] = 1  # instance 1 is also in layer 2 (occluded part)
    truth[0, :, :2] = 3
    centres = np.array([[0, 0, 0, 0], [4, 0, 0, 0], [0, 4, 0, 0], [0, 0, 4, 0]], np.float32)
    embedding = centres[truth] + rng.uniform(-0.2, 0.2, truth.shape + (4,))
    classes = np.array([0, 1, 1, 2])[truth]
    semantic = np.eye(3)[classes] * 0.9 + 0.1 / 3
    found = cluster_instances(semantic, embedding, bandwidth=1.5, min_pixels=1, seed=0)
    expected = sorted((np.any(truth == k, axis=0).tobytes(), int(c)) for k, c in ((1, 1), (2, 1), (3, 2)))
    assert sorted((i.mask.tobytes(), i.class_id) for i in found) == expected
    assert all(0.9 < i.score <= 1.0 for i in found)
    again = cluster_instances(semantic, embedding, bandwidth=1.5, min_pixels=1, seed=0)
    assert [i.mask.tobytes() for i in again] == [i.mask.tobytes() for i in found]


def test_cluster_cap_leaves_noise_unlabelled() -> None:
    points = np.random.default_rng(0).uniform(-50, 50, (500, 6))
    labels = threshold_mean_shift(points, 1.5, np.random.default_rng(0), max_clusters=10, max_iterations=5)
    assert labels.max() == 9 and (labels < 0).sum() > 400


@pytest.fixture(scope="module")
def tiny_train_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train")
    config = SceneConfig(image_size=64, mask_size=16, instances_per_class=2, layers=2, seed=1)
    return (
        render_dataset(config, root / "train.h5", num_scenes=32),
        render_dataset(config.replace(seed=2), root / "val.h5", num_scenes=8),
    )


def test_short_training_lowers_the_loss_and_predictions_evaluate(tiny_train_data, tmp_path: Path) -> None:
    train_path, val_path = tiny_train_data
    config = SMALL.replace(epochs=4, eval_every=2, eval_scenes=8, batch_size=4)
    run_dir = train(train_path, tmp_path / "run", config, val=val_path)
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    header, values = rows[0].split(","), [r.split(",") for r in rows[1:]]
    losses = [float(v[header.index("loss")]) for v in values]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert values[1][header.index("AP")] != "" and values[0][header.index("AP")] == ""
    assert json.loads((run_dir / "train_config.json").read_text())["optimiser"]["epochs"] == 4
    assert list((run_dir / "tensorboard").iterdir())

    runner = CliRunner()
    results = tmp_path / "results.json"
    predicted = runner.invoke(
        app, ["predict", "--model", str(run_dir), "--data", str(val_path), "--out", str(results), "-q"]
    )
    assert predicted.exit_code == 0, predicted.output
    records = json.loads(results.read_text())
    assert all({"image_id", "category_id", "segmentation", "score"} <= set(r) for r in records)
    scored = runner.invoke(
        app, ["evaluate", "--gt", str(val_path), "--dt", str(results), "--json", str(tmp_path / "m.json")]
    )
    assert scored.exit_code == 0, scored.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["detections"] == len(records) and -1 <= metrics["all"]["AP"] <= 1


def test_resume_continues_from_the_checkpoint(tiny_train_data, tmp_path: Path) -> None:
    train_path, _ = tiny_train_data
    config = SMALL.replace(epochs=2, batch_size=8, eval_every=0)
    run_dir = train(train_path, tmp_path / "run", config)
    with pytest.raises(DatasetError, match="resume=True"):
        train(train_path, run_dir, config)
    with pytest.raises(ConfigError, match="trained with learning_rate=0.002, now learning_rate=0.5"):
        train(train_path, run_dir, config.replace(epochs=3, learning_rate=0.5), resume=True)
    train(train_path, run_dir, config.replace(epochs=3), resume=True)  # resuming may extend the schedule
    with pytest.raises(ConfigError, match="shapes"):
        train("render:paper,instances=2,layers=3", run_dir, config.replace(epochs=4), resume=True)
    epochs = [line.split(",")[0] for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2", "3"]


def test_live_training_renders_fresh_scenes(tmp_path: Path) -> None:
    config = SMALL.replace(epochs=1, steps_per_epoch=2, batch_size=2, eval_every=0)
    spec = "render:paper,instances=1,layers=2,seed=5"
    with pytest.raises(ConfigError, match="render:PRESET"):
        train("render:paper,colour=3", tmp_path / "bad", config)
    run_dir = train(spec, tmp_path / "live", config)
    scene = json.loads((run_dir / "scene_config.json").read_text())
    assert scene["instances_per_class"] == 1 and scene["seed"] == 5
    assert (run_dir / "model.keras").exists()


def test_layer_balanced_pull_weighs_an_instances_occluded_pixels_as_much_as_its_visible_ones() -> None:
    """Three visible pixels at the centre-ish, one occluded pixel far off: by pixels the far
    pixel is a quarter of the pull, by layers a half."""
    emb = np.zeros((1, 2, 1, 4, 1), np.float32)
    ids = np.zeros((1, 2, 1, 4), np.int32)
    ids[0, 0, 0, :3] = 1
    ids[0, 1, 0, 0] = 1
    emb[0, 1, 0, 0, 0] = 4.0  # the instance's mean is 1.0: visible pixels 1.0 away, the occluded one 3.0
    classes = np.array([[0, 1]], np.int32)
    pull = {
        balance: float(
            discriminative_loss(
                tf.constant(emb), tf.constant(ids), tf.constant(classes), LossConfig(d_var=0.5, pull_balance=balance)
            )["variance"]
        )
        for balance in ("pixels", "layers")
    }
    assert pull["pixels"] == pytest.approx((3 * 0.5**2 + 2.5**2) / 4)
    assert pull["layers"] == pytest.approx((0.5**2 + 2.5**2) / 2)


def naive_pixel_push(emb: np.ndarray, ids: np.ndarray, classes: np.ndarray, config: LossConfig) -> float:
    """Per image, per pixel Python reference of the pixel push."""
    hinge = (lambda v: max(v, 0.0) ** 2) if config.hinge == "squared" else (lambda v: max(v, 0.0))
    margin = 2 * config.d_dist - config.d_var
    images = []
    for b in range(len(emb)):
        e, i = emb[b].reshape(-1, emb.shape[-1]), ids[b].ravel()
        present = [k for k in range(1, classes.shape[1]) if (i == k).any()]
        mu = {k: e[i == k].mean(0) for k in present}

        def rival_weight(a: int, c: int, b: int = b) -> float:
            if config.distance_scope == "all":
                return 1.0
            return float(classes[b, a] == classes[b, c]) + config.cross_class_weight

        per_instance = [
            np.mean(
                [
                    sum(rival_weight(k, r) * hinge(margin - np.abs(p - mu[r]).sum()) for r in present if r != k)
                    for p in e[i == k]
                ]
            )
            for k in present
        ]
        images.append(np.mean(per_instance) if per_instance else 0.0)
    return float(np.mean(images))


@pytest.mark.parametrize("hinge", ["squared", "linear"])
@pytest.mark.parametrize(("scope", "cross"), [("class", 0.0), ("all", 0.0), ("class", 0.3)])
def test_pixel_push_equals_the_per_pixel_reference(hinge: str, scope: str, cross: float) -> None:
    rng = np.random.default_rng(2)
    config = LossConfig(hinge=hinge, distance_scope=scope, cross_class_weight=cross, pixel_push_weight=0.5)
    emb = rng.normal(0, 1.0, (3, 2, 5, 5, 3)).astype(np.float32)
    ids = rng.integers(0, 5, (3, 2, 5, 5)).astype(np.int32)
    ids[2] = 0  # an image with no instance
    ids[1] = np.where(ids[1] > 0, 2, 0)  # one instance: no rival, no push
    classes = np.concatenate([np.zeros((3, 1), np.int32), rng.integers(1, 3, (3, 5)).astype(np.int32)], 1)
    tensors = (tf.constant(emb), tf.constant(ids), tf.constant(classes))
    terms = discriminative_loss(*tensors, config)
    expected = naive_pixel_push(emb, ids, classes, config)
    assert expected > 0
    assert float(terms["pixel_push"]) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    off = discriminative_loss(*tensors, config.replace(pixel_push_weight=0))
    assert float(off["pixel_push"]) == 0.0
    for key in ("variance", "distance", "regularisation"):
        assert float(off[key]) == pytest.approx(float(terms[key]))


def test_the_pixel_push_enters_the_total_at_its_weight_and_its_flag_reaches_the_loss(tmp_path: Path) -> None:
    outputs, targets = perfect_batch(spread=2.5)  # pixels spread far enough to reach the other instance
    base = LossConfig()
    without = total_loss(outputs, targets, base)
    weighted = total_loss(outputs, targets, base.replace(pixel_push_weight=0.5))
    assert float(weighted["pixel_push"]) > 0
    added = float(weighted["loss"]) - float(without["loss"])  # float32 totals: compare to 1e-3
    assert added == pytest.approx(0.5 * float(weighted["pixel_push"]), rel=1e-3)
    args = ["train", "--train", "x.h5", "--out", str(tmp_path / "run"), "--pixel-push-weight", "-1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "--pixel-push-weight -1.0 is invalid" in result.stderr, result.output


def test_pixel_push_is_zero_for_pixels_out_of_every_rivals_reach_and_pulls_a_stray_pixel_back() -> None:
    """Two instances 4 apart with every pixel on its mean: no push. One pixel of instance 1
    moved halfway to instance 2: it is pushed, with a gradient towards its own side."""
    ids = np.zeros((1, 1, 1, 8), np.int32)
    ids[0, 0, 0, :4], ids[0, 0, 0, 4:] = 1, 2
    emb = np.where(ids[..., None] == 1, 0.0, 4.0).astype(np.float32)
    classes = np.array([[0, 1, 1]], np.int32)
    config = LossConfig(pixel_push_weight=1.0)
    settled = discriminative_loss(tf.constant(emb), tf.constant(ids), tf.constant(classes), config)
    assert float(settled["pixel_push"]) == 0
    emb[0, 0, 0, 0, 0] = 2.0
    stray = tf.Variable(emb)
    with tf.GradientTape() as tape:
        push = discriminative_loss(stray, tf.constant(ids), tf.constant(classes), config)["pixel_push"]
    assert float(push) > 0
    assert float(tape.gradient(push, stray)[0, 0, 0, 0, 0]) > 0  # descent moves it back towards 0
