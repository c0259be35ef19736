"""Training with ``Model.fit`` (any Keras backend; TensorFlow here): the time-based schedule,
the loss the model computes for ``fit``, live-rendered batches, and the accelerator script."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest

from amodal_model.config import build_train_config
from amodal_model.data import live_batches, visible_targets
from amodal_model.fit import TARGET_KEYS, FitBudget, RenderedBatches, fit_for, learning_rate_at
from amodal_model.loss import total_loss
from amodal_model.model import DataSpec, build_model
from shapesgen.build import render_dataset
from shapesgen.config import build_config
from shapesgen.errors import ConfigError, ResourceError

ROOT = Path(__file__).resolve().parents[1]
SCENE = build_config("paper", instances_per_class=2, layers=2, seed=1, image_size=64, mask_size=16)
TINY = build_train_config("tiny", batch_size=2)


def test_the_rate_warms_up_then_follows_a_cosine_to_the_floor() -> None:
    budget = FitBudget(100.0, warmup_chunks=3, final_fraction=0.1)
    warm = [learning_rate_at(budget, 1.0, chunk, 0.0) for chunk in range(3)]
    assert warm == pytest.approx([0.25, 0.5, 0.75])
    progress = [budget.progress(t, 0, 20.0, 0) for t in (20.0, 60.0, 100.0, 150.0)]
    assert progress == pytest.approx([0.0, 0.5, 1.0, 1.0])
    assert [learning_rate_at(budget, 1.0, 3, p) for p in progress] == pytest.approx([1.0, 0.55, 0.1, 0.1])
    assert learning_rate_at(FitBudget(10.0, warmup_chunks=0), 2e-3, 0, 0.0) == pytest.approx(2e-3)


def test_the_decay_ends_with_the_image_budget_when_it_comes_first() -> None:
    budget = FitBudget(1000.0, max_images=1100)
    assert budget.progress(20.0, 600, 10.0, 100) == pytest.approx(0.5)  # by images; by time only 0.01
    assert budget.progress(990.0, 200, 10.0, 100) == pytest.approx(0.98 / 0.99, rel=1e-3)  # by time


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seconds", 0),
        ("seconds", math.inf),
        ("seconds", True),
        ("chunk_steps", 0),
        ("warmup_chunks", -1),
        ("final_fraction", 1.5),
        ("final_fraction", "0.1"),
        ("max_images", True),
    ],
)
def test_a_bad_budget_is_one_clear_error(field: str, value: object) -> None:
    kwargs: dict[str, object] = {"seconds": 10.0, field: value}
    with pytest.raises(ConfigError, match=f"^{field}=.* is invalid: must be"):
        FitBudget(**kwargs)  # type: ignore[arg-type]


def _batch() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    batch = visible_targets(next(live_batches(SCENE, 2, 0, 1)))
    return batch["image"].astype(np.float32), {key: batch[key] for key in TARGET_KEYS}


def _stream() -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    while True:
        yield _batch()


def test_the_fit_loss_is_the_training_loss_plus_the_l2_penalties() -> None:
    model = build_model(TINY, DataSpec.from_scene(SCENE), SCENE)
    images, targets = _batch()
    outputs = model(images, training=False)
    expected = float(total_loss(outputs, targets, TINY.loss)["loss"]) + float(sum(model.losses))
    assert model.losses  # the tiny preset has L2 on its convolutions
    assert float(model.compute_loss(images, targets, outputs)) == pytest.approx(expected, rel=1e-6)


def test_a_rate_set_between_chunks_is_the_one_the_next_chunk_uses() -> None:
    model = build_model(TINY, DataSpec.from_scene(SCENE), SCENE)
    stream = _stream()
    fit_for(model, stream, 0.0, FitBudget(1e9, chunk_steps=2, warmup_chunks=0, max_images=4), 2)
    before = [w.copy() for w in model.get_weights()]
    model.fit(stream, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)  # still at rate 0
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    model.optimizer.learning_rate = 1e-3
    model.fit(stream, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)
    assert not all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_fit_for_trains_on_rendered_scenes_until_the_image_budget() -> None:
    model = build_model(TINY, DataSpec.from_scene(SCENE), SCENE)
    rows_seen: list[dict[str, object]] = []
    budget = FitBudget(1e9, chunk_steps=3, warmup_chunks=1, max_images=10)
    with RenderedBatches(SCENE, 2, True, workers=1, ahead=4) as rendered:
        rows = fit_for(model, iter(rendered), 1e-3, budget, 2, log=rows_seen.append)
        assert rendered.images >= 10
    assert rows == rows_seen
    assert [r["images"] for r in rows] == [6, 10]  # the last chunk is cut to the budget
    assert rows[0]["learning_rate"] == pytest.approx(5e-4)  # one warm-up chunk: half the base rate
    assert all(math.isfinite(float(r["loss"])) for r in rows)  # type: ignore[arg-type]


def test_rendered_batches_are_the_live_scenes_in_order() -> None:
    with RenderedBatches(SCENE, 2, False, workers=2, first_index=4, ahead=3) as rendered:
        stream = iter(rendered)
        got = [next(stream) for _ in range(3)]
    expected = next(live_batches(SCENE, 6, 4, 1))
    images = np.concatenate([images for images, _ in got])
    assert images.dtype == np.float32
    assert np.array_equal(images, expected["image"].astype(np.float32))
    assert np.array_equal(np.concatenate([t["layers"] for _, t in got]), expected["layers"])


@pytest.mark.parametrize(("field", "kwargs"), [("workers", {"workers": 0}), ("ahead", {"workers": 1, "ahead": 0})])
def test_rendered_batches_refuse_a_bad_count(field: str, kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match=f"^{field}=0 is invalid: must be an integer >= 1"):
        RenderedBatches(SCENE, 2, True, **kwargs)


def test_a_rendering_worker_that_dies_ends_the_stream_with_one_error() -> None:
    with RenderedBatches(SCENE, 2, False, workers=1, ahead=2) as rendered:
        stream = iter(rendered)
        next(stream)
        for process in list(rendered.pool._processes.values()):
            process.kill()
        with pytest.raises(ResourceError, match="a rendering worker died"):
            for _ in range(10):
                next(stream)


def test_fit_for_refuses_a_bad_learning_rate() -> None:
    model = build_model(TINY, DataSpec.from_scene(SCENE), SCENE)
    with pytest.raises(ConfigError, match="^learning_rate=-0.001 is invalid: must be a finite number >= 0"):
        fit_for(model, _stream(), -1e-3, FitBudget(10.0), 2)


def test_the_accelerator_script_trains_chooses_settings_and_evaluates(tmp_path: Path) -> None:
    for name, seed, count in (("val.h5", 2, 4), ("test.h5", 3, 5)):
        scene = build_config("paper", instances_per_class=2, layers=2, seed=seed, image_size=64, mask_size=16)
        render_dataset(scene, tmp_path / name, num_scenes=count)
    settings = json.dumps([{}, {"bandwidth": 1.0}])
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "train_accelerator.py"),
        *("--preset", "tiny", "--instances", "2", "--batch-size", "2", "--seconds", "600", "--max-images", "4"),
        *("--chunk-steps", "1", "--render-workers", "1", "--cluster-workers", "1", "--predict-batch", "2"),
        *("--image-size", "64", "--mask-size", "16"),
        *("--val", str(tmp_path / "val.h5"), "--test", str(tmp_path / "test.h5"), "--settings", settings),
        *("--out", str(tmp_path / "run")),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["backend"] == keras.backend.backend()
    assert metrics["images_trained"] == 4 and len(metrics["training"]) == 2
    assert [v["settings"]["bandwidth"] for v in metrics["validation"]] == [1.5, 1.0]
    assert metrics["chosen_settings"] in [v["settings"] for v in metrics["validation"]]
    assert metrics["test"]["scenes"] == 5
    assert 0.0 <= metrics["test"]["AP"] <= 1.0
    assert metrics["test_metrics"]["ground_truth"]["images"] == 5
    assert metrics["training_seconds"] > 0 and metrics["setup_seconds"] > 0
    saved = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert saved.train_config.model.backbone == "tiny"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--settings", "[{"], "settings='\\[{' is invalid: not JSON"),
        (["--settings", '[{"bandwidth": -1}]'], "bandwidth=-1 is invalid"),
        (["--test", "missing.h5"], "missing.h5"),
        (
            ["--mask-size", "32"],
            r"val='.*val\.h5': classes .* at 16 px masks, but the model was trained on .* at 32 px",
        ),
    ],
)
def test_the_accelerator_script_checks_its_inputs_before_training(
    tmp_path: Path, change: list[str], message: str
) -> None:
    scene = build_config("paper", instances_per_class=2, layers=2, seed=2, image_size=64, mask_size=16)
    render_dataset(scene, tmp_path / "val.h5", num_scenes=2)
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "train_accelerator.py"),
        *("--preset", "tiny", "--instances", "2", "--seconds", "600", "--image-size", "64", "--mask-size", "16"),
        *("--val", str(tmp_path / "val.h5"), "--test", str(tmp_path / "val.h5"), "--out", str(tmp_path / "run")),
        *change,
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert re.search(message, done.stderr.strip().splitlines()[-1]), done.stderr[-500:]
    assert not (tmp_path / "run").exists()
