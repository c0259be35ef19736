"""Scenes to the bytes the writer appends: one compressed chunk per scene and dataset,
and each scene's SHA-256 digest of every dataset. Runs in the render workers."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from zlib_ng import zlib_ng

from shapesgen.storage.layout import DATASETS, PER_SCENE, Scene


def deflate(raw: bytes | memoryview, level: int) -> bytes:
    """A zlib stream of ``raw`` (bytes, or a view of a C-contiguous array's bytes, read in
    place) at ``level``, as HDF5's gzip filter reads it.

    zlib-ng's deflate: at level 2 (the default) 2.7x faster than zlib's level 1 on paper
    scenes, with 16% smaller chunks, and its output is fixed by the input: the same bytes
    in any process, thread or buffer alignment (tested 172,800 times). ISA-L's level 1 was
    not: one chunk came out 515 bytes in one Dask worker and 516 in another render (same
    data), so shard files differed while their checksums agreed.
    """
    return zlib_ng.compress(raw, level)


def stored_chunk(raw: memoryview, level: int) -> bytes:
    """A chunk's bytes as a file stores them: ``deflate`` at ``level``, or the raw bytes at 0
    (the dataset then has no gzip filter)."""
    return deflate(raw, level) if level else raw.tobytes()


@dataclass(frozen=True)
class EncodedBatch:
    """Scenes ready to append: compressed chunks of each per-scene dataset, per-scene
    digests of every dataset, the raw rows of each vertex-axis dataset, and counts.

    Built in the worker that rendered the scenes so that compression and hashing
    scale with the worker count; the writer compresses only the vertex rows, whose
    chunks span batches.
    """

    count: int
    chunks: dict[str, list[bytes]]
    digests: dict[str, list[bytes]]
    vertex_rows: dict[str, np.ndarray]
    instance_counts: np.ndarray
    vertex_counts: np.ndarray

    @property
    def stored_bytes(self) -> int:
        """About the bytes the batch takes in a file: its chunks, its rows and 16 per offset."""
        chunks = sum(len(chunk) for parts in self.chunks.values() for chunk in parts)
        rows = sum(data.nbytes for data in self.vertex_rows.values())
        return chunks + rows + 16 * (len(self.instance_counts) + len(self.vertex_counts))


def encode_scenes(scenes: Sequence[Scene], compression_level: int) -> EncodedBatch:
    """Compress each scene's chunk of every per-scene dataset and hash each scene's slice of
    every dataset, the ``Scene`` attribute each ``layout.DATASETS`` field names."""
    chunks: dict[str, list[bytes]] = {field.name: [] for field in PER_SCENE}
    digests: dict[str, list[bytes]] = {field.name: [] for field in DATASETS}
    for scene in scenes:
        for field in DATASETS:
            data = getattr(scene, field.attribute)
            if data.dtype != field.dtype:
                raise TypeError(f"Scene.{field.attribute} is {data.dtype}, dataset {field.name} stores {field.dtype}")
            raw = np.ascontiguousarray(data).data  # compressed and hashed in place, not copied to bytes
            if field.per_scene:
                chunks[field.name].append(stored_chunk(raw, compression_level))
            digests[field.name].append(hashlib.sha256(raw).digest())
    return EncodedBatch(
        count=len(scenes),
        chunks=chunks,
        digests=digests,
        vertex_rows={
            field.name: np.concatenate([getattr(s, field.attribute) for s in scenes])
            for field in DATASETS
            if not field.per_scene
        },
        instance_counts=np.array([len(s.instances) for s in scenes], dtype=np.int64),
        vertex_counts=np.concatenate([np.diff(s.vertex_offsets) for s in scenes]),
    )
