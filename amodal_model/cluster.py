"""Inference: threshold mean-shift clustering of embeddings into amodal instances.

Per class (or, with ``cluster_scope='all'``, over every class at once), the embeddings
of the pixels in *all* layers are clustered together, so an instance's amodal mask is
the union of its pixels over the layers.
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
    points: np.ndarray,
    bandwidth: float,
    rng: np.random.Generator,
    max_clusters: int,
    max_iterations: int,
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


def cluster_pixels(
    semantic: np.ndarray,
    embedding: np.ndarray,
    *,
    bandwidth: float = 1.5,
    max_clusters: int = 64,
    max_iterations: int = 50,
    seed: int | Sequence[int] = 0,
    max_background: float | None = None,
    scope: str = "class",
) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's cluster in each layer, ``(L, M, M)`` (-1: background or left over), and
    each cluster's class, from ``semantic`` ``(L, M, M, K + 1)`` and ``embedding`` ``(L, M, M, C)``.

    A pixel's class is :func:`pixel_classes`. ``scope='class'``: each class's pixels are
    clustered apart, clusters numbered class by class in the order mean-shift finds them.
    ``scope='all'``: the foreground pixels of every class are clustered together, and a
    cluster's class is the object class of highest probability summed over its pixels.
    """
    rng = np.random.default_rng(seed)
    classes = pixel_classes(semantic, max_background)
    labels = np.full(classes.shape, -1, dtype=np.int64)
    if scope == "all":
        where = np.nonzero(classes > 0)
        if where[0].size == 0:
            return labels, np.zeros(0, dtype=np.int64)
        found = threshold_mean_shift(embedding[where], bandwidth, rng, max_clusters, max_iterations)
        labels[where] = found
        count = int(found.max()) + 1
        held = found >= 0
        mass = np.zeros((count, semantic.shape[-1] - 1), np.float64)
        np.add.at(mass, found[held], semantic[where][held, 1:])
        return labels, mass.argmax(axis=1).astype(np.int64) + 1
    if scope != "class":
        raise ValueError(f"scope={scope!r} is invalid: must be 'class' or 'all'")
    class_of: list[int] = []
    for class_id in range(1, semantic.shape[-1]):
        where = np.nonzero(classes == class_id)
        if where[0].size == 0:
            continue
        found = threshold_mean_shift(embedding[where], bandwidth, rng, max_clusters, max_iterations)
        labels[where] = np.where(found >= 0, found + len(class_of), -1)
        class_of.extend([class_id] * (int(found.max()) + 1))
    return labels, np.array(class_of, dtype=np.int64)


def pixel_classes(semantic: np.ndarray, max_background: float | None = None) -> np.ndarray:
    """Each pixel's class (0: background) from ``semantic`` ``(..., K + 1)``: the most probable
    one, or with ``max_background`` the most probable object class wherever the background's
    probability is under ``max_background`` (a pixel whose object classes split the
    probability is then foreground although the background is the single most probable)."""
    if max_background is None:
        return semantic.argmax(axis=-1)
    return np.where(semantic[..., 0] < max_background, semantic[..., 1:].argmax(axis=-1) + 1, 0)


def merge_clusters(
    labels: np.ndarray,
    embedding: np.ndarray,
    count: int,
    *,
    small_clusters: str = "drop",
    hidden_clusters: str = "keep",
    min_pixels: int = 5,
    merge_radius: float = 3.0,
) -> np.ndarray:
    """A labelling (:func:`cluster_pixels`, ``count`` clusters) with the clusters that cannot
    be an instance on their own merged into another or dropped.

    A cluster is merged into the cluster nearest to it (L1 distance of their mean
    embeddings, any class) among those that have a layer-1 pixel and are merged into
    nothing, if one is within ``merge_radius``. ``small_clusters='merge'``: a cluster whose
    amodal mask is under ``min_pixels`` (else :func:`instances_from_labels` drops it).
    ``hidden_clusters``: a cluster with no layer-1 pixel (every instance is partly
    visible) is kept, dropped, or merged (dropped if nothing is near). Cluster numbers are
    kept; a cluster merged away holds no pixel.
    """
    if (small_clusters == "drop" and hidden_clusters == "keep") or count == 0:
        return labels
    held = labels >= 0
    ids = labels[held]
    sums = np.zeros((count, embedding.shape[-1]), np.float64)
    np.add.at(sums, ids, embedding[held])
    sizes = np.bincount(ids, minlength=count)
    centres = sums / np.maximum(sizes, 1)[:, None]
    visible = np.bincount(labels[0][labels[0] >= 0], minlength=count) > 0
    union = np.zeros((count, *labels.shape[1:]), bool)
    _, rows, cols = np.nonzero(held)
    union[ids, rows, cols] = True
    small = union.reshape(count, -1).sum(axis=1) < min_pixels
    hidden = (sizes > 0) & ~visible
    alone = (hidden if hidden_clusters != "keep" else False) | (
        (sizes > 0) & small if small_clusters == "merge" else False
    )
    targets = np.flatnonzero(visible & ~alone)
    mapping = np.arange(count)
    for cluster in np.flatnonzero(alone).tolist():
        if targets.size == 0 or (hidden[cluster] and hidden_clusters == "drop"):
            mapping[cluster] = -1
            continue
        distance = np.abs(centres[targets] - centres[cluster]).sum(axis=1)
        best = int(distance.argmin())
        if distance[best] <= merge_radius:
            mapping[cluster] = targets[best]
        elif hidden[cluster]:
            mapping[cluster] = -1
    out = labels.copy()
    out[held] = mapping[ids]
    return out


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
    small_clusters: str = "drop",
    hidden_clusters: str = "keep",
    merge_radius: float = 3.0,
    convex_hull: bool = False,
    max_background: float | None = None,
    cluster_scope: str = "class",
) -> list[Instance]:
    """Instances of one image from ``semantic`` ``(L, M, M, K + 1)`` and ``embedding`` ``(L, M, M, C)``
    (:func:`cluster_pixels`, :func:`merge_clusters`, :func:`instances_from_labels`)."""
    labels, class_of = cluster_pixels(
        semantic,
        embedding,
        bandwidth=bandwidth,
        max_clusters=max_clusters,
        max_iterations=max_iterations,
        seed=seed,
        max_background=max_background,
        scope=cluster_scope,
    )
    labels = merge_clusters(
        labels,
        embedding,
        len(class_of),
        small_clusters=small_clusters,
        hidden_clusters=hidden_clusters,
        min_pixels=min_pixels,
        merge_radius=merge_radius,
    )
    return instances_from_labels(
        semantic, labels, class_of, min_pixels=min_pixels, score=score, convex_hull=convex_hull
    )


def instances_from_labels(
    semantic: np.ndarray,
    labels: np.ndarray,
    class_of: np.ndarray,
    *,
    min_pixels: int = 5,
    score: str = "class",
    convex_hull: bool = False,
) -> list[Instance]:
    """The instances of a labelling (:func:`cluster_pixels`), in cluster order; those whose
    amodal mask (the union of their pixels over the layers) is under ``min_pixels`` are dropped.

    ``convex_hull=True`` is a domain prior (the scenes' shapes are convex): each amodal
    mask becomes its convex hull; pixels, score, visible mask and depth are the cluster's."""
    shape = labels.shape[1:]
    instances = []
    for cluster, class_id in enumerate(class_of.tolist()):
        where = np.nonzero(labels == cluster)
        mask = np.zeros(shape, dtype=bool)
        mask[where[1], where[2]] = True
        pixels = int(mask.sum())
        if pixels < min_pixels:
            continue
        top = labels[0] == cluster
        probability = float(semantic[where][:, class_id].mean())
        value = instance_score(score, probability, float(top.sum()) / pixels)
        if convex_hull:
            from skimage.morphology import convex_hull_image  # only for this option: a slow import

            mask |= convex_hull_image(mask)
        instances.append(Instance(class_id, mask, value, pixels, top, float(where[0].mean())))
    return instances
