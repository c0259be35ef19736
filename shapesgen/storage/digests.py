"""Per-scene digests and the ``checksums`` attribute chained from them.

A per-scene dataset's checksum is the SHA-256 of its scenes' 32-byte digests in scene
order (so workers hash in parallel and shards chain on); an offset array's is the
SHA-256 of its bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from shapesgen.storage.layout import DATASETS, OFFSETS

PER_SCENE_HASHED = tuple(f.name for f in DATASETS)
OFFSET_HASH_BLOCK = 1 << 20  # offsets hashed this many at a time
DIGEST_BLOCK = 64  # the most scenes read back at a time for their digests
DIGEST_BLOCK_BYTES = 64 << 20  # and about the most bytes


def digest(data: np.ndarray) -> bytes:
    """SHA-256 of an array's C-order bytes."""
    return hashlib.sha256(np.ascontiguousarray(data).data).digest()


class DigestChain:
    """The running dataset checksums: per-scene digests are fed in scene order and
    only the SHA-256 states are kept, so memory does not grow with the scene count
    (a dataset's checksum is the SHA-256 of its per-scene digests in scene order,
    computed incrementally)."""

    def __init__(self) -> None:
        self.hashers = {name: hashlib.sha256() for name in PER_SCENE_HASHED}
        self.scenes = 0

    def add(self, scene: dict[str, bytes]) -> None:
        """One scene's digests, after all earlier scenes'."""
        for name, hasher in self.hashers.items():
            hasher.update(scene[name])
        self.scenes += 1

    def extend(self, digests: dict[str, list[bytes]]) -> None:
        """A batch's digests (lists in scene order, as an encoded batch holds them)."""
        for name, hasher in self.hashers.items():
            hasher.update(b"".join(digests[name]))
        self.scenes += len(digests[PER_SCENE_HASHED[0]])

    def extend_joined(self, digests: dict[str, bytes]) -> None:
        """Scenes' digests, each dataset's concatenated in scene order (32 bytes a scene)."""
        for name, hasher in self.hashers.items():
            hasher.update(digests[name])
        self.scenes += len(digests[PER_SCENE_HASHED[0]]) // hashlib.sha256().digest_size

    def hexdigests(self) -> dict[str, str]:
        return {name: hasher.hexdigest() for name, hasher in self.hashers.items()}


def _block_scenes(file: Mapping[str, Any], offsets: np.ndarray, vertex_offsets: np.ndarray) -> int:
    """Scenes read at a time: at most ``DIGEST_BLOCK``, and about ``DIGEST_BLOCK_BYTES`` of
    rows for an average scene."""
    scenes = max(len(offsets) - 1, 1)
    rows = {"scene": 1.0, "instance": int(offsets[-1]) / scenes, "vertex": int(vertex_offsets[-1]) / scenes}
    per_scene = 0.0
    for field in DATASETS:
        dataset = file[field.name]
        per_scene += rows[field.axis] * dataset.dtype.itemsize * int(np.prod(dataset.shape[1:]))
    return max(1, min(DIGEST_BLOCK, int(DIGEST_BLOCK_BYTES // max(per_scene, 1.0))))


def segment_digests(rows: np.ndarray, bounds: np.ndarray) -> bytes:
    """The digests of ``rows[bounds[k] : bounds[k + 1]]`` for each k, concatenated: consecutive
    scenes' slices of one instance-axis dataset, given their offsets relative to ``rows``."""
    return b"".join(digest(rows[a:b]) for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))


def scene_digests(
    file: Mapping[str, Any], offsets: np.ndarray, vertex_offsets: np.ndarray, scenes: range | None = None
) -> Iterator[dict[str, bytes]]:
    """Each scene's digest of every hashed dataset, read back from a file (or
    ``ShapesDataset.datasets``), in scene order; ``scenes`` (a step-1 range) defaults to all.

    Rows are read up to ``DIGEST_BLOCK`` scenes (and about ``DIGEST_BLOCK_BYTES``) at a time
    and sliced in memory: one HDF5 read per scene and dataset cost about ten times the hashing."""
    scenes = scenes if scenes is not None else range(len(offsets) - 1)
    if scenes.step != 1:
        raise ValueError(f"scenes={scenes}: a range with step 1 is expected")
    per_read = _block_scenes(file, offsets, vertex_offsets)
    for lo in range(scenes.start, scenes.stop, per_read):
        hi = min(lo + per_read, scenes.stop)
        rows = int(offsets[lo]), int(offsets[hi])
        vertex_rows = int(vertex_offsets[rows[0]]), int(vertex_offsets[rows[1]])
        starts = {"scene": lo, "instance": rows[0], "vertex": vertex_rows[0]}
        stops = {"scene": hi, "instance": rows[1], "vertex": vertex_rows[1]}
        blocks = {f.name: file[f.name][starts[f.axis] : stops[f.axis]] for f in DATASETS}
        for i in range(lo, hi):
            bounds = {
                "scene": (i, i + 1),
                "instance": (int(offsets[i]), int(offsets[i + 1])),
                "vertex": (int(vertex_offsets[offsets[i]]), int(vertex_offsets[offsets[i + 1]])),
            }
            scene: dict[str, bytes] = {}
            for field in DATASETS:
                first, last = bounds[field.axis]
                rows_of_scene = blocks[field.name][first - starts[field.axis] : last - starts[field.axis]]
                scene[field.name] = digest(rows_of_scene[0] if field.axis == "scene" else rows_of_scene)
            yield scene


def checksums(file: Mapping[str, Any], chain: DigestChain) -> dict[str, str]:
    """The ``checksums`` attribute: the chained per-scene digests, and whole-array offsets
    (hashed in blocks, so memory stays bounded)."""
    sums = chain.hexdigests()
    for name in OFFSETS:
        hasher, dataset = hashlib.sha256(), file[name]
        for start in range(0, dataset.shape[0], OFFSET_HASH_BLOCK):
            hasher.update(np.ascontiguousarray(dataset[start : start + OFFSET_HASH_BLOCK]).data)
        sums[name] = hasher.hexdigest()
    return dict(sorted(sums.items()))
