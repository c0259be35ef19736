"""HDF5 storage: an appending writer and a lazy, indexable reader.

Layout and meaning come from :mod:`shapesgen.schema`; this module only moves bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from shapesgen.config import SceneConfig, StorageConfig
from shapesgen.errors import ConfigError, DatasetError
from shapesgen.scene import Scene
from shapesgen.schema import DATASETS, FORMAT_NAME, FORMAT_VERSION, OFFSETS

VERTEX_CHUNK = 4096
OFFSET_CHUNK = 1024
HASH_SLICE = 256


def _package_version() -> str:
    from shapesgen import __version__

    return __version__


class DatasetWriter:
    """Appends scenes, in index order, to a new or resumed file."""

    def __init__(self, path: Path, config: SceneConfig, storage: StorageConfig, num_scenes: int) -> None:
        self.path = path
        self.config = config
        try:
            self.file = h5py.File(path, "a")
        except OSError as exc:
            raise DatasetError(f"{path}: cannot open for writing ({exc})") from None
        self.hashers = {name: hashlib.sha256() for name in [f.name for f in DATASETS] + list(OFFSETS)}
        if "format" in self.file.attrs:
            self._reopen()
        else:
            self._create(storage, num_scenes)

    def _create(self, storage: StorageConfig, num_scenes: int) -> None:
        config = self.config
        attrs = self.file.attrs
        attrs["format"] = FORMAT_NAME
        attrs["format_version"] = FORMAT_VERSION
        attrs["package_version"] = _package_version()
        attrs["config"] = config.to_json()
        attrs["storage"] = storage.to_json()
        attrs["seed"] = np.int64(config.seed)
        attrs["class_names"] = json.dumps(list(config.class_names))
        attrs["num_scenes"] = np.int64(num_scenes)
        attrs["scenes_written"] = np.int64(0)
        attrs["complete"] = False
        attrs["created"] = datetime.now(UTC).isoformat(timespec="seconds")
        attrs["checksums"] = "{}"
        gzip: dict[str, Any] = (
            {"compression": "gzip", "compression_opts": storage.compression_level} if storage.compression_level else {}
        )
        per_axis = {"scene": 1, "instance": config.num_instances, "vertex": VERTEX_CHUNK}
        for field in DATASETS:
            record = field.record_shape(config)
            self.file.create_dataset(
                field.name,
                shape=(0, *record),
                maxshape=(None, *record),
                dtype=field.dtype,
                chunks=(per_axis[field.axis], *record),
                **gzip,
            )
        for name in OFFSETS:
            self.file.create_dataset(name, data=np.zeros(1, np.int64), maxshape=(None,), chunks=(OFFSET_CHUNK,))
        for name in OFFSETS:
            self.hashers[name].update(np.zeros(1, np.int64).tobytes())

    def _reopen(self) -> None:
        """Drop anything past the last complete batch and re-hash what is kept."""
        written = self.scenes_written
        instances = int(self.file["instance_offsets"][written])
        vertices = int(self.file["vertex_offsets"][instances])
        lengths = {"scene": written, "instance": instances, "vertex": vertices}
        for field in DATASETS:
            dataset = self.file[field.name]
            dataset.resize(lengths[field.axis], axis=0)
        self.file["instance_offsets"].resize(written + 1, axis=0)
        self.file["vertex_offsets"].resize(instances + 1, axis=0)
        for name, hasher in self.hashers.items():
            dataset = self.file[name]
            for start in range(0, dataset.shape[0], HASH_SLICE * 64):
                hasher.update(np.ascontiguousarray(dataset[start : start + HASH_SLICE * 64]).tobytes())

    @property
    def scenes_written(self) -> int:
        return int(self.file.attrs["scenes_written"])

    def append(self, batch: dict[str, np.ndarray]) -> None:
        """Write one batch (see :func:`stack_scenes`) after everything already written."""
        written = self.scenes_written
        instance_base = int(self.file["instance_offsets"][-1])
        vertex_base = int(self.file["vertex_offsets"][-1])
        batch = dict(batch)
        batch["instance_offsets"] = batch["instance_offsets"] + instance_base
        batch["vertex_offsets"] = batch["vertex_offsets"] + vertex_base
        for name, data in batch.items():
            dataset = self.file[name]
            start = dataset.shape[0]
            dataset.resize(start + len(data), axis=0)
            dataset[start:] = data
            self.hashers[name].update(np.ascontiguousarray(data).tobytes())
        self.file.attrs["scenes_written"] = np.int64(written + len(batch["images"]))
        self.file.flush()

    def finish(self) -> None:
        """Record checksums and mark the file complete."""
        sums = {name: hasher.hexdigest() for name, hasher in sorted(self.hashers.items())}
        self.file.attrs["checksums"] = json.dumps(sums, sort_keys=True)
        self.file.attrs["complete"] = True
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def stack_scenes(scenes: Sequence[Scene]) -> dict[str, np.ndarray]:
    """One batch of scenes as dataset-name -> rows; offsets exclude the leading 0."""
    counts = np.array([len(s.instances) for s in scenes], dtype=np.int64)
    vertex_counts = np.concatenate([np.diff(s.vertex_offsets) for s in scenes])
    return {
        "images": np.stack([s.image for s in scenes]),
        "layers": np.stack([s.layers for s in scenes]),
        "class_layers": np.stack([s.class_layers for s in scenes]),
        "amodal_masks": np.concatenate([s.amodal_masks for s in scenes]),
        "visible_masks": np.concatenate([s.visible_masks for s in scenes]),
        "instances": np.concatenate([s.instances for s in scenes]),
        "vertices": np.concatenate([s.vertices for s in scenes]),
        "instance_offsets": np.cumsum(counts),
        "vertex_offsets": np.cumsum(vertex_counts),
    }


class ShapesDataset:
    """A read-only view of a shapesgen HDF5 file; scenes are read on access.

    ``dataset[i]`` is a :class:`Scene`; the h5py datasets are exposed as attributes
    (``images``, ``layers``, ...) for fast batch reads.
    """

    def __init__(self, path: str | Path, *, allow_incomplete: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DatasetError(f"{self.path}: no such file")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as exc:
            raise DatasetError(f"{self.path}: not a readable HDF5 file ({exc})") from None
        try:
            self._check_header(allow_incomplete)
        except Exception:
            self.file.close()
            raise

    def _check_header(self, allow_incomplete: bool) -> None:
        attrs = self.file.attrs
        if attrs.get("format") != FORMAT_NAME:
            raise DatasetError(f"{self.path}: not a shapesgen dataset (attribute format != '{FORMAT_NAME}')")
        version = str(attrs.get("format_version", ""))
        if version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
            raise DatasetError(
                f"{self.path}: format_version {version!r} is not readable by this shapesgen "
                f"(reads {FORMAT_VERSION.split('.')[0]}.x)"
            )
        missing = [name for name in [f.name for f in DATASETS] + list(OFFSETS) if name not in self.file]
        if missing:
            raise DatasetError(f"{self.path}: corrupt shapesgen dataset, missing datasets {missing}")
        try:
            self.config = SceneConfig.from_json(str(attrs["config"]))
        except (KeyError, ConfigError) as exc:
            raise DatasetError(f"{self.path}: corrupt config attribute ({exc})") from None
        if not allow_incomplete and not bool(attrs.get("complete", False)):
            raise DatasetError(
                f"{self.path}: incomplete render ({int(attrs.get('scenes_written', 0))} of "
                f"{int(attrs.get('num_scenes', 0))} scenes); resume it with `shapesgen render --resume`"
            )
        self.storage = json.loads(str(attrs.get("storage", "{}")))
        self.checksums: dict[str, str] = json.loads(str(attrs.get("checksums", "{}")))
        self.images = self.file["images"]
        self.layers = self.file["layers"]
        self.class_layers = self.file["class_layers"]
        self.amodal_masks = self.file["amodal_masks"]
        self.visible_masks = self.file["visible_masks"]
        self.instances = self.file["instances"]
        self.vertices = self.file["vertices"]
        self.instance_offsets = self.file["instance_offsets"][:]
        self.vertex_offsets = self.file["vertex_offsets"]

    @property
    def attrs(self) -> dict[str, Any]:
        return {key: self.file.attrs[key] for key in sorted(self.file.attrs)}

    @property
    def seed(self) -> int:
        return int(self.file.attrs["seed"])

    @property
    def class_names(self) -> list[str]:
        return list(json.loads(str(self.file.attrs["class_names"])))

    @property
    def complete(self) -> bool:
        return bool(self.file.attrs["complete"])

    def __len__(self) -> int:
        return int(self.file.attrs["scenes_written"])

    def instance_rows(self, index: int) -> slice:
        """Rows of scene ``index`` in the per-instance datasets."""
        return slice(int(self.instance_offsets[index]), int(self.instance_offsets[index + 1]))

    def __getitem__(self, index: int) -> Scene:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"scene index must be an integer, got {type(index).__name__}")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"scene {index} out of range for a dataset of {n} scenes")
        index = int(index) % n
        rows = self.instance_rows(index)
        vertex_offsets = self.vertex_offsets[rows.start : rows.stop + 1]
        return Scene(
            index=index,
            image=self.images[index],
            layers=self.layers[index],
            class_layers=self.class_layers[index],
            amodal_masks=self.amodal_masks[rows],
            visible_masks=self.visible_masks[rows],
            instances=self.instances[rows],
            vertices=self.vertices[int(vertex_offsets[0]) : int(vertex_offsets[-1])],
            vertex_offsets=vertex_offsets - vertex_offsets[0],
        )

    def __iter__(self) -> Iterator[Scene]:
        for index in range(len(self)):
            yield self[index]

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> ShapesDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_dataset(path: str | Path, *, allow_incomplete: bool = False) -> ShapesDataset:
    """Open a shapesgen HDF5 file for reading (lazy; use as a context manager)."""
    return ShapesDataset(path, allow_incomplete=allow_incomplete)
