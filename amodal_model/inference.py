"""The inference concern: how model outputs become scored amodal instances.

Its settings are :class:`~amodal_model.config.InferenceConfig` (declared with the
other concerns' configs and re-exported here). A trained model carries its own (from
training), and ``predict`` may override any field. Clustering runs in a
pool of worker processes, one image per task, so it uses every core while the
forward pass of the next batch runs.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np

from amodal_model.cluster import Instance, cluster_instances
from amodal_model.config import InferenceConfig
from shapesgen.engines import die_with_parent, interrupts_held, leave_interrupts_to_parent
from shapesgen.errors import ConfigError, shown

MAX_WORKERS = 256


def image_instances(
    semantic: np.ndarray, embedding: np.ndarray, index: int, settings: InferenceConfig
) -> list[Instance]:
    """The instances of one image (scene ``index``) under ``settings``."""
    return cluster_instances(
        semantic,
        embedding,
        bandwidth=settings.bandwidth,
        min_pixels=settings.min_pixels,
        max_clusters=settings.max_clusters,
        max_iterations=settings.max_iterations,
        seed=[settings.seed, index],
        score=settings.score,
        small_clusters=settings.small_clusters,
        hidden_clusters=settings.hidden_clusters,
        merge_radius=settings.merge_radius,
        convex_hull=settings.convex_hull,
        max_background=settings.max_background,
        cluster_scope=settings.cluster_scope,
    )


def records_of(instances: list[Instance], index: int) -> list[dict[str, Any]]:
    """COCO result records of one image's instances (``image_id`` = scene index + 1, RLE at
    mask size), with the ``visible_segmentation`` and ``depth`` that order and invisible-mask
    metrics use."""
    from shapesgen.coco import encode_rle

    empty = np.zeros((0, 1, 1), bool)
    masks = np.stack([i.mask for i in instances]) if instances else empty
    visible = np.stack([i.visible for i in instances]) if instances else empty
    return [
        {
            "image_id": index + 1,
            "category_id": i.class_id,
            "segmentation": rle,
            "score": round(i.score, 6),
            "visible_segmentation": visible_rle,
            "depth": round(i.depth, 6),
        }
        for i, rle, visible_rle in zip(instances, encode_rle(masks), encode_rle(visible), strict=True)
    ]


def image_records(
    semantic: np.ndarray, embedding: np.ndarray, index: int, settings: InferenceConfig
) -> list[dict[str, Any]]:
    """COCO result records of one image (:func:`image_instances`, then :func:`records_of`)."""
    return records_of(image_instances(semantic, embedding, index, settings), index)


def _job(args: tuple[np.ndarray, np.ndarray, int, InferenceConfig]) -> list[dict[str, Any]]:
    return image_records(*args)


def default_workers() -> int:
    """One clustering process per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class Clusterer:
    """Clusters batches of model outputs, in ``workers`` processes (1 = in this process).

    Results come back in image order whatever the number of workers, and each image's
    clustering is seeded by (seed, scene index): the records are identical for any
    ``workers``.
    """

    def __init__(self, settings: InferenceConfig, workers: int, pool: Executor | None) -> None:
        self.settings, self.workers, self.pool = settings, workers, pool

    def submit(self, outputs: dict[str, np.ndarray], indices: Iterable[int]) -> Callable[[], list[dict[str, Any]]]:
        """Start clustering a batch; the returned call waits for its records, in image order."""
        jobs = [
            (outputs["semantic"][b], outputs["embedding"][b], int(index), self.settings)
            for b, index in enumerate(indices)
        ]
        if self.pool is None:
            done = [record for job in jobs for record in _job(job)]
            return lambda: done
        with interrupts_held():  # the workers a submit spawns start with Ctrl-C held, then ignore it
            futures = [self.pool.submit(_job, job) for job in jobs]
        return lambda: [record for future in futures for record in future.result()]


def _start_cluster_worker() -> None:
    """Ctrl-C is the parent's; the worker dies with the parent (a ``kill -9``'d predict left
    its spawned clustering workers running)."""
    leave_interrupts_to_parent()
    die_with_parent()


@contextmanager
def clusterer(settings: InferenceConfig, workers: int | None = None) -> Iterator[Clusterer]:
    """A :class:`Clusterer` with its worker pool (spawned: TensorFlow in the parent is not forked)."""
    count = min(default_workers(), MAX_WORKERS) if workers is None else workers
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_WORKERS:
        raise ConfigError(
            f"workers={shown(workers)} is invalid: must be an integer in [1, {MAX_WORKERS}]", param="workers"
        )
    if count == 1:
        yield Clusterer(settings, 1, None)
        return
    pool = ProcessPoolExecutor(
        count,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_cluster_worker,
    )
    try:
        yield Clusterer(settings, count, pool)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
