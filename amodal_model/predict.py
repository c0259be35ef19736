"""Prediction: a trained run directory + images -> COCO results with amodal masks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from amodal_model.cluster import cluster_instances
from amodal_model.config import TrainConfig
from amodal_model.data import hdf5_batches, to_model_input
from shapesgen.coco import encode_rle
from shapesgen.config import SceneConfig
from shapesgen.errors import ConfigError, DatasetError
from shapesgen.files import write_atomically
from shapesgen.hdf5 import open_dataset

MODEL_FILE = "model.keras"
TRAIN_CONFIG_FILE = "train_config.json"
SCENE_CONFIG_FILE = "scene_config.json"


def load_run(run_dir: str | Path) -> tuple[keras.Model, TrainConfig, SceneConfig]:
    """The model and both configs saved by ``train``."""
    run_dir = Path(run_dir)
    model_path = run_dir / MODEL_FILE
    if not model_path.is_file():
        raise DatasetError(f"--model {run_dir}: no {MODEL_FILE} inside (is it a finished `shapesgen train` run?)")
    try:
        config = TrainConfig.from_dict(json.loads((run_dir / TRAIN_CONFIG_FILE).read_text()))
        scene = SceneConfig.from_json((run_dir / SCENE_CONFIG_FILE).read_text())
        model = keras.saving.load_model(model_path)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise DatasetError(f"--model {run_dir}: cannot load ({exc})") from None
    return model, config, scene


def infer_fn(model: keras.Model) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """A compiled forward pass in inference mode."""

    @tf.function(reduce_retracing=True)
    def forward(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return model(to_model_input(images), training=False)

    return forward


def results_for_batch(outputs: dict[str, np.ndarray], indices: np.ndarray, config: TrainConfig) -> list[dict[str, Any]]:
    """COCO result records for a batch of model outputs (image_id = scene index + 1)."""
    records = []
    for b, index in enumerate(indices.tolist()):
        instances = cluster_instances(
            outputs["semantic"][b],
            outputs["embedding"][b],
            bandwidth=config.bandwidth,
            min_pixels=config.min_pixels,
            max_clusters=config.max_clusters,
            max_iterations=config.max_iterations,
            seed=[config.seed, index],
        )
        masks = np.stack([i.mask for i in instances]) if instances else np.zeros((0, 1, 1), bool)
        for instance, rle in zip(instances, encode_rle(masks), strict=True):
            records.append(
                {
                    "image_id": index + 1,
                    "category_id": instance.class_id,
                    "segmentation": rle,
                    "score": round(instance.score, 6),
                }
            )
    return records


def predict_hdf5(
    model: keras.Model,
    config: TrainConfig,
    scene_config: SceneConfig,
    data: str | Path,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Predictions for the scenes of an HDF5 file (all, or the first ``limit``)."""
    with open_dataset(data) as ds:
        other = ds.config
        total = len(ds) if limit is None else min(limit, len(ds))
    expected = (scene_config.image_size, scene_config.channels)
    if (other.image_size, other.channels) != expected:
        raise ConfigError(
            f"--data {data}: images are {other.image_size} px x {other.channels} channel(s), "
            f"the model takes {expected[0]} px x {expected[1]}"
        )
    forward = infer_fn(model)
    records: list[dict[str, Any]] = []
    done = 0
    for batch in hdf5_batches(Path(data), batch_size, seed=0, epoch=0, shuffle=False, limit=total):
        outputs = {k: v.numpy() for k, v in forward(tf.constant(batch["image"])).items()}
        records.extend(results_for_batch(outputs, batch["index"], config))
        done += len(batch["index"])
        if progress:
            progress(done, total)
    return records


def write_results(records: list[dict[str, Any]], path: str | Path) -> Path:
    """COCO results JSON, written atomically."""
    return write_atomically(path, (json.dumps(records, separators=(",", ":")) + "\n").encode())


def predict_run(
    run_dir: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Load a run, predict an HDF5 file, write COCO results."""
    model, config, scene_config = load_run(run_dir)
    records = predict_hdf5(model, config, scene_config, data, limit=limit, batch_size=batch_size, progress=progress)
    return write_results(records, out)
