"""Inference: threshold mean-shift clustering of embeddings into amodal instances.

Per class, the embeddings of that class's pixels in *all* layers are clustered
together, so an instance's amodal mask is the union of its pixels over the layers.
Deterministic given a seed; iteration and cluster caps replace the reference code's
wall-clock timeout, and a pixel keeps the first cluster that claims it.

Each instance also gets its visible mask (its layer-1 pixels) and a depth, the mean
layer index of its pixels: of two overlapping instances the one in front holds the
shared pixels in layer 1, the one behind in deeper layers, so the lower depth is the
nearer (a heuristic: the model predicts layers, not an order).

An instance's score is its mean class probability (``class``, the reference code's),
its visible fraction (``completeness``: top-layer pixels over all its pixels, which
ranks fully visible, reliably found instances first), or their product.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Instance:
    """One predicted instance."""

    class_id: int
    mask: np.ndarray  # (M, M) bool: the union over layers
    score: float
    pixels: int
    visible: np.ndarray  # (M, M) bool: its pixels in layer 1 (the front)
    depth: float  # mean layer index (0 = front) of its pixels: lower is nearer


SEEK_SAMPLE = 2048
"""Mode seeking moves the centre over at most this many unlabelled points (a seeded sample)."""


def threshold_mean_shift(
    points: np.ndarray, bandwidth: float, rng: np.random.Generator, max_clusters: int, max_iterations: int
) -> np.ndarray:
    """Cluster labels (-1 = left over once ``max_clusters`` is reached), L1 distances.

    Each cluster seeks its mode over the points no cluster has claimed yet (so it
    never converges onto a claimed centre and wastes the cluster cap), on a seeded
    sample of at most :data:`SEEK_SAMPLE` of them, then claims every unlabelled point
    within ``bandwidth`` of the mode.
    """
    points = np.asarray(points, dtype=np.float32)
    labels = np.full(len(points), -1, dtype=np.int64)
    for cluster in range(max_clusters):
        free = np.flatnonzero(labels < 0)
        if free.size == 0:
            break
        centre = points[free[rng.integers(free.size)]]
        seek = points[free if free.size <= SEEK_SAMPLE else rng.choice(free, SEEK_SAMPLE, replace=False)]
        for _ in range(max_iterations):
            near = np.abs(seek - centre).sum(axis=1) <= bandwidth
            if not near.any():
                break
            moved = seek[near].mean(axis=0)
            if np.abs(moved - centre).sum() < 1e-6:
                break
            centre = moved
        distance = np.abs(points[free] - centre).sum(axis=1)
        claim = distance <= bandwidth
        if not claim.any():
            claim[np.argmin(distance)] = True
        labels[free[claim]] = cluster
    return labels


def instance_score(kind: str, probability: float, visible_fraction: float) -> float:
    """The detection score of ``kind`` (``class``, ``completeness`` or ``product``)."""
    if kind == "class":
        return probability
    if kind == "completeness":
        return visible_fraction
    if kind == "product":
        return probability * visible_fraction
    raise ValueError(f"score={kind!r} is invalid: must be 'class', 'completeness' or 'product'")


def cluster_instances(
    semantic: np.ndarray,
    embedding: np.ndarray,
    *,
    bandwidth: float = 1.5,
    min_pixels: int = 5,
    max_clusters: int = 64,
    max_iterations: int = 50,
    seed: int | Sequence[int] = 0,
    score: str = "class",
) -> list[Instance]:
    """Instances of one image from ``semantic`` ``(L, M, M, K + 1)`` and ``embedding`` ``(L, M, M, C)``."""
    rng = np.random.default_rng(seed)
    classes = semantic.argmax(axis=-1)
    shape = classes.shape[1:]
    instances = []
    for class_id in range(1, semantic.shape[-1]):
        where = np.nonzero(classes == class_id)
        if where[0].size == 0:
            continue
        labels = threshold_mean_shift(embedding[where], bandwidth, rng, max_clusters, max_iterations)
        probability = semantic[where][:, class_id]
        for cluster in range(int(labels.max()) + 1):
            members = labels == cluster
            mask = np.zeros(shape, dtype=bool)
            mask[where[1][members], where[2][members]] = True
            pixels = int(mask.sum())
            if pixels < min_pixels:
                continue
            top = np.zeros(shape, dtype=bool)
            in_top = members & (where[0] == 0)
            top[where[1][in_top], where[2][in_top]] = True
            value = instance_score(score, float(probability[members].mean()), float(top.sum()) / pixels)
            depth = float(where[0][members].mean())
            instances.append(Instance(class_id, mask, value, pixels, top, depth))
    return instances
