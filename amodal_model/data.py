"""Training data: batches from a shapesgen HDF5 file or scenes rendered on the fly.

HDF5 reads go in contiguous blocks of scenes (one decompression per chunk), shuffled
by block and within a block with a generator seeded by (seed, epoch), so an epoch's
order is reproducible.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from amodal_model.batching import Batch, blocked_batches
from amodal_model.coco_source import coco_batches, is_coco_export, open_coco_export
from shapesgen import open_dataset
from shapesgen.config import SceneConfig, build_config
from shapesgen.errors import ConfigError, DatasetError, ShapesgenError, one_line, shown
from shapesgen.files import regular_input
from shapesgen.limits import check_scene_fits
from shapesgen.scene import render_scenes

LIVE_PREFIX = "render:"


@dataclass(frozen=True)
class Source:
    """Where training scenes come from: an HDF5 file, or live renders of a config."""

    scene_config: SceneConfig
    path: Path | None = None
    num_scenes: int | None = None

    @property
    def live(self) -> bool:
        return self.path is None


_LIVE_VALUE = re.compile(r"-?[0-9]{1,20}")
_LIVE_HELP = "use render:PRESET[,instances=N][,layers=L][,seed=S]"


def parse_live_spec(spec: str) -> SceneConfig:
    """``render:paper,instances=6,layers=2,seed=1`` -> a SceneConfig with a seed."""
    body = spec[len(LIVE_PREFIX) :]
    preset_name, *pairs = [p.strip() for p in body.split(",") if p.strip()] or ["paper"]
    names = {"instances": "instances_per_class", "layers": "layers", "seed": "seed"}
    overrides: dict[str, int] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in names or not _LIVE_VALUE.fullmatch(value):
            raise ConfigError(f"train_source={shown(spec)} is invalid: {_LIVE_HELP}", param="train_source")
        overrides[names[key]] = int(value)
    try:
        config = build_config(preset_name, **overrides)  # type: ignore[arg-type]
        check_scene_fits(config)  # the same limits as `render`: refused now, not after minutes of rendering
    except ConfigError as exc:
        raise ConfigError(f"train_source={shown(spec)}: {exc}", param="train_source") from None
    return config if config.seed is not None else config.replace(seed=0)


def source_text(spec: object, param: str) -> str:
    """A path or spec given as ``str`` or path-like, as text; anything else is a ConfigError."""
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{param}={shown(spec)} is invalid: give a file path", param=param)
    return spec


@contextmanager
def reading(path: Path, param: str) -> Iterator[None]:
    """Turn a failure to read a shapesgen file (h5py's ``OSError``/``RuntimeError``; the
    reader's own checks already raise :class:`DatasetError`) into one
    :class:`DatasetError` naming it and carrying ``param``."""
    try:
        yield
    except ShapesgenError as exc:
        exc.param = param
        raise
    except (OSError, RuntimeError) as exc:  # h5py's errors for bytes it cannot read; code bugs stay bugs
        reason = one_line(str(exc)) or type(exc).__name__
        raise DatasetError(
            f"{param}={str(path)!r}: cannot read ({reason}); check it with `shapesgen validate {path}`",
            param=param,
        ) from None


def open_source(spec: str | Path) -> Source:
    """A training source from an HDF5 path, a COCO-amodal export or a ``render:`` spec."""
    text = source_text(spec, "train_source")
    if text.startswith(LIVE_PREFIX):
        return Source(parse_live_spec(text))
    path, config, count = describe_file(text, "train_source")
    return Source(config, path, count)


def describe_file(spec: str | Path, param: str) -> tuple[Path, SceneConfig, int]:
    """The checked path, scene config and scene count of an HDF5 file or a COCO-amodal
    export (its folder or its ``annotations.json``)."""
    text = source_text(spec, param)
    if is_coco_export(Path(text)):
        path = Path(text)
        if not path.is_dir():
            path = regular_input(text, param)
        config, count = open_coco_export(path, param)
        return path, config, count
    path = regular_input(text, param)
    with reading(path, param), open_dataset(path) as ds:
        return path, ds.config, len(ds)


def file_batches(
    path: Path,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool,
    limit: int | None = None,
    *,
    param: str = "train_source",
) -> Iterator[Batch]:
    """:func:`hdf5_batches`, or :func:`~amodal_model.coco_source.coco_batches` for an export."""
    read = coco_batches if is_coco_export(path) else hdf5_batches
    return read(path, batch_size, seed, epoch, shuffle, limit, param=param)


def scene_targets(table_class_ids: np.ndarray) -> np.ndarray:
    """Class of each instance id (index 0 = background) from class-major class ids."""
    return np.concatenate([[0], table_class_ids]).astype(np.int32)


def _check_ids(block: Batch, num_instances: int, path: Path, start: int, param: str) -> None:
    """Ids and classes the model indexes with must be in range; only a hand-edited file
    breaks this (the reader checks structure, not every value)."""
    worst = int(block["layers"].max(initial=0))
    classes = int(block["instance_classes"].max(initial=0))
    if worst > num_instances or int(block["class_layers"].max(initial=0)) > classes:
        raise DatasetError(
            f"{param}={str(path)!r}: scenes from {start}: stored ids are out of range (layer id {worst} of "
            f"{num_instances} instances); check it with `shapesgen validate {path}`",
            param=param,
        )


def hdf5_batches(
    path: Path,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool,
    limit: int | None = None,
    *,
    param: str = "train_source",
) -> Iterator[Batch]:
    """Numpy batches (images uint8, layers, class_layers, instance_classes, index).

    A file that cannot be read (a corrupt chunk, tampered offsets) raises one
    :class:`DatasetError` naming it, whenever the damage is met.
    """
    with reading(path, param), open_dataset(path) as ds:
        total = len(ds) if limit is None else min(limit, len(ds))
        n = ds.config.num_instances

        def read_block(start: int, stop: int) -> Batch:
            block = {
                "image": ds.images[start:stop],
                "layers": ds.layers[start:stop].astype(np.int32),
                "class_layers": ds.class_layers[start:stop].astype(np.int32),
                "instance_classes": np.concatenate(
                    [
                        np.zeros((stop - start, 1), np.int32),
                        ds.instances[int(ds.instance_offsets[start]) : int(ds.instance_offsets[stop])]["class_id"]
                        .reshape(stop - start, n)
                        .astype(np.int32),
                    ],
                    axis=1,
                ),
                "index": np.arange(start, stop, dtype=np.int64),
            }
            _check_ids(block, n, path, start, param)
            return block

        yield from blocked_batches(total, read_block, batch_size, seed, epoch, shuffle)


def live_batches(config: SceneConfig, batch_size: int, first_index: int, count: int) -> Iterator[Batch]:
    """Batches of freshly rendered scenes ``first_index ..`` (the paper trained this way)."""
    for b in range(count):
        start = first_index + b * batch_size
        scenes = render_scenes(config, range(start, start + batch_size))
        yield {
            "image": np.stack([s.image for s in scenes]),
            "layers": np.stack([s.layers for s in scenes]).astype(np.int32),
            "class_layers": np.stack([s.class_layers for s in scenes]).astype(np.int32),
            "instance_classes": np.stack([scene_targets(s.instances["class_id"]) for s in scenes]),
            "index": np.array([s.index for s in scenes], dtype=np.int64),
        }


def visible_targets(batch: Batch) -> Batch:
    """Training targets with every instance that has no visible pixel made background.

    The paper counts an instance only where part of it is visible, and the reference
    trains hidden ones as background; the dataset's own layer maps stay exact.
    """
    layers = batch["layers"]
    count = len(layers)
    slots = batch["instance_classes"].shape[1]
    visible = np.zeros((count, slots), dtype=bool)
    rows = np.broadcast_to(np.arange(count)[:, None, None], layers[:, 0].shape)
    visible[rows, layers[:, 0]] = True
    visible[:, 0] = False
    keep = visible[np.arange(count)[:, None, None, None], layers]
    return {**batch, "layers": np.where(keep, layers, 0), "class_layers": np.where(keep, batch["class_layers"], 0)}


def to_model_input(image: np.ndarray | tf.Tensor) -> tf.Tensor:
    """uint8 images -> float32 [0, 255]; the model scales them itself."""
    return tf.cast(image, tf.float32)


def tf_dataset(batches: Iterator[Batch], config: SceneConfig) -> tf.data.Dataset:
    """Wrap a batch generator in tf.data with prefetching."""
    s, m, layers, n = config.image_size, config.mask_size, config.layers, config.num_instances
    signature = {
        "image": tf.TensorSpec((None, s, s, config.channels), tf.uint8),
        "layers": tf.TensorSpec((None, layers, m, m), tf.int32),
        "class_layers": tf.TensorSpec((None, layers, m, m), tf.int32),
        "instance_classes": tf.TensorSpec((None, n + 1), tf.int32),
        "index": tf.TensorSpec((None,), tf.int64),
    }
    return tf.data.Dataset.from_generator(lambda: batches, output_signature=signature).prefetch(tf.data.AUTOTUNE)
