"""Training data: batches from a shapesgen HDF5 file (or sharded dataset folder), a
COCO-amodal export, or scenes rendered on the fly.

HDF5 reads go in contiguous blocks of scenes (one decompression per chunk), shuffled
by block and within a block with a generator seeded by (seed, epoch), so an epoch's
order is reproducible.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from amodal_model.batching import Batch, blocked_batches
from amodal_model.coco_source import ANNOTATIONS, coco_batches, describe_coco_export, is_coco_export
from shapesgen import ShapesDataset, open_dataset, render_scenes
from shapesgen.config import SceneConfig, build_config
from shapesgen.errors import ConfigError, DatasetError, ShapesgenError, one_line, shown
from shapesgen.files import regular_input
from shapesgen.limits import check_scene_fits
from shapesgen.storage.manifest import VIRTUAL_FILE, is_sharded
from shapesgen.storage.reader import unfinished_sharded_render

if TYPE_CHECKING:
    import tensorflow as tf

LIVE_PREFIX = "render:"


@dataclass(frozen=True)
class Source:
    """Where training scenes come from: a data file (see :class:`DataFile`), or live
    renders of a config. ``notes`` are what training tells the user once it starts."""

    scene_config: SceneConfig
    path: Path | None = None
    num_scenes: int | None = None
    notes: tuple[str, ...] = ()

    @property
    def live(self) -> bool:
        return self.path is None


_LIVE_VALUE = re.compile(r"-?[0-9]{1,20}")
_LIVE_HELP = "use render:PRESET[,instances=N][,layers=L][,seed=S], each setting at most once"


def parse_live_spec(spec: str) -> SceneConfig:
    """``render:paper,instances=6,layers=2,seed=1`` -> a SceneConfig with a seed."""
    preset_name, *pairs = [part.strip() for part in spec[len(LIVE_PREFIX) :].split(",")]
    names = {"instances": "instances_per_class", "layers": "layers", "seed": "seed"}
    overrides: dict[str, int] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in names or not _LIVE_VALUE.fullmatch(value) or names[key] in overrides:
            raise ConfigError(f"train_source={shown(spec)} is invalid: {_LIVE_HELP}", param="train_source")
        overrides[names[key]] = int(value)
    if not preset_name:
        raise ConfigError(f"train_source={shown(spec)} is invalid: {_LIVE_HELP}", param="train_source")
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
    """A training source from an HDF5 file, a sharded dataset folder, a COCO-amodal
    export or a ``render:`` spec. An export with no annotated image is refused (it would
    train background only); one with some gets a note saying how many."""
    text = source_text(spec, "train_source")
    if text.startswith(LIVE_PREFIX):
        return Source(parse_live_spec(text))
    data = describe_file(text, "train_source")
    where = f"train_source={text!r}"
    if data.unannotated and data.unannotated == data.num_scenes:
        annotations = data.path / ANNOTATIONS if data.path.is_dir() else data.path
        raise DatasetError(
            f"{where}: {annotations} annotates no instance in any of its {data.num_scenes} images: "
            "training on it would learn background only; export the dataset again with its annotations",
            param="train_source",
        )
    notes = [data.note] if data.note is not None else []
    if data.unannotated:
        notes.append(
            f"{where}: {data.unannotated} of {data.num_scenes} images have no annotated instance: "
            "they train as background only"
        )
    return Source(data.scene_config, data.path, data.num_scenes, tuple(notes))


@dataclass(frozen=True)
class DataFile:
    """A checked data input (every check but the pixels done).

    ``path`` is what is read: an HDF5 file (for a sharded dataset folder, its
    ``dataset.h5``) or a COCO-amodal export (its folder or ``annotations.json``).
    ``folder`` is the folder the input is made of, if any (an export's or a sharded
    dataset's): outputs must stay out of it. ``dataset`` is the open HDF5 file when
    :func:`open_file` opened it, so it is read through one handle.
    """

    path: Path
    scene_config: SceneConfig
    num_scenes: int
    folder: Path | None = None
    unannotated: int = 0
    note: str | None = None
    dataset: ShapesDataset | None = field(default=None, compare=False, repr=False)

    @property
    def is_export(self) -> bool:
        return self.dataset is None and is_coco_export(self.path)

    def batches(
        self, batch_size: int, seed: int, epoch: int, shuffle: bool, limit: int | None = None, *, param: str
    ) -> Iterator[Batch]:
        """:func:`file_batches` of this input, through its open handle if it has one."""
        if self.is_export:
            return coco_batches(self.path, batch_size, seed, epoch, shuffle, limit, param=param)
        return hdf5_batches(self.path, batch_size, seed, epoch, shuffle, limit, param=param, dataset=self.dataset)


def dataset_file(path: Path, param: str) -> Path:
    """A sharded dataset folder's single-file view (its ``dataset.h5``); any other path as given."""
    if not is_sharded(path):
        return path
    virtual = path / VIRTUAL_FILE
    if not virtual.is_file():
        raise DatasetError(
            f"{param}={str(path)!r} is a sharded dataset without its {VIRTUAL_FILE}: rerun its render command "
            "to write it",
            param=param,
        )
    return virtual


def describe_file(spec: str | Path, param: str) -> DataFile:
    """The checked input of an HDF5 file, a sharded dataset folder or a COCO-amodal export
    (its folder or its ``annotations.json``); nothing is left open."""
    return _describe(spec, param, keep_open=False)


@contextmanager
def open_file(spec: str | Path, param: str) -> Iterator[DataFile]:
    """:func:`describe_file` with an HDF5 input kept open (``DataFile.dataset``) until the block ends."""
    data = _describe(spec, param, keep_open=True)
    try:
        yield data
    finally:
        if data.dataset is not None:
            data.dataset.close()


def _describe(spec: str | Path, param: str, keep_open: bool) -> DataFile:
    text = source_text(spec, param)
    given = Path(text)
    if is_sharded(given):
        return _hdf5(regular_input(dataset_file(given, param), param), param, given, keep_open)
    if (unfinished := unfinished_sharded_render(given, f"{param}={text!r}", param)) is not None:
        raise unfinished
    if is_coco_export(given):
        path = given if given.is_dir() else regular_input(text, param)
        summary = describe_coco_export(path, param)
        folder = path if path.is_dir() else path.parent
        return DataFile(path, summary.config, summary.num_scenes, folder, summary.unannotated, summary.note)
    path = regular_input(text, param)
    return _hdf5(path, param, path.parent if is_sharded(path.parent) else None, keep_open)


def _hdf5(path: Path, param: str, folder: Path | None, keep_open: bool) -> DataFile:
    with reading(path, param):
        ds = open_dataset(path)
    try:
        return DataFile(path, ds.config, len(ds), folder=folder, dataset=ds if keep_open else None)
    finally:
        if not keep_open:
            ds.close()


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
    dataset: ShapesDataset | None = None,
) -> Iterator[Batch]:
    """Numpy batches (images uint8, layers, class_layers, instance_classes, index), read
    through ``dataset`` (the open ``path``, left open) if given.

    A file that cannot be read (a corrupt chunk, tampered offsets) raises one
    :class:`DatasetError` naming it, whenever the damage is met.
    """
    opened = nullcontext(dataset) if dataset is not None else open_dataset(path)
    with reading(path, param), opened as ds:
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


def to_model_input(image: Any) -> Any:
    """uint8 images -> float32 [0, 255] tensors of the Keras backend; the model scales them itself."""
    import keras

    return keras.ops.cast(image, "float32")


def tf_dataset(batches: Iterator[Batch], config: SceneConfig) -> tf.data.Dataset:
    """Wrap a batch generator in tf.data with prefetching (TensorFlow imported here: reading
    data needs no backend)."""
    import tensorflow as tf

    s, m, layers, n = config.image_size, config.mask_size, config.layers, config.num_instances
    signature = {
        "image": tf.TensorSpec((None, s, s, config.channels), tf.uint8),
        "layers": tf.TensorSpec((None, layers, m, m), tf.int32),
        "class_layers": tf.TensorSpec((None, layers, m, m), tf.int32),
        "instance_classes": tf.TensorSpec((None, n + 1), tf.int32),
        "index": tf.TensorSpec((None,), tf.int64),
    }
    return tf.data.Dataset.from_generator(lambda: batches, output_signature=signature).prefetch(tf.data.AUTOTUNE)


def check_compatible(path: str | Path, scenes: SceneConfig, model_scenes: SceneConfig, param: str) -> None:
    """Refuse, in one line naming ``param``, scenes of ``path`` that a model trained on
    ``model_scenes`` cannot predict or be scored on: another image size or channel count
    (the network's input), other classes or mask size (its class ids and outputs)."""
    expected = (model_scenes.image_size, model_scenes.channels)
    if (scenes.image_size, scenes.channels) != expected:
        raise ConfigError(
            f"{param}={str(path)!r}: images are {scenes.image_size} px x {scenes.channels} channel(s), "
            f"the model takes {expected[0]} px x {expected[1]}",
            param=param,
        )
    if scenes.class_names != model_scenes.class_names or scenes.mask_size != model_scenes.mask_size:
        raise ConfigError(
            f"{param}={str(path)!r}: classes {list(scenes.class_names)} at {scenes.mask_size} px masks, but the "
            f"model was trained on {list(model_scenes.class_names)} at {model_scenes.mask_size} px: its class "
            "ids and mask size would not mean the same",
            param=param,
        )
