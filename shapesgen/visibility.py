"""Exact visible area and box of every instance, from boundaries alone.

The visible part of instance k is its polygon minus every nearer polygon and
minus the outside of the frame. Its area follows from Green's theorem,
``area = 1/2 * sum over boundary segments of cross(start, end)``, and its boundary is
made of two kinds of straight pieces:

* pieces of k's own edges that no nearer polygon covers, traversed as k's ring is;
* pieces of nearer polygons' edges (and of the frame) that lie inside k and whose
  *nearest* coverer is k, traversed backwards.

So it suffices to know, for every edge, the parameter interval that each other
polygon covers (Cyrus-Beck clipping against a convex polygon) and, along the
edge, the nearest coverer of each stretch. All of it is vectorised NumPy over
every edge of a run of scenes at once, with no polygon overlay: 0.7 ms of CPU per
paper scene (N = 6) against 3.5 ms for GEOS differences, measured together by
``benchmarks/bench_render.py`` on the busy 2-core development machine; equal to them
to floating-point rounding (``tests/test_geometry.py`` checks it against shapely).
Scenes where a crossing is ill-conditioned (a grazing angle) are measured with GEOS
instead.

``boundary_visibility`` takes these steps, one function each: the polygons and
their edges clipped to the frame; the covers of every edge; the pieces between
cover ends, with the nearest covers spanning each; then the boundary pieces of both
kinds, from which follow area and box. Scenes go in runs, and Cyrus-Beck in blocks,
small enough for their arrays to stay in the CPU caches (a quarter less time than whole
batches of 64 at N = 6 and 12); every scene's measures depend on that scene alone, so
the bits do not depend on the run or block size (``tests/test_render_speed_equivalence.py``).

Every polygon must be convex with a positive shoelace orientation (all shape
templates are); coordinates are image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import shapely

from shapesgen import geometry

NO_COVER = 2**62
INTERIOR, SAME, OPPOSITE = 0, 1, 2  # how a cover meets an edge: inside, or along a side either way
SAFETY = 1e-9  # relative margin on the inscribed/circumscribed circle shortcuts
GRAZING = 1e-4  # sine of the angle below which a crossing is ill-conditioned
TOUCHING = 1e-9  # image px: an edge end this close to a side's line lies on it, up to rounding
DEBRIS = 1e-9  # image px: shorter boundary pieces are rounding debris
SLIVER_AREA = 1e-9  # image px^2: overlay parts this thin are rounding debris
FAR_AWAY = 1e12  # where sides wholly outside the frame are parked (image px)
RUN_PAIRS = 2**18  # (edge, polygon) pairs per run of scenes measured together
BLOCK_TESTS = 2**16  # edge-side tests per Cyrus-Beck block: its arrays stay in the CPU caches


@dataclass(frozen=True)
class Visibility:
    """Exact measures of each instance's visible part."""

    area: np.ndarray  # (n,) float64, image px^2
    box: np.ndarray  # (n, 4) float64, (x, y, w, h) in image px; zeros when nothing is visible
    occluded: np.ndarray  # (n,) bool, a nearer instance overlaps it with positive area


def visibility(rings: list[np.ndarray], depth: np.ndarray, image_size: int) -> Visibility:
    """Visible area, box and occlusion flag of every instance, exactly.

    ``rings`` are the unclipped polygons, grouped as ``(..., k, V, 2)`` arrays in instance
    order; ``depth`` ``(..., n)`` is a permutation per scene (0 = front); leading axes
    are scenes, measured independently. The frame ``[0, image_size]^2`` clips
    everything. Scenes with grazing crossings are measured with GEOS overlays.
    """
    seen, declined = boundary_visibility(rings, depth, image_size)
    for index in np.flatnonzero(declined):
        scene = np.unravel_index(index, declined.shape)
        redone = overlay_visibility([group[scene] for group in rings], np.asarray(depth)[scene], image_size)
        seen.area[scene], seen.box[scene], seen.occluded[scene] = redone.area, redone.box, redone.occluded
    return seen


def overlay_visibility(rings: list[np.ndarray], depth: np.ndarray, image_size: int) -> Visibility:
    """The same measures for one scene from GEOS overlays (slower; robust to grazing crossings)."""
    amodal = geometry.clip_to_frame(geometry.polygons(rings), image_size)
    visible = geometry.visible_geometry(amodal, depth)
    area = shapely.area(visible)
    return Visibility(area=area, box=solid_box(visible), occluded=area < shapely.area(amodal))


def solid_box(shapes: np.ndarray) -> np.ndarray:
    """Boxes ``(x, y, w, h)`` of the parts with area (overlays can leave zero-area slivers)."""
    parts, index = shapely.get_parts(shapes, return_index=True)
    solid = shapely.area(parts) > SLIVER_AREA
    bounds = shapely.bounds(parts[solid])
    return _boxes(index[solid], bounds[:, :2], bounds[:, 2:], len(shapes))


def _boxes(owner: np.ndarray, lows: np.ndarray, highs: np.ndarray, count: int, origin: float = 0.0) -> np.ndarray:
    """Boxes ``(x, y, w, h)`` of ``count`` owners from their pieces' ``(m, 2)`` low and high
    corners; ``origin`` is added to x and y. Zeros for an owner with no piece."""
    low = np.full((2, count), np.inf)
    high = np.full((2, count), -np.inf)
    for axis in (0, 1):
        np.minimum.at(low[axis], owner, lows[:, axis])
        np.maximum.at(high[axis], owner, highs[:, axis])
    box = np.column_stack([low[0] + origin, low[1] + origin, high[0] - low[0], high[1] - low[1]])
    box[~np.isfinite(low[0])] = 0.0
    return box


@dataclass(frozen=True)
class _Layout:
    """Index arrays of a batch of B scenes' concatenated rings; fixed for a config and batch size.

    Vertices are numbered scene by scene (``Vs`` per scene), polygons likewise (``n``),
    and edges too (``E = Vs + 4`` per scene: every side, then the frame's four sides).
    """

    scenes: int
    polygons: int  # n, per scene
    edges: int  # E, per scene
    counts: np.ndarray  # (B*n,) vertices per polygon
    first: np.ndarray  # (B*n,) index of each polygon's first vertex
    following: np.ndarray  # (B*Vs,) index of the next vertex around the same ring
    edge_of_vertex: np.ndarray  # (B*Vs,) the edge that starts at each vertex
    owner: np.ndarray  # (B*E,) polygon of each edge; -1 for the frame's sides
    own_pairs: np.ndarray  # flat indices of (edge, its own polygon) in a (B, E, n) matrix
    side_counts: tuple[int, ...]  # the distinct numbers of sides of the polygons, ascending


@lru_cache(maxsize=64)
def _layout(groups: tuple[tuple[int, int], ...], scenes: int) -> _Layout:
    """The ``_Layout`` of ``scenes`` scenes; ``groups``: (polygons, vertices per polygon) of each
    ring group in one scene."""
    counts = np.concatenate([np.full(k, v, dtype=np.int64) for k, v in groups])
    n, per_scene = counts.size, int(counts.sum())
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    owner = np.repeat(np.arange(n), counts)
    position = np.arange(per_scene) - first[owner]
    following = first[owner] + (position + 1) % counts[owner]
    num_edges = per_scene + 4
    base_vertex = np.arange(scenes)[:, None] * per_scene
    base_edge = np.arange(scenes)[:, None] * num_edges
    edge_owner = np.concatenate([owner, np.full(4, -1)])
    return _Layout(
        scenes=scenes,
        polygons=n,
        edges=num_edges,
        counts=np.tile(counts, scenes),
        first=(base_vertex + first).ravel(),
        following=(base_vertex + following).ravel(),
        edge_of_vertex=(base_edge + np.arange(per_scene)).ravel(),
        owner=np.where(edge_owner >= 0, np.arange(scenes)[:, None] * n + edge_owner, -1).ravel(),
        own_pairs=((base_edge + np.arange(per_scene)) * n + owner).ravel(),
        side_counts=tuple(sorted({v for _, v in groups})),
    )


@dataclass(frozen=True)
class _Polygons:
    """Every polygon of a batch, in coordinates centred on the frame (better rounding).

    V = B*Vs vertices, numbered as in ``_Layout``; side i runs from vertex i to the next
    around its ring. A point p lies inside polygon l iff ``normal . p >= offset`` for
    each of l's sides.
    """

    vertices: np.ndarray  # (V, 2) float64
    sides: np.ndarray  # (V, 2) float64, vertex i to the next
    normal_x: np.ndarray  # (V,) float64, unit inward normal of each side; 0 for a side of length 0
    normal_y: np.ndarray  # (V,) float64
    offsets: np.ndarray  # (V,) float64, normal . vertex; -inf for a side of length 0 (it constrains nothing)
    box_low: np.ndarray  # (B*n, 2) float64, each polygon's least x and y
    box_high: np.ndarray  # (B*n, 2) float64, each polygon's greatest x and y


@dataclass(frozen=True)
class _Edges:
    """The batch's edges ``start + t * step`` for t in [0, 1], E per scene (``_Layout``), clipped to the frame."""

    starts: np.ndarray  # (B*E, 2) float64, centred coordinates
    steps: np.ndarray  # (B*E, 2) float64
    lengths: np.ndarray  # (B*E,) float64
    owner: np.ndarray  # (B*E,) int64, polygon whose side it is; -1 for the frame's sides and sides outside it
    depth: np.ndarray  # (B*E,) int64, the owner's depth; -1 (nearer than everything) where no owner
    along_frame: np.ndarray  # (B*E,) bool, runs along a frame line: the outside abuts it


@dataclass(frozen=True)
class _Pairs:
    """P (edge, polygon) pairs, each of one scene, as parallel index arrays."""

    edge: np.ndarray  # (P,) int64, into ``_Edges``
    polygon: np.ndarray  # (P,) int64, polygon index in the batch (scene * n + instance)


@dataclass(frozen=True)
class _SideTests:
    """M pairs whose polygons all have S sides, each pair's edge tested against each side
    (side-major, so that NumPy's inner loops run over the pairs)."""

    sides: np.ndarray  # (S, M) int64, the side (its start vertex) of each test
    level: np.ndarray  # (S, M) float64, normal . start - offset: > 0 where the edge starts inside the side's line
    rate: np.ndarray  # (S, M) float64, normal . step: the level's change from t=0 to t=1
    crossing: np.ndarray  # (S, M) float64, -level / rate: t where the edge meets the side's line (inf/nan if parallel)


@dataclass(frozen=True)
class _Covers:
    """C covers: polygon ``polygon[i]`` covers edge ``edge[i]`` for t in ``[lo[i], hi[i]]``."""

    edge: np.ndarray  # (C,) int64
    polygon: np.ndarray  # (C,) int64
    lo: np.ndarray  # (C,) float64
    hi: np.ndarray  # (C,) float64, > lo
    kind: np.ndarray  # (C,) int64, INTERIOR, or SAME/OPPOSITE: along a side running with/against the edge
    depth: np.ndarray  # (C,) int64, the covering polygon's depth
    edge_depth: np.ndarray  # (C,) int64, the depth of the edge's owner (-1 for the frame)
    hides: np.ndarray  # (C,) bool, hides the edge from its owner (not a polygon abutting from the other side)
    joins_union: np.ndarray  # (C,) bool, counts for the union of covers below the edge


@dataclass(frozen=True)
class _Pieces:
    """Every edge cut at 0 and at its covers' ends into K pieces ``t in [a, b]``, by edge then t
    (pieces between coinciding cuts are empty), with the nearest covers spanning each."""

    edge: np.ndarray  # (K,) int64
    a: np.ndarray  # (K,) float64
    b: np.ndarray  # (K,) float64, >= a
    hidden_by: np.ndarray  # (K,) int64, least depth of a cover that hides it; NO_COVER if none
    union_key: np.ndarray  # (K,) int64, least 2 * depth + (1 if it only touches) of the union's covers; or NO_COVER


@dataclass(frozen=True)
class _Boundary:
    """Q straight pieces of the visible parts' boundaries: instance ``instance[i]``'s boundary
    runs along edge ``edge[i]`` between t=``a[i]`` and t=``b[i]``, forwards (``sign`` +1) or backwards (-1)."""

    instance: np.ndarray  # (Q,) int64, polygon index in the batch
    edge: np.ndarray  # (Q,) int64
    a: np.ndarray  # (Q,) float64
    b: np.ndarray  # (Q,) float64, > a
    sign: np.ndarray  # (Q,) float64


def boundary_visibility(rings: list[np.ndarray], depth: np.ndarray, image_size: int) -> tuple[Visibility, np.ndarray]:
    """The measures by boundary integration (module docstring), for every scene at once,
    and which scenes it declined (a crossing grazes); theirs are not meaningful.

    ``rings``, ``depth`` and ``image_size`` are as for ``visibility``; returns measures of
    shape ``(..., n)`` and a ``(...)`` bool array of declined scenes. Scenes are measured
    in runs whose (edge, polygon) matrices hold about ``RUN_PAIRS`` entries: each scene's
    measures depend on that scene alone, and smaller arrays stay in the CPU caches.
    """
    depth = np.asarray(depth)
    leading, n = depth.shape[:-1], depth.shape[-1]
    scenes = int(np.prod(leading, dtype=np.int64))
    groups = [group.reshape(scenes, group.shape[-3], group.shape[-2], 2) for group in rings]
    instance_depth = depth.reshape(scenes, n).astype(np.int64)
    edges_per_scene = sum(group.shape[1] * group.shape[2] for group in groups) + 4
    run = max(1, RUN_PAIRS // max(1, edges_per_scene * n))
    parts = [
        _measure([group[lo : lo + run] for group in groups], instance_depth[lo : lo + run], image_size)
        for lo in range(0, scenes, run)
    ] or [_measure(groups, instance_depth, image_size)]
    area, box, occluded, declined = (np.concatenate(part) for part in zip(*parts, strict=True))
    return (
        Visibility(
            area=area.reshape(*leading, n), box=box.reshape(*leading, n, 4), occluded=occluded.reshape(*leading, n)
        ),
        declined.reshape(leading),
    )


def _measure(
    groups: list[np.ndarray], depth: np.ndarray, image_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``boundary_visibility`` of B scenes: ``groups`` ``(B, k, V, 2)`` and ``depth`` ``(B, n)``
    int64; returns area ``(B*n,)``, box ``(B*n, 4)``, occluded ``(B*n,)`` and declined ``(B,)``."""
    scenes, n = depth.shape
    layout = _layout(tuple((group.shape[1], group.shape[2]) for group in groups), scenes)
    instance_depth = depth.reshape(-1)
    half = image_size / 2.0
    count = scenes * n

    polygons = _polygons(groups, layout, half)
    edges = _edges(polygons, instance_depth, layout, half)
    covers, declined = _covers(edges, polygons, instance_depth, layout)
    pieces = _pieces(covers, edges)
    boundary = _boundary(pieces, edges, instance_depth, layout)
    area = _area(boundary, edges, count)
    box = _box(boundary, edges, count, half)
    occluded = _occluded(covers, edges, count)
    return area, box, occluded, declined


def _polygons(groups: list[np.ndarray], layout: _Layout, half: float) -> _Polygons:
    """The rings of ``groups`` (each ``(B, k, v, 2)``, numeric) centred on the frame, as
    vertices, sides, inward side normals with offsets, and boxes (``_Polygons``)."""
    vertices = np.concatenate([group.reshape(layout.scenes, -1, 2) for group in groups], axis=1).reshape(-1, 2) - half
    sides = np.take(vertices, layout.following, axis=0) - vertices
    side_x, side_y = sides[:, 0], sides[:, 1]
    side_length = np.hypot(side_x, side_y)
    with np.errstate(divide="ignore", invalid="ignore"):
        normal_x, normal_y = -side_y / side_length, side_x / side_length
    offsets = normal_x * vertices[:, 0] + normal_y * vertices[:, 1]
    if not side_length.all():  # a repeated vertex: its side constrains nothing
        normal_x[side_length == 0] = normal_y[side_length == 0] = 0.0
        offsets[side_length == 0] = -np.inf
    return _Polygons(
        vertices=vertices,
        sides=sides,
        normal_x=normal_x,
        normal_y=normal_y,
        offsets=offsets,
        box_low=np.minimum.reduceat(vertices, layout.first),
        box_high=np.maximum.reduceat(vertices, layout.first),
    )


def _edges(polygons: _Polygons, instance_depth: np.ndarray, layout: _Layout, half: float) -> _Edges:
    """Every polygon side clipped to the frame ``[-half, half]^2``, then the frame's own sides,
    owned by no polygon and at depth -1, nearer than everything. A side wholly outside the
    frame becomes a point far outside it, owned by no polygon: it meets nothing and adds
    nothing. ``instance_depth`` is ``(B*n,)`` int64.
    """
    frame_starts, frame_steps = _frame_edges(half)
    frame_shape = (layout.scenes, 4, 2)
    starts = np.concatenate(
        [polygons.vertices.reshape(layout.scenes, -1, 2), np.broadcast_to(frame_starts, frame_shape)], axis=1
    ).reshape(-1, 2)
    steps = np.concatenate(
        [polygons.sides.reshape(layout.scenes, -1, 2), np.broadcast_to(frame_steps, frame_shape)], axis=1
    ).reshape(-1, 2)
    owner = layout.owner.copy()
    along_frame = np.zeros(len(starts), dtype=bool)
    on_or_beyond = np.abs(polygons.vertices) >= half  # (V, 2); on the frame too: see which side the polygon lies
    vertex_out = on_or_beyond[:, 0] | on_or_beyond[:, 1]
    cut_vertex = np.flatnonzero(vertex_out | vertex_out[layout.following])
    if cut_vertex.size:
        cut = layout.edge_of_vertex[cut_vertex]
        kept, clipped_starts, clipped_steps, clipped_along = _clip_to_frame(
            polygons.vertices[cut_vertex], polygons.sides[cut_vertex], half
        )
        starts[cut], steps[cut] = clipped_starts, clipped_steps
        owner[cut] = np.where(kept, owner[cut], -1)
        along_frame[cut] = clipped_along
    return _Edges(
        starts=starts,
        steps=steps,
        lengths=np.hypot(steps[:, 0], steps[:, 1]),
        owner=owner,
        depth=np.where(owner >= 0, instance_depth[owner], -1),
        along_frame=along_frame,
    )


def _clip_to_frame(
    origins: np.ndarray, directions: np.ndarray, half: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Liang-Barsky: the part in the frame ``[-half, half]^2`` of each side ``origin + t * direction``,
    t in [0, 1] (both ``(C, 2)`` float64). Returns whether any part is kept ``(C,)`` bool, the
    kept part's start and step ``(C, 2)`` float64 (a point at ``FAR_AWAY`` where none), and
    whether the kept part runs along a frame line ``(C,)`` bool."""
    with np.errstate(divide="ignore", invalid="ignore"):
        to_low, to_high = (-half - origins) / directions, (half - origins) / directions
    axis_enter, axis_leave = np.minimum(to_low, to_high), np.maximum(to_low, to_high)  # (C, 2)
    parallel = directions == 0
    along = np.zeros(len(origins), dtype=bool)
    if parallel.any():
        # parallel to a frame line: inside, outside, or along it; along it, a side stays
        # only if its polygon lies on the frame's side
        inward = np.stack([-directions[:, 1], directions[:, 0]], axis=1) * origins < 0
        stays_in = (np.abs(origins) < half) | ((np.abs(origins) == half) & inward)
        axis_enter = np.where(parallel, np.where(stays_in, -np.inf, np.inf), axis_enter)
        axis_leave = np.where(parallel, np.where(stays_in, np.inf, -np.inf), axis_leave)
        along = (parallel & (np.abs(origins) == half)).any(axis=1)
    enter, leave = np.maximum(axis_enter.max(axis=1), 0.0), np.minimum(axis_leave.min(axis=1), 1.0)
    kept = enter < leave
    kept_from, kept_to = np.where(kept, enter, 0.0)[:, None], np.where(kept, leave, 0.0)[:, None]
    kept_starts = np.where(kept[:, None], origins + kept_from * directions, FAR_AWAY)
    return kept, kept_starts, directions * (kept_to - kept_from), along & kept


@lru_cache(maxsize=16)
def _frame_edges(half: float) -> tuple[np.ndarray, np.ndarray]:
    """The frame's sides' starts and steps, ``(4, 2)`` float64 each, oriented so that the outside
    of the frame is on their left."""
    starts = np.array([[-half, -half], [-half, half], [half, half], [half, -half]])
    return starts, np.roll(starts, -1, axis=0) - starts


def _covers(
    edges: _Edges, polygons: _Polygons, instance_depth: np.ndarray, layout: _Layout
) -> tuple[_Covers, np.ndarray]:
    """Every interval of an edge that another polygon of its scene covers (``_Covers``), and
    which scenes are declined ``(B,)`` bool. ``instance_depth`` is ``(B*n,)`` int64.

    Pairs whose boxes overlap are candidates; circles about each polygon settle most of
    them, and Cyrus-Beck clipping the rest.
    """
    candidates = _candidate_pairs(edges, polygons, layout)
    whole, straddling = _settle_by_circles(candidates, edges, polygons, layout)
    lo, hi, kind, declined = _cyrus_beck(straddling, edges, polygons, layout)
    hit = lo < hi
    cover_edge = np.concatenate([whole.edge, straddling.edge[hit]])
    cover_polygon = np.concatenate([whole.polygon, straddling.polygon[hit]])
    cover_kind = np.concatenate([np.zeros(whole.edge.size, dtype=np.int64), kind[hit]])
    cover_depth = instance_depth[cover_polygon]
    edge_depth = edges.depth[cover_edge]
    covers = _Covers(
        edge=cover_edge,
        polygon=cover_polygon,
        lo=np.concatenate([np.zeros(whole.edge.size), lo[hit]]),
        hi=np.concatenate([np.ones(whole.edge.size), hi[hit]]),
        kind=cover_kind,
        depth=cover_depth,
        edge_depth=edge_depth,
        # An edge piece on a nearer polygon's side with that polygon on the same side is
        # hidden; with it on the other side, it is not. A nearer polygon's piece counts on
        # k's boundary only from k's interior, and never where a yet nearer polygon (or one
        # abutting it) continues the cover.
        hides=cover_kind != OPPOSITE,
        joins_union=(cover_kind != SAME) | (cover_depth < edge_depth),
    )
    return covers, declined


def _candidate_pairs(edges: _Edges, polygons: _Polygons, layout: _Layout) -> _Pairs:
    """The (edge, polygon) pairs of each scene whose boxes overlap, never a polygon with
    its own edge, in the order of a ``(B, E, n)`` matrix."""
    scenes, n = layout.scenes, layout.polygons
    ends = edges.starts + edges.steps
    edge_low = np.minimum(edges.starts, ends).reshape(scenes, -1, 1, 2)
    edge_high = np.maximum(edges.starts, ends).reshape(scenes, -1, 1, 2)
    box_low, box_high = polygons.box_low.reshape(scenes, 1, n, 2), polygons.box_high.reshape(scenes, 1, n, 2)
    near = (
        (edge_low[..., 0] <= box_high[..., 0])
        & (edge_high[..., 0] >= box_low[..., 0])
        & (edge_low[..., 1] <= box_high[..., 1])
        & (edge_high[..., 1] >= box_low[..., 1])
    )
    near.reshape(-1)[layout.own_pairs] = False
    flat_pair = np.flatnonzero(near)
    pair_edge = flat_pair // n
    return _Pairs(edge=pair_edge, polygon=(pair_edge // layout.edges) * n + flat_pair % n)


def _settle_by_circles(
    candidates: _Pairs, edges: _Edges, polygons: _Polygons, layout: _Layout
) -> tuple[_Pairs, _Pairs]:
    """Circles about each polygon's vertex mean settle most pairs: an edge inside the
    inscribed circle is covered whole; one outside the circumscribed circle not at all.
    Returns the pairs covered whole and those that straddle (neither), both subsets of
    ``candidates`` in its order."""
    centre = np.add.reduceat(polygons.vertices, layout.first) / layout.counts[:, None]  # (B*n, 2)
    from_centre = polygons.vertices - np.repeat(centre, layout.counts, axis=0)  # (V, 2)
    outer_radius_sq = np.maximum.reduceat(from_centre[:, 0] ** 2 + from_centre[:, 1] ** 2, layout.first)
    inner_radius = -np.maximum.reduceat(
        polygons.normal_x * from_centre[:, 0] + polygons.normal_y * from_centre[:, 1], layout.first
    )
    edge, polygon = candidates.edge, candidates.polygon
    rel_x = edges.starts[:, 0][edge] - centre[polygon, 0]  # (P,): the edge's start relative to the centre
    rel_y = edges.starts[:, 1][edge] - centre[polygon, 1]
    step_x, step_y = edges.steps[:, 0][edge], edges.steps[:, 1][edge]
    farthest_sq = np.maximum(rel_x * rel_x + rel_y * rel_y, (rel_x + step_x) ** 2 + (rel_y + step_y) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        closest_t = np.clip(-(rel_x * step_x + rel_y * step_y) / (step_x * step_x + step_y * step_y), 0.0, 1.0)
    nearest_sq = (rel_x + closest_t * step_x) ** 2 + (rel_y + closest_t * step_y) ** 2
    whole = farthest_sq < (inner_radius[polygon] * (1 - SAFETY)) ** 2
    straddle = ~whole & (nearest_sq < outer_radius_sq[polygon] * (1 + SAFETY) ** 2)
    return _Pairs(edge=edge[whole], polygon=polygon[whole]), _Pairs(edge=edge[straddle], polygon=polygon[straddle])


def _cyrus_beck(
    pairs: _Pairs, edges: _Edges, polygons: _Polygons, layout: _Layout
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cyrus-Beck over every pair: the interval ``[lo, hi]`` of each pair's edge inside its
    polygon (``(P,)`` float64 each, empty where ``lo >= hi``), how it meets the edge ``(P,)``
    int64 (INTERIOR, SAME, OPPOSITE), and which scenes are declined ``(B,)`` bool.

    Pairs go in blocks of at most ``BLOCK_TESTS`` edge-side tests whose polygons have the
    same number of sides (``_clip_block``): every pair's result depends on that pair alone.
    """
    declined = np.zeros(layout.scenes, dtype=bool)
    lo, hi = np.zeros(pairs.edge.size), np.zeros(pairs.edge.size)
    kind = np.zeros(pairs.edge.size, dtype=np.int64)
    if not pairs.edge.size:
        return lo, hi, kind, declined
    sides_per_pair = layout.counts[pairs.polygon]
    near_parallel_limit = GRAZING * edges.lengths.max()
    for sides in layout.side_counts:
        members = np.flatnonzero(sides_per_pair == sides)
        step = max(1, BLOCK_TESTS // sides)
        for start in range(0, members.size, step):
            block = members[start : start + step]
            _clip_block(block, pairs, sides, near_parallel_limit, edges, polygons, layout, (lo, hi, kind, declined))
    return lo, hi, kind, declined


def _clip_block(
    block: np.ndarray,
    pairs: _Pairs,
    sides: int,
    near_parallel_limit: float,
    edges: _Edges,
    polygons: _Polygons,
    layout: _Layout,
    out: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """Cyrus-Beck for the pairs ``block`` ``(M,)`` int64, whose polygons have ``sides`` sides,
    written into ``out`` (``_cyrus_beck``'s ``lo``, ``hi``, ``kind`` and ``declined``).

    Sides whose ``|rate|`` is below ``near_parallel_limit`` (a superset: the limit of the
    longest edge) are checked apart. An edge crossing, or running within rounding of, a
    side's line at a grazing angle has ill-conditioned crossings: such scenes go to GEOS
    rather than risk rounding. Exactly on the line, the edge only touches the polygon,
    running with (SAME) or against (OPPOSITE) it; strictly outside a parallel side, it misses.
    """
    lo, hi, kind, declined = out
    edge = pairs.edge[block]
    tests = _side_tests(edge, pairs.polygon[block], sides, edges, polygons, layout)
    lo[block] = np.maximum(np.where(tests.rate > 0, tests.crossing, -np.inf).max(axis=0), 0.0)
    hi[block] = np.minimum(np.where(tests.rate < 0, tests.crossing, np.inf).min(axis=0), 1.0)
    side, pair = np.nonzero(np.abs(tests.rate) < near_parallel_limit)
    if pair.size:
        row_edge = edge[pair]
        declined[row_edge[_grazing(tests, pair, side, row_edge, edges)] // layout.edges] = True
        contacts = _parallel_contacts(tests, pair, side, row_edge, edges, polygons)
        if contacts is not None:
            blocked, same, opposite = contacts
            hi[block[blocked]] = -1.0
            kind[block] = np.where(same, SAME, np.where(opposite, OPPOSITE, INTERIOR))


def _side_tests(
    edge: np.ndarray, polygon: np.ndarray, sides: int, edges: _Edges, polygons: _Polygons, layout: _Layout
) -> _SideTests:
    """The edges ``edge`` ``(M,)`` against every side of their polygons ``polygon`` ``(M,)``,
    each of which has ``sides`` sides (``_SideTests``)."""
    side = np.arange(sides)[:, None] + layout.first[polygon]  # (S, M)
    normal_x, normal_y = polygons.normal_x[side], polygons.normal_y[side]
    start_x, start_y = edges.starts[edge, 0], edges.starts[edge, 1]  # (M,) each
    step_x, step_y = edges.steps[edge, 0], edges.steps[edge, 1]
    level = start_x * normal_x + start_y * normal_y - polygons.offsets[side]
    rate = step_x * normal_x + step_y * normal_y
    with np.errstate(divide="ignore", invalid="ignore"):
        crossing = -level / rate
    return _SideTests(sides=side, level=level, rate=rate, crossing=crossing)


def _grazing(tests: _SideTests, pair: np.ndarray, side: np.ndarray, row_edge: np.ndarray, edges: _Edges) -> np.ndarray:
    """Which of the tests ``(pair, side)`` (``(N,)`` int64 each; their edges ``row_edge``
    ``(N,)`` int64) cross or run within rounding of their side's line at a grazing angle:
    ``(N,)`` bool."""
    level, rate, crossing = tests.level[side, pair], tests.rate[side, pair], tests.crossing[side, pair]
    grazing = np.abs(rate) < GRAZING * edges.lengths[row_edge]
    grazing &= ((crossing >= 0) & (crossing <= 1)) | (np.abs(level) <= TOUCHING)
    grazing &= (level != 0) | (rate != 0)
    return grazing


def _parallel_contacts(
    tests: _SideTests, pair: np.ndarray, side: np.ndarray, row_edge: np.ndarray, edges: _Edges, polygons: _Polygons
) -> np.ndarray | None:
    """Per pair ``(3, M)`` bool: its edge lies strictly outside a parallel side (blocked), or on
    one running the same way (SAME) or the opposite way (OPPOSITE); None when no pair's edge
    is on or outside a parallel side. ``pair``, ``side`` and ``row_edge`` are as for ``_grazing``."""
    level, parallel = tests.level[side, pair], tests.rate[side, pair] == 0
    if not (parallel & (level <= 0)).any():
        return None
    sides = tests.sides[side, pair]
    step_x, step_y = edges.steps[:, 0][row_edge], edges.steps[:, 1][row_edge]
    along = step_x * polygons.normal_y[sides] - step_y * polygons.normal_x[sides] > 0
    flags = np.zeros((3, tests.level.shape[1]), dtype=bool)  # per pair: blocked, SAME, OPPOSITE
    flags[0, pair[parallel & (level < 0)]] = True
    flags[SAME, pair[parallel & (level == 0) & along]] = True
    flags[OPPOSITE, pair[parallel & (level == 0) & ~along]] = True
    return flags


def _pieces(covers: _Covers, edges: _Edges) -> _Pieces:
    """Every edge split at 0 and at its cover ends; a piece's own cover and union cover are
    the least depths among the covers of each sort spanning it (``_Pieces``)."""
    num_edges, num_covers = len(edges.starts), covers.edge.size
    cut_edge = np.concatenate([np.arange(num_edges), covers.edge, covers.edge])
    cut_t = np.concatenate([np.zeros(num_edges), covers.lo, covers.hi])
    order = np.lexsort((cut_t, cut_edge))
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    piece_edge, piece_a = cut_edge[order], cut_t[order]
    piece_b = np.append(piece_a[1:], 1.0)
    piece_b[np.flatnonzero(piece_edge[1:] != piece_edge[:-1])] = 1.0
    first_piece, end_piece = rank[num_edges : num_edges + num_covers], rank[num_edges + num_covers :]  # (C,) each
    span = end_piece - first_piece
    spanned = np.repeat(first_piece - np.cumsum(span) + span, span) + np.arange(int(span.sum()))
    # union key: 2 * depth, + 1 when the cover only touches (then nothing lies beneath)
    spanned_key = np.repeat(2 * covers.depth + (covers.kind != INTERIOR), span)
    union_key = np.full(order.size, NO_COVER)
    if covers.hides.all() and covers.joins_union.all():
        np.minimum.at(union_key, spanned, spanned_key)
        hidden_by = np.where(union_key == NO_COVER, NO_COVER, union_key // 2)
    else:
        hidden_by = np.full(order.size, NO_COVER)
        hiding = covers.hides
        np.minimum.at(hidden_by, spanned[np.repeat(hiding, span)], np.repeat(covers.depth[hiding], span[hiding]))
        in_union = np.repeat(covers.joins_union, span)
        np.minimum.at(union_key, spanned[in_union], spanned_key[in_union])
    return _Pieces(edge=piece_edge, a=piece_a, b=piece_b, hidden_by=hidden_by, union_key=union_key)


def _boundary(pieces: _Pieces, edges: _Edges, instance_depth: np.ndarray, layout: _Layout) -> _Boundary:
    """The visible parts' boundary pieces (``_Boundary``): first the pieces of each polygon's own
    edges that no nearer polygon hides, forwards; then the pieces of nearer edges (the frame's
    included) whose nearest cover is a polygon's interior, backwards, for that polygon.
    ``instance_depth`` is ``(B*n,)`` int64."""
    scenes, n = layout.scenes, layout.polygons
    piece_depth = edges.depth[pieces.edge]
    union_depth = pieces.union_key // 2
    nonempty = pieces.b > pieces.a
    own = nonempty & (pieces.hidden_by > piece_depth) & (edges.owner[pieces.edge] >= 0)
    under = nonempty & (pieces.union_key != NO_COVER) & (pieces.union_key % 2 == 0) & (piece_depth < union_depth)
    under &= ~edges.along_frame[pieces.edge]  # beyond such a piece lies the outside, not a cover
    instance_at_depth = (np.argsort(instance_depth.reshape(scenes, n), axis=1) + np.arange(scenes)[:, None] * n).ravel()
    under_scene = pieces.edge[under] // layout.edges
    instance = np.concatenate([edges.owner[pieces.edge[own]], instance_at_depth[under_scene * n + union_depth[under]]])
    sign = np.ones(instance.size)
    sign[int(own.sum()) :] = -1.0
    return _Boundary(
        instance=instance,
        edge=np.concatenate([pieces.edge[own], pieces.edge[under]]),
        a=np.concatenate([pieces.a[own], pieces.a[under]]),
        b=np.concatenate([pieces.b[own], pieces.b[under]]),
        sign=sign,
    )


def _area(boundary: _Boundary, edges: _Edges, count: int) -> np.ndarray:
    """Visible area ``(count,)`` float64 of each polygon by Green's theorem: a piece from t=a to
    t=b of the edge p + t*s contributes cross(p, s) * (b - a) / 2."""
    start_x, start_y = edges.starts[:, 0], edges.starts[:, 1]
    step_x, step_y = edges.steps[:, 0], edges.steps[:, 1]
    cross = (start_x * step_y - start_y * step_x)[boundary.edge]
    return np.bincount(
        boundary.instance, weights=boundary.sign * (boundary.b - boundary.a) * 0.5 * cross, minlength=count
    )


def _box(boundary: _Boundary, edges: _Edges, count: int, half: float) -> np.ndarray:
    """Visible boxes ``(count, 4)`` float64, ``(x, y, w, h)`` in image px, from the boundary pieces
    longer than rounding debris (a piece of 1e-15 px is not "visible")."""
    long_enough = (boundary.b - boundary.a) * edges.lengths[boundary.edge] > DEBRIS
    edge, a, b = boundary.edge[long_enough], boundary.a[long_enough], boundary.b[long_enough]
    start_x, start_y = edges.starts[:, 0][edge], edges.starts[:, 1][edge]
    step_x, step_y = edges.steps[:, 0][edge], edges.steps[:, 1][edge]
    x_a, x_b = start_x + a * step_x, start_x + b * step_x
    y_a, y_b = start_y + a * step_y, start_y + b * step_y
    lows = np.column_stack([np.minimum(x_a, x_b), np.minimum(y_a, y_b)])
    highs = np.column_stack([np.maximum(x_a, x_b), np.maximum(y_a, y_b)])
    return _boxes(boundary.instance[long_enough], lows, highs, count, origin=half)


def _occluded(covers: _Covers, edges: _Edges, count: int) -> np.ndarray:
    """Which of the ``count`` polygons a nearer one overlaps with positive area, ``(count,)``
    bool: a nearer cover hides part of its edge, or its interior holds a nearer polygon's edge."""
    occluded = np.zeros(count, dtype=bool)
    occluded[edges.owner[covers.edge[covers.hides & (covers.depth < covers.edge_depth)]]] = True
    inside_farther = (covers.kind == INTERIOR) & (edges.owner[covers.edge] >= 0) & (covers.edge_depth < covers.depth)
    occluded[covers.polygon[inside_farther]] = True
    return occluded
