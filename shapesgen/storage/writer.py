"""Write a shapesgen HDF5 file: create its header and empty datasets, append encoded
batches in scene order, record the checksums. Layout and meaning come from
:mod:`shapesgen.storage.layout`; this module only moves bytes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from shapesgen.config import SceneConfig, StorageConfig
from shapesgen.errors import ConfigError, DatasetError
from shapesgen.splits import Split
from shapesgen.storage.digests import DigestChain, checksums
from shapesgen.storage.encode import EncodedBatch
from shapesgen.storage.layout import (
    DATASETS,
    FORMAT_NAME,
    FORMAT_VERSION,
    OFFSET_CHUNK,
    OFFSETS,
    PER_SCENE,
    VERTEX_CHUNK,
)
from shapesgen.storage.resume import Verify, reopen

FLUSH_EVERY_S = 2.0  # a hard kill loses at most this much work; Ctrl-C loses none


def _package_version() -> str:
    from shapesgen import __version__

    return __version__


class DatasetWriter:
    """Appends scenes, in index order, to a new or resumed file."""

    def __init__(
        self,
        path: Path,
        config: SceneConfig,
        storage: StorageConfig,
        num_scenes: int,
        progress: Callable[[int, int], None] | None = None,
        split: Split | None = None,
        first_scene: int = 0,
        created: str | None = None,
        flush_seconds: float = FLUSH_EVERY_S,
        *,
        verify: Verify,
    ) -> None:
        """An existing file is continued where it stopped (:func:`~shapesgen.storage.resume.reopen`,
        which checks a killed render's scenes with ``verify``; ``progress(done, total)`` reports them);
        ``split`` (resolved, its seed the config's) is recorded in a new file. A new file's
        record j holds scene ``first_scene + j`` (a shard of a sharded dataset) and records
        ``created`` (default: now) as its start time. The file is flushed after a batch once
        ``flush_seconds`` have passed since the last flush; 0 flushes after every batch, so
        the file's bytes do not depend on timing (HDF5 lays metadata out as it is flushed)."""
        self.path = path
        self.first_scene = first_scene
        self.created = created
        self.flush_seconds = flush_seconds
        self.closed = False
        if split is not None and split.seed != config.seed:
            raise ConfigError(f"seed={config.seed} is not the seed {split.seed} of split {split.name!r}")
        self.split = split
        if config.seed is None:
            raise ConfigError("seed=None is invalid here: a file records the seed it was rendered with")
        self.seed: int = config.seed
        self.config = config
        try:
            self.file = h5py.File(path, "a")
        except OSError as exc:
            raise DatasetError(f"{path}: cannot open for writing ({exc})") from None
        self.last_flush = time.monotonic()
        if "format" in self.file.attrs:
            self.chain = reopen(self.file, config, verify, progress)
            self.first_scene = int(self.file.attrs.get("first_scene", 0))
        else:
            self.chain = DigestChain()
            self._create(storage, num_scenes)
        self.file.attrs["clean_stop"] = False
        self.file.flush()

    def _create(self, storage: StorageConfig, num_scenes: int) -> None:
        config = self.config
        attrs = self.file.attrs
        attrs["format"] = FORMAT_NAME
        attrs["format_version"] = FORMAT_VERSION
        attrs["package_version"] = _package_version()
        attrs["config"] = config.to_json()
        attrs["storage"] = storage.to_json()
        attrs["seed"] = np.int64(self.seed)
        attrs["class_names"] = json.dumps(list(config.class_names))
        attrs["num_scenes"] = np.int64(num_scenes)
        attrs["scenes_written"] = np.int64(0)
        attrs["complete"] = False
        attrs["created"] = self.created or datetime.now(UTC).isoformat(timespec="seconds")
        attrs["checksums"] = "{}"
        attrs["split"] = self.split.to_json() if self.split is not None else "null"
        if self.first_scene:
            attrs["first_scene"] = np.int64(self.first_scene)
        gzip: dict[str, Any] = (
            {"compression": "gzip", "compression_opts": storage.compression_level} if storage.compression_level else {}
        )
        for field in DATASETS:
            record = field.record_shape(config)
            self.file.create_dataset(
                field.name,
                shape=(0, *record),
                maxshape=(None, *record),
                dtype=field.dtype,
                chunks=(field.scene_rows(config) if field.per_scene else VERTEX_CHUNK, *record),
                **gzip,
            )
        for name in OFFSETS:
            self.file.create_dataset(name, data=np.zeros(1, np.int64), maxshape=(None,), chunks=(OFFSET_CHUNK,))

    @property
    def scenes_written(self) -> int:
        return int(self.file.attrs["scenes_written"])

    def append(self, batch: EncodedBatch) -> None:
        """Write one encoded batch after everything already written."""
        written = self.scenes_written
        for field in PER_SCENE:
            dataset = self.file[field.name]
            rows = field.scene_rows(self.config)
            dataset.resize((written + batch.count) * rows, axis=0)
            zeros = (0,) * (dataset.ndim - 1)
            for j, chunk in enumerate(batch.chunks[field.name]):
                dataset.id.write_direct_chunk(((written + j) * rows, *zeros), chunk)
        for name, data in batch.vertex_rows.items():
            dataset = self.file[name]
            start = dataset.shape[0]
            dataset.resize(start + len(data), axis=0)
            dataset[start:] = data
        for name, counts in (("instance_offsets", batch.instance_counts), ("vertex_offsets", batch.vertex_counts)):
            dataset = self.file[name]
            base = dataset.shape[0]
            dataset.resize(base + len(counts), axis=0)
            dataset[base:] = int(dataset[base - 1]) + np.cumsum(counts)
        self.chain.extend(batch.digests)
        self.file.attrs["scenes_written"] = np.int64(written + batch.count)
        if time.monotonic() - self.last_flush >= self.flush_seconds:
            self.file.flush()
            self.last_flush = time.monotonic()

    def finish(self) -> None:
        """Record checksums and mark the file complete."""
        self.file.attrs["checksums"] = json.dumps(checksums(self.file, self.chain), sort_keys=True)
        self.file.attrs["complete"] = True
        self.file.flush()

    def close(self) -> None:
        """Mark the file as cleanly stopped and close it; once only. After a failed write
        (a full disk) the mark may fail too: the file is closed all the same, and a second
        call does nothing (HDF5 crashes the process when a file whose close failed is used)."""
        if self.closed:
            return
        self.closed = True
        if self.file.id.valid:
            try:
                self.file.attrs["clean_stop"] = True
            finally:
                self.file.close()
