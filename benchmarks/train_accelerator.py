"""Train a preset for a wall-clock budget with ``Model.fit`` on any Keras backend, then
choose inference settings on a validation file and evaluate on test scenes.

    KERAS_BACKEND=jax python benchmarks/train_accelerator.py --preset paper --batch-size 16 \\
        --learning-rate 4e-4 --seconds 300 --val val6x2.h5 --test paper6_test.h5 --out gpu_run

Made for the paper's configuration (the aligned-Xception DeepLabV3+, 47 M parameters),
which a 2-core CPU cannot train, on a GPU lent for minutes: training scenes are rendered
on the fly by ``--render-workers`` processes from ``--instances``/``--layers``/``--seed``
of the paper preset (scene i of that config is the i-th image trained on), the learning
rate warms up and then follows a cosine over the time left (:mod:`amodal_model.fit`).
Then the model predicts the validation scenes once per ``--settings`` candidate (JSON
list of inference overrides), keeps the best by AP, and predicts and evaluates the test
scenes with it. Prints one JSON line per training chunk and per evaluation, and writes
``--out/metrics.json`` (training rows, chosen settings, validation and test metrics,
device, wall times) and ``--out/model.keras``. The settings and the validation and test
files are checked before training starts. Nothing is downloaded; the backbone trains from
scratch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from amodal_model.config import InferenceConfig, build_train_config
from amodal_model.data import check_compatible
from amodal_model.fit import FitBudget, RenderedBatches, fit_for
from amodal_model.inference import clusterer, default_workers
from shapesgen import open_dataset
from shapesgen.config import SceneConfig, build_config
from shapesgen.errors import ConfigError, ShapesgenError
from shapesgen.evaluate import evaluate, ground_truth_from_hdf5, paper_columns
from shapesgen.files import write_atomically


def _device() -> str:
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return f"jax {jax.__version__}: " + ", ".join(d.device_kind for d in jax.devices())
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return f"tensorflow {tf.__version__}: " + (", ".join(g.name for g in gpus) or platform.processor() or "CPU")
    return backend


def model_outputs(model: Any, path: Path, batch_size: int) -> tuple[dict[str, np.ndarray], int]:
    """The model's outputs for every scene of an HDF5 file (read ``batch_size`` images at a
    time), and their number."""
    parts: dict[str, list[np.ndarray]] = {}
    with open_dataset(path) as ds:
        count = len(ds)
        for start in range(0, count, batch_size):
            images = ds.images[start : start + batch_size].astype(np.float32)
            for key, value in model.predict_on_batch(images).items():
                parts.setdefault(key, []).append(np.asarray(value))
    return {key: np.concatenate(values) for key, values in parts.items()}, count


def checked_inputs(args: argparse.Namespace, scene: SceneConfig, inference: InferenceConfig) -> list[InferenceConfig]:
    """The inference candidates, and the validation and test files checked against the
    training scenes, before any training time is spent: a typo must not cost a GPU lease."""
    try:
        changes = json.loads(args.settings)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"settings={args.settings!r} is invalid: not JSON ({exc.msg})", param="settings") from None
    if not isinstance(changes, list) or not changes or not all(isinstance(c, dict) for c in changes):
        raise ConfigError(f"settings={args.settings!r} is invalid: must be a JSON list of objects", param="settings")
    candidates = [inference.replace(**change) for change in changes]
    for name, path in (("val", args.val), ("test", args.test)):
        with open_dataset(path) as ds:
            check_compatible(path, ds.config, scene, name)
    return candidates


def scored(
    outputs: dict[str, np.ndarray], count: int, truth: Any, settings: Any, workers: int
) -> tuple[dict[str, Any], int]:
    """Evaluate the clustering of ``outputs`` under ``settings``: metrics and detections."""
    with clusterer(settings, workers) as pool:
        records = pool.submit(outputs, range(count))()
    return evaluate(truth, records), len(records)


def row(metrics: dict[str, Any]) -> dict[str, Any]:
    """The paper's columns and ours (order accuracy, invisible-mask AP)."""
    out: dict[str, Any] = dict(paper_columns(metrics))
    order, invisible = metrics.get("occlusion_order") or {}, metrics.get("invisible") or {}
    out["order_accuracy"] = None if order.get("accuracy") is None else round(order["accuracy"], 4)
    out["invisible_AP"] = None if invisible.get("AP") is None else round(invisible["AP"], 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--instances", type=int, default=6)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1, help="seed of the training scenes")
    parser.add_argument("--image-size", type=int, default=None, help="default: the paper preset's")
    parser.add_argument("--mask-size", type=int, default=None, help="default: the paper preset's")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=4e-4)
    parser.add_argument("--precision", default=None, help="model precision (default: the preset's)")
    parser.add_argument("--seconds", type=float, required=True, help="training wall time, compilation included")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--chunk-steps", type=int, default=100)
    parser.add_argument("--warmup-chunks", type=int, default=2)
    parser.add_argument("--render-workers", type=int, default=max(1, default_workers() - 2))
    parser.add_argument("--cluster-workers", type=int, default=default_workers())
    parser.add_argument("--predict-batch", type=int, default=100)
    parser.add_argument("--val", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--settings", default="[{}]", help="JSON list of inference overrides to choose from")
    parser.add_argument("--out", type=Path, required=True, help="folder for metrics.json and model.keras")
    parser.add_argument("--no-save", action="store_true", help="do not save the trained model")
    args = parser.parse_args()
    try:
        run(args)
    except ShapesgenError as exc:  # one line, and the CLI's exit code: 2 for bad input, 1 for resources
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


def run(args: argparse.Namespace) -> None:
    """Train, choose the inference settings on validation, evaluate on test; write the figures."""
    started = time.perf_counter()
    import keras

    from amodal_model.model import DataSpec, build_model, compute_policy

    sizes = {"image_size": args.image_size, "mask_size": args.mask_size}
    scene = build_config(
        "paper",
        instances_per_class=args.instances,
        layers=args.layers,
        seed=args.seed,
        **{name: value for name, value in sizes.items() if value is not None},
    )
    config = build_train_config(
        args.preset, batch_size=args.batch_size, learning_rate=args.learning_rate, precision=args.precision
    )
    candidates = checked_inputs(args, scene, config.inference)
    keras.utils.set_random_seed(config.optimiser.seed)
    model = build_model(config, DataSpec.from_scene(scene), scene)
    ready = time.perf_counter()
    device = _device()
    print(json.dumps({"device": device, "backend": keras.backend.backend(), "parameters": model.count_params()}))
    budget = FitBudget(args.seconds, args.chunk_steps, args.warmup_chunks, max_images=args.max_images)
    with RenderedBatches(scene, args.batch_size, config.loss.visible_targets, args.render_workers) as rendered:
        rows = fit_for(
            model,
            iter(rendered),
            args.learning_rate,
            budget,
            args.batch_size,
            log=lambda r: print(json.dumps(r), flush=True),
        )
    trained = time.perf_counter()
    if not args.no_save:
        args.out.mkdir(parents=True, exist_ok=True)
        staged = args.out / f".model-{os.getpid()}.keras"  # renamed when whole: never a half-written model
        model.save(staged)
        staged.replace(args.out / "model.keras")
    outputs, count = model_outputs(model, args.val, args.predict_batch)
    truth = ground_truth_from_hdf5(args.val)
    chosen, best = candidates[0], -1.0
    validation = []
    for settings in candidates:
        metrics, detections = scored(outputs, count, truth, settings, args.cluster_workers)
        entry = {"settings": settings.to_dict(), **row(metrics), "detections": detections}
        validation.append(entry)
        print(json.dumps({"validation": entry}), flush=True)
        if metrics["all"]["AP"] > best:
            chosen, best = settings, metrics["all"]["AP"]
    outputs, count = model_outputs(model, args.test, args.predict_batch)
    test, detections = scored(outputs, count, ground_truth_from_hdf5(args.test), chosen, args.cluster_workers)
    summary = {
        "device": device,
        "backend": keras.backend.backend(),
        "precision": compute_policy(config.model),
        "parameters": model.count_params(),
        "train_config": json.loads(config.to_json()),  # its optimiser schedule and epochs are unused:
        "fit_budget": dataclasses.asdict(budget),  # the rate and its schedule are these
        "learning_rate": args.learning_rate,
        "scene_config": json.loads(scene.to_json()),
        "training": rows,
        "images_trained": rows[-1]["images"] if rows else 0,
        "setup_seconds": round(ready - started, 1),
        "training_seconds": round(trained - ready, 1),
        "validation": validation,
        "chosen_settings": chosen.to_dict(),
        "test": {**row(test), "detections": detections, "scenes": count},
        "test_metrics": test,
        "total_seconds": round(time.perf_counter() - started, 1),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps({"test": summary["test"]}), flush=True)
    write_atomically(args.out / "metrics.json", json.dumps(summary, indent=2, default=float).encode(), force=True)


if __name__ == "__main__":
    main()
