"""Shuffled batches read in blocks: one order for every source (HDF5 file or COCO export).

Scenes are read ``BLOCK`` at a time (one decompression per HDF5 chunk), shuffled by
block and within a block by a generator seeded with ``(seed, epoch)``, so an epoch's
order is reproducible and the same whichever form of a dataset is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

BLOCK = 256

Batch = dict[str, np.ndarray]


def blocked_batches(
    total: int, read_block: Callable[[int, int], Batch], batch_size: int, seed: int, epoch: int, shuffle: bool
) -> Iterator[Batch]:
    """Batches of ``total`` scenes read in blocks of :data:`BLOCK`, shuffled by block and
    within a block by a generator seeded with ``(seed, epoch)``."""
    rng = np.random.default_rng([seed, epoch])
    starts = np.arange(0, total, BLOCK)
    if shuffle:
        rng.shuffle(starts)
    pending: list[Batch] = []
    for start in starts.tolist():
        stop = min(start + BLOCK, total)
        block = read_block(start, stop)
        order = rng.permutation(stop - start) if shuffle else np.arange(stop - start)
        pending.append({key: value[order] for key, value in block.items()})
        merged = {key: np.concatenate([p[key] for p in pending]) for key in pending[0]}
        whole = len(merged["index"]) // batch_size * batch_size
        for b in range(0, whole, batch_size):
            yield {key: value[b : b + batch_size] for key, value in merged.items()}
        pending = [{key: value[whole:] for key, value in merged.items()}] if whole < len(merged["index"]) else []
    if pending and len(pending[0]["index"]):
        yield pending[0]
