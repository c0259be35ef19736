"""Write a shapesgen HDF5 file: create its header and empty datasets, append encoded
batches in scene order, record the checksums. Layout and meaning come from
:mod:`shapesgen.storage.layout`; this module only moves bytes."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from shapesgen.config import SceneConfig, StorageConfig
from shapesgen.errors import ConfigError, DatasetError
from shapesgen.limits import WRITE_HEADROOM_BYTES, batch_scenes_for, free_bytes, size_text
from shapesgen.splits import Split
from shapesgen.storage.digests import DigestChain, checksums, scene_digests
from shapesgen.storage.encode import EncodedBatch, stored_chunk
from shapesgen.storage.layout import (
    DATASETS,
    FORMAT_NAME,
    FORMAT_VERSION,
    OFFSET_CHUNK,
    OFFSETS,
    PER_SCENE,
    VERTEX_CHUNK,
)
from shapesgen.storage.resume import TORN, Verify, reopen

STOPPED_CHECKSUMS = "stopped_checksums"  # a cleanly stopped partial file's checksums (layout.ROOT_ATTRIBUTES)


class UnreadableScenes(DatasetError):
    """Stored scenes of a file being resumed no longer decode."""


def rebuild_path(path: Path) -> Path:
    """Where a resumed file is rebuilt before it replaces ``path``."""
    return path.with_name(path.name + ".rebuild")


def stored_batch(
    file: h5py.File, config: SceneConfig, offsets: np.ndarray, vertex_offsets: np.ndarray, lo: int, hi: int
) -> EncodedBatch:
    """Scenes ``lo..hi-1`` of a written file as the encoded batch that wrote them: its
    compressed chunks as stored, its rows, counts and digests (given the file's offsets)."""
    rows = slice(int(offsets[lo]), int(offsets[hi]))
    chunks: dict[str, list[bytes]] = {}
    for field in PER_SCENE:
        dataset, per = file[field.name], field.scene_rows(config)
        zeros = (0,) * (dataset.ndim - 1)
        chunks[field.name] = [dataset.id.read_direct_chunk((j * per, *zeros))[1] for j in range(lo, hi)]
    digests: dict[str, list[bytes]] = {field.name: [] for field in DATASETS}
    for scene in scene_digests(file, offsets, vertex_offsets, range(lo, hi)):
        for name, value in scene.items():
            digests[name].append(value)
    vertex_rows = slice(int(vertex_offsets[rows.start]), int(vertex_offsets[rows.stop]))
    return EncodedBatch(
        count=hi - lo,
        chunks=chunks,
        digests=digests,
        vertex_rows={f.name: file[f.name][vertex_rows] for f in DATASETS if not f.per_scene},
        instance_counts=np.diff(offsets[lo : hi + 1]),
        vertex_counts=np.diff(vertex_offsets[rows.start : rows.stop + 1]),
    )


def _package_version() -> str:
    from shapesgen import __version__

    return __version__


class NoSpace(OSError):
    """A write refused before it started: the disk cannot hold it (``strerror`` says how much)."""


def check_space(path: Path, batch: EncodedBatch) -> None:
    """Refuse (:class:`NoSpace`, an ``OSError`` ENOSPC) a batch the disk of ``path`` cannot hold with
    ``WRITE_HEADROOM_BYTES`` to spare: a write that fails half-way in HDF5 leaves the file
    unable to close, and h5py then crashes the process when it frees the file."""
    free = free_bytes(path.parent)
    if free is None:
        return
    need = batch.stored_bytes
    if need + WRITE_HEADROOM_BYTES > free:
        detail = f"{size_text(need)} to write, {size_text(free)} free"
        raise NoSpace(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {detail}", str(path))


def _check_room_to_rebuild(path: Path) -> None:
    """Refuse (:class:`NoSpace`), before the file is opened, to resume ``path`` where its disk
    cannot hold the rebuilt copy beside it: the file is left as it is."""
    size = path.stat().st_size if path.is_file() else 0
    free = free_bytes(path.parent) if size else None
    if free is not None and size + WRITE_HEADROOM_BYTES > free:
        detail = f"resuming rebuilds it beside itself: {size_text(size)} needed, {size_text(free)} free"
        raise NoSpace(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {detail}", str(path))


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
        *,
        verify: Verify,
    ) -> None:
        """A new file's record j holds scene ``first_scene + j`` (a shard of a sharded dataset);
        it records ``split`` (resolved, its seed the config's) and ``created`` (default: now) as
        its start time. Scenes are appended in batches of ``batch_scenes_for(config, storage)``
        and the file is flushed after each, so its bytes depend on the scenes and the batch size
        only, not on timing (HDF5 lays metadata out as it is flushed).

        An existing file is continued: :func:`~shapesgen.storage.resume.reopen` finds the scenes
        it holds intact (checking a killed render's with ``verify``; ``progress(done, total)``
        reports them), and the file is rebuilt from its header and its whole batches of those
        scenes, copied chunk for chunk, by the writes an uninterrupted render makes. So a
        resumed render ends in the bytes of an uninterrupted one with the same ``created``."""
        self.path = path
        self.first_scene = first_scene
        self.created = created
        self.closed = False
        if split is not None and split.seed != config.seed:
            raise ConfigError(f"seed={config.seed} is not the seed {split.seed} of split {split.name!r}")
        self.split = split
        if config.seed is None:
            raise ConfigError("seed=None is invalid here: a file records the seed it was rendered with")
        self.seed: int = config.seed
        self.config = config
        self.num_scenes = num_scenes
        self.batch = batch_scenes_for(config, storage.batch_scenes)
        rebuilt = rebuild_path(path)
        rebuilt.unlink(missing_ok=True)  # left by a resume killed while rebuilding: the file is intact
        _check_room_to_rebuild(path)
        earlier = self._open(path)
        if "format" not in earlier.attrs:
            self.file = earlier
            self._start(storage)
            return
        try:
            storage = StorageConfig(**json.loads(str(earlier.attrs["storage"])))  # the filters it was started with
            self.batch = batch_scenes_for(config, storage.batch_scenes)
            self.num_scenes = int(earlier.attrs["num_scenes"])
            self.first_scene = int(earlier.attrs.get("first_scene", 0))
            self.created = str(earlier.attrs["created"])
            if not self._continue(earlier, rebuilt, storage, verify, progress):
                if hasattr(self, "file"):
                    self.file.close()
                rebuilt.unlink(missing_ok=True)
                earlier.attrs["clean_stop"] = False  # changed since it stopped: check it scene by scene
                self._continue(earlier, rebuilt, storage, verify, progress)
        except BaseException:
            earlier.close()
            if hasattr(self, "file"):
                self.file.close()
            rebuilt.unlink(missing_ok=True)
            raise
        earlier.close()
        os.replace(rebuilt, path)

    @staticmethod
    def _open(path: Path) -> h5py.File:
        try:
            return h5py.File(path, "a")
        except OSError as exc:
            raise DatasetError(f"{path}: cannot open for writing ({exc})") from None

    def _continue(
        self,
        earlier: h5py.File,
        rebuilt: Path,
        storage: StorageConfig,
        verify: Verify,
        progress: Callable[[int, int], None] | None,
    ) -> bool:
        """Rebuild ``earlier``'s intact scenes into ``rebuilt``; false where a file stopped cleanly
        no longer reads, or its scenes do not hash to the ``stopped_checksums`` recorded when its
        render stopped (a byte changed since)."""
        trusted = bool(earlier.attrs.get("clean_stop", True))
        stopped = earlier.attrs.get(STOPPED_CHECKSUMS) if trusted else None
        try:
            written = reopen(earlier, self.config, verify, progress)
        except TORN:
            if not trusted:
                raise
            return False  # its offsets no longer read: check the file scene by scene
        self.file = self._open(rebuilt)
        self._start(storage)
        try:
            self._copy(earlier)
        except UnreadableScenes:
            if not trusted:
                raise
            return False  # a chunk that no longer decodes: check the file scene by scene
        if stopped is None or self.chain.scenes != written:
            return True
        return bool(json.loads(str(stopped)) == checksums(self.file, self.chain))

    def _start(self, storage: StorageConfig) -> None:
        self.chain = DigestChain()
        self.compression_level = storage.compression_level
        self.vertex_tails = {
            field.name: np.zeros((0, *field.record_shape(self.config)), field.dtype)
            for field in DATASETS
            if not field.per_scene
        }
        self._create(storage, self.num_scenes)
        self.file.attrs["clean_stop"] = False
        self.file.flush()

    def _copy(self, earlier: h5py.File) -> None:
        """Append the whole batches of ``earlier``'s scenes (the last one may be short where
        the render ends), as their render appended them; scenes of a cut batch are dropped."""
        written = int(earlier.attrs["scenes_written"])
        stops = [min(lo + self.batch, self.num_scenes) for lo in range(0, written, self.batch)]
        keep = max((stop for stop in stops if stop <= written), default=0)
        offsets = earlier["instance_offsets"][: keep + 1]
        vertex_offsets = earlier["vertex_offsets"][: int(offsets[-1]) + 1]
        for lo in range(0, keep, self.batch):
            try:
                batch = stored_batch(earlier, self.config, offsets, vertex_offsets, lo, min(lo + self.batch, keep))
            except TORN as exc:
                raise UnreadableScenes(f"{self.path}: scenes {lo}.. no longer read ({exc})") from None
            self.append(batch)  # a write error (a full disk) propagates as itself

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
            created = self.file.create_dataset(
                name, data=np.zeros(1, np.int64), maxshape=(None,), chunks=(OFFSET_CHUNK,)
            )
            created.flush()  # see append

    @property
    def scenes_written(self) -> int:
        return int(self.file.attrs["scenes_written"])

    def append(self, batch: EncodedBatch) -> None:
        """Write one encoded batch after everything already written; refused before any byte
        is written (:func:`check_space`) where the disk cannot hold it."""
        check_space(self.path, batch)
        written = self.scenes_written
        for field in PER_SCENE:
            dataset = self.file[field.name]
            rows = field.scene_rows(self.config)
            dataset.resize((written + batch.count) * rows, axis=0)
            zeros = (0,) * (dataset.ndim - 1)
            for j, chunk in enumerate(batch.chunks[field.name]):
                dataset.id.write_direct_chunk(((written + j) * rows, *zeros), chunk)
        for name, data in batch.vertex_rows.items():
            self._append_rows(name, data)
        # Datasets written through HDF5's chunk cache are flushed one by one, in this order: a
        # chunk's file space is allocated when its cache is flushed, which is otherwise when the
        # dataset object is closed, a moment garbage collection picks in each process. Left to
        # that, one shard's bytes differed between a local pool and a Dask worker (same data).
        for name, counts in (("instance_offsets", batch.instance_counts), ("vertex_offsets", batch.vertex_counts)):
            dataset = self.file[name]
            base = dataset.shape[0]
            dataset.resize(base + len(counts), axis=0)
            dataset[base:] = int(dataset[base - 1]) + np.cumsum(counts)
            dataset.flush()
        self.chain.extend(batch.digests)
        self.file.attrs["scenes_written"] = np.int64(written + batch.count)
        self.file.flush()

    def _append_rows(self, name: str, rows: np.ndarray) -> None:
        """Append ``rows`` to the vertex-axis dataset ``name`` chunk by chunk, each chunk
        compressed here (zlib-ng, as the per-scene chunks are) and written directly, so no
        chunk passes through HDF5's cache and its zlib: the chunk being filled is written
        again, with the rows added, by each batch until it is full (its rows kept in
        ``vertex_tails``). Through the cache, HDF5 compressed these rows with zlib on every flush,
        about 7% of a paper scene's CPU time."""
        dataset = self.file[name]
        start = dataset.shape[0]
        tail = self.vertex_tails[name]
        rows = np.concatenate([tail, rows]) if len(tail) else rows
        dataset.resize(start + len(rows) - len(tail), axis=0)
        first, size = start - len(tail), dataset.chunks[0]
        zeros = (0,) * (dataset.ndim - 1)
        for lo in range(0, len(rows), size):
            block = rows[lo : lo + size]
            if len(block) < size:
                block = np.concatenate([block, np.zeros((size - len(block), *block.shape[1:]), block.dtype)])
            raw = np.ascontiguousarray(block).data
            dataset.id.write_direct_chunk((first + lo, *zeros), stored_chunk(raw, self.compression_level))
        self.vertex_tails[name] = rows[len(rows) - len(rows) % size :].copy()  # not a view pinning the batch

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
                written = self.scenes_written
                if not self.file.attrs["complete"] and self.chain.scenes == written:
                    offsets = self.file["instance_offsets"][: written + 1]  # rows past them: a failed append's
                    stored = {
                        "instance_offsets": offsets,
                        "vertex_offsets": self.file["vertex_offsets"][: int(offsets[-1]) + 1],
                    }
                    self.file.attrs[STOPPED_CHECKSUMS] = json.dumps(checksums(stored, self.chain), sort_keys=True)
                self.file.attrs["clean_stop"] = True
            finally:
                self.file.close()
