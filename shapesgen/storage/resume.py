"""Reopen a partial file where its render stopped: keep the scenes it holds intact, drop the rest.

Storage renders nothing: the build layer passes ``verify(start, stop)``, which returns the
digests a fresh render gives scenes ``start .. stop - 1`` (dataset-wide indices), as
:func:`~shapesgen.storage.encode.encode_scenes` computes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import h5py
import numpy as np

from shapesgen.config import SceneConfig
from shapesgen.storage.digests import PER_SCENE_HASHED, scene_digests
from shapesgen.storage.layout import DATASETS, PER_SCENE

Verify = Callable[[int, int], Mapping[str, Sequence[bytes]]]
VERIFY_BATCH = 64  # scenes checked at a time in a killed render's file
TORN = (OSError, RuntimeError, ValueError, KeyError, IndexError)  # h5py reading a torn file


def reopen(
    file: h5py.File, config: SceneConfig, verify: Verify, progress: Callable[[int, int], None] | None = None
) -> int:
    """Truncate ``file`` to the scenes it holds intact; return their count.

    A file closed cleanly keeps the ``scenes_written`` it counts (the writer hashes them as it
    copies them). One that was not (killed hard between flushes) may hold a torn tail: its
    scenes are compared, ``VERIFY_BATCH`` at a time, with ``verify`` and only the prefix
    before the first difference is kept; ``progress(done, total)`` reports the scenes checked.
    """
    written = int(file.attrs["scenes_written"])
    if not bool(file.attrs.get("clean_stop", True)):
        written = _intact_prefix(file, config, written, verify, progress)
    offsets, vertex_offsets = _offsets(file, written)
    lengths = {"scene": written, "instance": int(offsets[-1]), "vertex": int(vertex_offsets[-1])}
    for field in DATASETS:
        file[field.name].resize(lengths[field.axis], axis=0)
    file["instance_offsets"].resize(written + 1, axis=0)
    file["vertex_offsets"].resize(len(vertex_offsets), axis=0)
    file.attrs["scenes_written"] = np.int64(written)
    return written


def _offsets(file: h5py.File, scenes: int) -> tuple[np.ndarray, np.ndarray]:
    """The instance and vertex offsets of the first ``scenes`` scenes."""
    offsets = file["instance_offsets"][: scenes + 1]
    return offsets, file["vertex_offsets"][: int(offsets[-1]) + 1]


def _intact_prefix(
    file: h5py.File, config: SceneConfig, written: int, verify: Verify, progress: Callable[[int, int], None] | None
) -> int:
    """How many leading scenes equal ``verify``'s (a fresh render's)."""
    try:
        offsets, vertex_offsets = _offsets(file, written)
        consistent = (
            len(offsets) == written + 1
            and len(vertex_offsets) == int(offsets[-1]) + 1
            and all(file[f.name].shape[0] >= int(vertex_offsets[-1]) for f in DATASETS if not f.per_scene)
            and all(file[f.name].shape[0] >= written * f.scene_rows(config) for f in PER_SCENE)
        )
        if not consistent:
            return 0
    except TORN:  # torn beyond reading
        return 0
    first = int(file.attrs.get("first_scene", 0))
    for start in range(0, written, VERIFY_BATCH):
        stop = min(start + VERIFY_BATCH, written)
        try:
            stored = list(scene_digests(file, offsets, vertex_offsets, range(start, stop)))
        except TORN:  # this block is torn beyond reading
            return start
        fresh = verify(first + start, first + stop)
        for j, scene in enumerate(stored):
            if any(scene[name] != fresh[name][j] for name in PER_SCENE_HASHED):
                return start + j
        if progress:
            progress(stop, int(file.attrs["num_scenes"]))
    return written
