"""Geometry and layer invariants as properties over random scenes and polygons."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shapesgen import SceneConfig, render_scene, renderer
from shapesgen.config import shape_specs
from shapesgen.geometry import box_xywh, clip_to_frame, visible_geometry
from shapesgen.raster import layer_maps, rasterize_convex
from shapesgen.renderer import render_scenes
from shapesgen.shapes import SHAPE_KINDS
from shapesgen.visibility import boundary_visibility, overlay_visibility, solid_box, visibility


@st.composite
def configs(draw: st.DrawFn) -> SceneConfig:
    mask_size = draw(st.sampled_from([8, 16, 32]))
    image_size = mask_size * draw(st.sampled_from([1, 2, 4]))
    kinds = draw(st.lists(st.sampled_from(sorted(SHAPE_KINDS)), min_size=1, max_size=3, unique=True))
    return SceneConfig(
        image_size=max(image_size, 8),
        mask_size=mask_size,
        shapes=shape_specs(kinds),
        instances_per_class=draw(st.integers(1, 5)),
        layers=draw(st.integers(1, 4)),
        anchor=draw(st.sampled_from(["corner", "center"])),
        seed=draw(st.integers(0, 2**32)),
    )


def naive_layers(amodal: np.ndarray, depth: np.ndarray, num_layers: int) -> np.ndarray:
    """Per-pixel reference: sort the covering instances by depth."""
    _, h, w = amodal.shape
    out = np.zeros((num_layers, h, w), dtype=np.uint16)
    for y in range(h):
        for x in range(w):
            covering = sorted(np.flatnonzero(amodal[:, y, x]), key=lambda i: depth[i])
            for k, index in enumerate(covering[:num_layers]):
                out[k, y, x] = index + 1
    return out


@settings(max_examples=40, deadline=None)
@given(config=configs(), index=st.integers(0, 1000))
def test_scene_layer_invariants(config: SceneConfig, index: int) -> None:
    scene = render_scene(config, index)
    table, layers, amodal = scene.instances, scene.layers, scene.amodal_masks
    depth = table["depth"].astype(np.int64)
    ids = np.arange(1, len(table) + 1)[:, None, None]

    front_id = np.where(amodal.any(0), np.argmin(np.where(amodal, depth[:, None, None], 10**9), axis=0) + 1, 0)
    assert np.array_equal(layers[0], front_id), "layer 1 is the visible instance map"
    assert np.array_equal(scene.visible_masks, layers[0][None] == ids)
    for k in range(1, config.layers):
        assert not np.any((layers[k] > 0) & (layers[k - 1] == 0)), "layer k+1 lies inside layer k"
    in_layers = np.any(layers[None] == ids[:, None], axis=1)
    assert not np.any(in_layers & ~amodal), "an instance's layer pixels lie inside its amodal mask"
    shallow = amodal.sum(0) <= config.layers
    assert np.array_equal(in_layers & shallow, amodal & shallow), "equal where the stack is <= N deep"

    rate = table["occlusion_rate"]
    assert np.all((rate >= 0) & (rate <= 1))
    assert rate[np.argmin(depth)] == 0
    assert np.all(table["visible_area"] <= table["area"] + 1e-9)
    assert np.array_equal(table["is_visible"], scene.visible_masks.any(axis=(1, 2)))
    assert np.array_equal(np.sort(depth), np.arange(len(table)))


@settings(max_examples=25, deadline=None)
@given(config=configs(), index=st.integers(0, 1000))
def test_layer_maps_match_per_pixel_sorting(config: SceneConfig, index: int) -> None:
    scene = render_scene(config, index)
    depth = scene.instances["depth"].astype(np.int64)
    expected = naive_layers(scene.amodal_masks, depth, config.layers)
    assert np.array_equal(layer_maps(scene.amodal_masks, depth, config.layers), expected)


convex_rings = st.lists(
    st.tuples(st.floats(-10, 74, allow_nan=False), st.floats(-10, 74, allow_nan=False)), min_size=3, max_size=12
).map(lambda pts: shapely.convex_hull(shapely.multipoints(pts)))


@settings(max_examples=150, deadline=None)
@given(hull=convex_rings, size=st.sampled_from([8, 16, 32]))
@example(hull=shapely.convex_hull(shapely.multipoints([(0, 0), (0, 1), (1, 0), (1, 8.137650210912078e-219)])), size=8)
def test_rasteriser_equals_exact_point_in_polygon(hull: shapely.Geometry, size: int) -> None:
    if not isinstance(hull, shapely.Polygon) or hull.area < 1e-6:
        return
    ring = np.asarray(hull.exterior.coords)[:-1]
    scale = 64 / size
    mask = rasterize_convex(ring[None], size, scale)[0]
    centres = (np.arange(size) + 0.5) * scale
    x, y = np.meshgrid(centres, centres)
    inside = shapely.contains_xy(hull, x, y)
    with np.errstate(divide="ignore", invalid="ignore"):  # GEOS divides by an edge's squared length: 0 for 1e-219
        on_edge = shapely.distance(hull.exterior, shapely.points(x, y)) < 1e-9
    assert np.array_equal(mask[~on_edge], inside[~on_edge])


@settings(max_examples=40, deadline=None)
@given(config=configs(), index=st.integers(0, 1000))
def test_visible_geometry_equals_difference_with_the_union_in_front(config: SceneConfig, index: int) -> None:
    scene = render_scene(config, index)
    depth = scene.instances["depth"].astype(np.int64)
    offsets = scene.vertex_offsets
    amodal = np.array(
        [shapely.Polygon(scene.vertices[offsets[i] : offsets[i + 1]]) for i in range(len(depth))], dtype=object
    )
    visible = visible_geometry(amodal, depth)
    for i in range(len(depth)):
        in_front = amodal[depth < depth[i]]
        expected = amodal[i].difference(shapely.union_all(in_front)) if len(in_front) else amodal[i]
        assert abs(visible[i].area - expected.area) <= 1e-6 * max(1.0, amodal[i].area)
    assert np.allclose(shapely.area(visible), scene.instances["visible_area"], atol=1e-6)
    assert np.allclose(box_xywh(visible), scene.instances["visible_bbox"], atol=1e-9)


def reference_visibility(rings: list[np.ndarray], depth: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Visible areas and geometry by GEOS: frame-clipped polygon minus the union in front."""
    amodal = clip_to_frame(np.array([shapely.Polygon(r) for g in rings for r in g], dtype=object), size)
    visible = [amodal[i].difference(shapely.union_all(amodal[depth < depth[i]])) for i in range(len(depth))]
    return shapely.area(visible), np.array(visible, dtype=object)


def corners(box: np.ndarray) -> np.ndarray:
    return np.concatenate([box[:, :2], box[:, :2] + box[:, 2:]], axis=1)


def assert_box_between(box: np.ndarray, visible: np.ndarray) -> None:
    """The box covers every visible part with area and no more than all of GEOS's parts.

    Overlays leave zero-area slivers where rounding cuts, so the exact box lies between
    the box of the solid parts and the box of everything GEOS returns.
    """
    solid = solid_box(visible)
    ours, inner, outer = corners(box), corners(solid), corners(box_xywh(visible))
    has_solid, seen, tol = solid[:, 2:].all(axis=1), box[:, 2:].any(axis=1), 1e-7
    assert np.all(ours[has_solid, :2] <= inner[has_solid, :2] + tol)
    assert np.all(ours[has_solid, 2:] >= inner[has_solid, 2:] - tol)
    assert np.all(ours[seen, :2] >= outer[seen, :2] - tol)
    assert np.all(ours[seen, 2:] <= outer[seen, 2:] + tol)


def positive_ring(hull: shapely.Geometry) -> np.ndarray:
    ring = np.asarray(shapely.orient_polygons(hull).exterior.coords)[:-1]
    return ring


# grid points make exact degeneracies (shared sides and vertices, sides on the frame);
# the others are generic, at a resolution of 2^-20 px so that no detail lies below rounding
coordinate = st.one_of(
    st.integers(-20, 148).map(lambda k: k / 2), st.integers(-10 * 2**20, 74 * 2**20).map(lambda k: k / 2**20)
)
scene_polygons = st.lists(st.tuples(coordinate, coordinate), min_size=3, max_size=8).map(
    lambda pts: shapely.convex_hull(shapely.multipoints(pts))
)


@settings(max_examples=300, deadline=None)
@given(hulls=st.lists(scene_polygons, min_size=1, max_size=7), data=st.data())
def test_visibility_equals_geos_overlays_on_random_convex_polygons(hulls: list, data: st.DataObject) -> None:
    hulls = [h for h in hulls if isinstance(h, shapely.Polygon) and h.area > 1e-3]
    if not hulls:
        return
    rings = [positive_ring(h)[None] for h in hulls]
    depth = np.array(data.draw(st.permutations(range(len(rings)))), dtype=np.int64)
    seen = visibility(rings, depth, 64)
    area, visible = reference_visibility(rings, depth, 64)
    assert np.allclose(seen.area, area, rtol=1e-9, atol=1e-7)
    assert_box_between(seen.box, visible)


def test_grazing_crossings_are_measured_by_overlays() -> None:
    """A side at 1e-9 rad to the frame line: the boundary method declines, GEOS answers."""
    rings = [np.array([[[0.75, 0.0], [0.0, 1.0], [0.0, 1e-9]]])]
    assert boundary_visibility(rings, np.array([0]), 64)[1]
    area, visible = reference_visibility(rings, np.array([0]), 64)
    assert np.allclose(visibility(rings, np.array([0]), 64).area, area, rtol=1e-12)


def test_overlays_keep_a_part_bordered_by_two_copies_of_one_polygon() -> None:
    """Hypothesis's counterexample: two identical triangles in front of one that juts out
    past their shared side. Subtracting them one at a time, GEOS dropped the part left
    after the first copy (area 0); the visible part is 109.96 px^2."""
    front = [(0.0, 0.0), (-8.5, 45.01179027557373), (73.99999904632568, -9.0)]
    hulls = [
        [(0.0, 0.0), (0.0, 36.0), (13.0, 0.0)],
        front,
        [(0.0, 0.0), (0.0, 0.5), (0.5, 0.0)],
        [(0.0, 0.0), (0.0, 35.5), (71.0, 0.0)],
        front,
    ]
    rings = [positive_ring(shapely.Polygon(h))[None] for h in hulls]
    depth = np.array([0, 1, 2, 4, 3])
    area, _ = reference_visibility(rings, depth, 64)
    assert area[3] > 100
    assert np.allclose(overlay_visibility(rings, depth, 64).area, area, rtol=1e-9, atol=1e-7)
    assert np.allclose(visibility(rings, depth, 64).area, area, rtol=1e-9, atol=1e-7)


def square(x: float, y: float, side: float) -> np.ndarray:
    return np.array([[[x, y], [x + side, y], [x + side, y + side], [x, y + side]]])


@pytest.mark.parametrize(
    ("rings", "depth", "area", "occluded"),
    [
        ([square(10, 10, 20), square(10, 10, 20)], [0, 1], [400, 0], [False, True]),  # identical: hidden
        ([square(10, 10, 20), square(30, 10, 20)], [0, 1], [400, 400], [False, False]),  # shared side only
        ([square(10, 10, 20), square(10, 10, 40)], [0, 1], [400, 1200], [False, True]),  # shared corner sides
        ([square(15, 15, 5), square(10, 10, 20)], [0, 1], [25, 375], [False, True]),  # a hole
        ([square(-10, -10, 30), square(0, 0, 30)], [0, 1], [400, 500], [False, True]),  # along the frame
        ([square(70, 70, 10), square(50, 50, 10)], [0, 1], [0, 100], [False, False]),  # outside the frame
    ],
)
def test_visibility_in_degenerate_layouts(
    rings: list[np.ndarray], depth: list[int], area: list[float], occluded: list[bool]
) -> None:
    seen = visibility(rings, np.array(depth), 64)
    assert np.allclose(seen.area, area, atol=1e-9)
    assert seen.occluded.tolist() == occluded
    expected_area, visible = reference_visibility(rings, np.array(depth), 64)
    assert np.allclose(seen.area, expected_area, atol=1e-9)
    assert np.allclose(seen.box, box_xywh(visible), atol=1e-9)


SCENE_FIELDS = ("image", "layers", "class_layers", "amodal_masks", "visible_masks", "instances", "vertices")


@settings(max_examples=15, deadline=None)
@given(config=configs(), indices=st.lists(st.integers(0, 500), min_size=1, max_size=6))
def test_a_batch_renders_each_scene_as_it_renders_alone(config: SceneConfig, indices: list[int]) -> None:
    for batched in render_scenes(config, indices):
        alone = render_scene(config, batched.index)
        for field in (*SCENE_FIELDS, "vertex_offsets"):
            assert getattr(batched, field).tobytes() == getattr(alone, field).tobytes(), field


def test_large_batches_are_split_without_changing_a_bit(
    tiny_config: SceneConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = render_scenes(tiny_config, range(7))
    monkeypatch.setattr("shapesgen.renderer.VECTOR_BUDGET", 1)  # one scene per vectorised call
    assert renderer.scenes_per_call(tiny_config) == 1
    for split, kept in zip(render_scenes(tiny_config, range(7)), whole, strict=True):
        assert all(getattr(split, f).tobytes() == getattr(kept, f).tobytes() for f in SCENE_FIELDS)


def test_scenes_are_pure_functions_of_config_and_index(tiny_config: SceneConfig) -> None:
    a, b = render_scene(tiny_config, 5), render_scene(tiny_config, 5)
    other = render_scene(tiny_config, 6)
    assert a.image.tobytes() == b.image.tobytes() and a.instances.tobytes() == b.instances.tobytes()
    assert a.image.tobytes() != other.image.tobytes()


def test_image_shows_only_outlines(tiny_config: SceneConfig) -> None:
    image = render_scene(tiny_config.replace(channels=3), 0).image
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert set(np.unique(image)) <= {0, 255} and (image == 0).any()
    assert np.array_equal(image[..., 0], image[..., 2])
