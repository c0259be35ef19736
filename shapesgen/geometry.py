"""Scene geometry: sampled poses, shapely polygons, depth order and visibility.

Pure functions of their arguments; the random generator is always passed in.
Coordinates are image pixels with the origin at the top-left corner of the image,
x to the right and y down; pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

from shapesgen.config import SceneConfig
from shapesgen.shapes import SHAPE_KINDS


@dataclass(frozen=True)
class Poses:
    """Every random draw of one scene, enough to rebuild it exactly.

    Instances are in class-major order (all of class 0, then class 1, ...); the
    instance id used in masks and layers is ``index + 1``. A batch of scenes stacks
    them on a leading axis (:func:`stack_poses`).
    """

    class_index: np.ndarray  # (n,) int64, 0-based into config.shapes
    anchors: np.ndarray  # (n, 2) float64, image pixels (x, y)
    angles: np.ndarray  # (n,) float64, degrees, clockwise on screen
    depth: np.ndarray  # (n,) int64, a permutation; 0 = front


def sample_poses(config: SceneConfig, rng: np.random.Generator) -> Poses:
    """Draw anchors, rotations and a depth order, always in this order from ``rng``."""
    n = config.num_instances
    lo, hi = config.anchor_range
    anchors = rng.uniform(lo, hi, size=(n, 2)) * config.image_size
    angles = rng.uniform(config.rotation_range[0], config.rotation_range[1], size=n)
    depth = rng.permutation(n).astype(np.int64)
    class_index = np.repeat(np.arange(config.num_classes, dtype=np.int64), config.instances_per_class)
    return Poses(class_index=class_index, anchors=anchors, angles=angles, depth=depth)


def stack_poses(poses: list[Poses]) -> Poses:
    """Several scenes' poses on a leading scene axis."""
    return Poses(
        class_index=np.stack([p.class_index for p in poses]),
        anchors=np.stack([p.anchors for p in poses]),
        angles=np.stack([p.angles for p in poses]),
        depth=np.stack([p.depth for p in poses]),
    )


def class_rings(config: SceneConfig, poses: Poses) -> list[np.ndarray]:
    """Full (unclipped) vertex rings per class, each ``(..., instances_per_class, V, 2)``.

    ``anchor='corner'`` (reference code): the template's box corner sits at the anchor
    and the shape rotates about it; circles are not rotated. ``anchor='center'``:
    the box centre sits at the anchor and the shape rotates about it.
    """
    rings = []
    k = config.instances_per_class
    for c, spec in enumerate(config.shapes):
        kind = SHAPE_KINDS[spec.kind]
        width, height = kind.box(spec.size)
        local = kind.template(config.circle_segments) * (np.array([width, height]) * config.image_size)
        if config.anchor == "center":
            local = local - np.array([width, height]) * (config.image_size / 2.0)
        anchors = poses.anchors[..., c * k : (c + 1) * k, :]
        if kind.rotation_invariant:
            rings.append(local + anchors[..., None, :])
            continue
        theta = np.deg2rad(poses.angles[..., c * k : (c + 1) * k])
        cos, sin = np.cos(theta)[..., None], np.sin(theta)[..., None]
        x, y = local[:, 0], local[:, 1]
        rotated = np.stack([x * cos - y * sin, x * sin + y * cos], axis=-1)
        rings.append(rotated + anchors[..., None, :])
    return rings


def polygons(rings: list[np.ndarray]) -> np.ndarray:
    """Shapely polygons, one per instance, in instance order (``(..., n)``)."""
    return np.concatenate([shapely.polygons(group) for group in rings], axis=-1)


def clip_to_frame(shapes: np.ndarray, image_size: int) -> np.ndarray:
    """The part of each polygon inside the image frame (convex in, convex out)."""
    return shapely.clip_by_rect(shapes, 0.0, 0.0, float(image_size), float(image_size))


def front_overlaps(amodal: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (instance, intersecting instance in front of it), sorted by both indices."""
    hit, other = shapely.STRtree(amodal).query(amodal, predicate="intersects")
    in_front = depth[other] < depth[hit]
    hit, other = hit[in_front], other[in_front]
    order = np.lexsort((other, hit))
    return hit[order], other[order]


def visible_geometry(amodal: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Exact visible part of each instance: its amodal polygon minus the union of those in front.

    Only front neighbours that actually intersect an instance (found with an STR-tree)
    are united. One difference with their union, not one difference per neighbour:
    GEOS can drop a whole remainder when it subtracts a polygon whose side the
    remainder already borders (e.g. a second copy of a polygon subtracted before),
    while a union settles coincident sides first.
    """
    visible = amodal.copy()
    hit, other = front_overlaps(amodal, depth)
    if hit.size == 0:
        return visible
    instances, starts = np.unique(hit, return_index=True)
    fronts = [shapely.union_all(amodal[group]) for group in np.split(other, starts[1:])]
    visible[instances] = shapely.difference(amodal[instances], np.array(fronts, dtype=object))
    return visible


def box_xywh(shapes: np.ndarray) -> np.ndarray:
    """COCO boxes ``(x, y, w, h)``; empty geometry gives all zeros."""
    bounds = shapely.bounds(shapes)
    boxes = np.concatenate([bounds[:, :2], bounds[:, 2:] - bounds[:, :2]], axis=1)
    return np.nan_to_num(boxes, nan=0.0)


def exterior_rings(shapes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exterior vertices without the closing repeat, and offsets per polygon."""
    exteriors = shapely.get_exterior_ring(shapes)
    coords, owner = shapely.get_coordinates(exteriors, return_index=True)
    counts = np.bincount(owner, minlength=len(shapes))
    ends = np.cumsum(counts)
    keep = np.ones(len(coords), dtype=bool)
    keep[ends[counts > 0] - 1] = False
    offsets = np.concatenate([[0], np.cumsum(np.maximum(counts - 1, 0))]).astype(np.int64)
    return coords[keep], offsets
