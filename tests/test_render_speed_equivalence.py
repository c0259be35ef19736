"""The fast rasteriser, layer maps, outline drawing and visibility runs give exactly the
bytes of the straightforward versions they replaced, which are kept here as oracles."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from shapesgen import preset, render_scenes
from shapesgen import visibility as visibility_module
from shapesgen.raster import draw_outlines, layer_maps, rasterize_convex, rasterize_convex_counted
from shapesgen.renderer import _front_masks, scene_rng
from shapesgen.storage.digests import digest
from shapesgen.storage.encode import deflate
from shapesgen.storage.layout import INSTANCE_DTYPE
from shapesgen.visibility import boundary_visibility


def oracle_rasterize_convex(rings: np.ndarray, size: int, scale: float) -> np.ndarray:
    """Every edge against every row of a window as tall as the tallest polygon."""
    q = np.concatenate([rings, rings[:, :1]], axis=1) / scale
    x0, y0 = q[:, :-1, 0], q[:, :-1, 1]
    x1, y1 = q[:, 1:, 0], q[:, 1:, 1]
    out = np.zeros((len(rings), size, size), dtype=bool)
    first = np.clip(np.ceil(y0.min(axis=1) - 0.5), 0, size).astype(np.int64)
    stop = np.clip(np.floor(y0.max(axis=1) - 0.5) + 1, 0, size).astype(np.int64)
    span = int((stop - first).max(initial=0))
    if span <= 0:
        return out
    rows = np.minimum(first, size - span)[:, None] + np.arange(span)
    centres = (rows + 0.5)[:, None, :]
    y0c, y1c = y0[:, :, None], y1[:, :, None]
    crosses = (y0c <= centres) != (y1c <= centres)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inverse_dy = (1.0 / (y1 - y0))[:, :, None]
        t = (centres - y0c) * inverse_dy
        x_at = x0[:, :, None] + t * (x1 - x0)[:, :, None]
    left = np.where(crosses, x_at, np.inf).min(axis=1)
    right = np.where(crosses, x_at, -np.inf).max(axis=1)
    columns = np.arange(size) + 0.5
    out[np.arange(len(rings))[:, None], rows] = (left[:, :, None] <= columns) & (columns < right[:, :, None])
    return out


def oracle_layer_maps(amodal: np.ndarray, depth: np.ndarray, layers: int) -> np.ndarray:
    """A running coverage count, instance by instance from the front."""
    _, h, w = amodal.shape
    out = np.zeros((layers, h * w), dtype=np.uint16)
    count = np.zeros(h * w, dtype=np.uint16)
    for index in np.argsort(depth, kind="stable"):
        covered = np.flatnonzero(amodal[index])
        rank = count[covered]
        count[covered] = rank + 1
        in_stack = rank < layers
        out[rank[in_stack], covered[in_stack]] = index + 1
    return out.reshape(layers, h, w)


def oracle_draw_outlines(
    rings: list[np.ndarray], depth: np.ndarray, image_size: int, outline_px: int, channels: int
) -> np.ndarray:
    """Through ImageDraw's public calls."""
    image = Image.new("L", (image_size, image_size), 255)
    draw = ImageDraw.Draw(image)
    for index in np.argsort(depth, kind="stable")[::-1]:
        points = rings[index].ravel().tolist()
        draw.polygon(points, fill=255)
        draw.line(points + points[:2], fill=0, width=outline_px, joint="curve")
    pixels = np.asarray(image)[:, :, None]
    return np.repeat(pixels, channels, axis=2) if channels > 1 else pixels.copy()


# pixel-centre hits (k/2), eighths, and generic values, in and beyond a 32-px frame
coordinate = st.one_of(
    st.integers(-8, 72).map(lambda k: k / 2),
    st.integers(-64, 300).map(lambda k: k / 8),
    st.floats(-40, 80, allow_nan=False, width=64),
)


@st.composite
def ring_sets(draw: st.DrawFn, least_vertices: int = 1) -> np.ndarray:
    """k rings of V vertices: any polygons, repeated vertices (padded rings) included."""
    k, v = draw(st.integers(0, 5)), draw(st.integers(least_vertices, 9))
    points = draw(st.lists(st.tuples(coordinate, coordinate), min_size=k * v, max_size=k * v))
    rings = np.array(points, dtype=np.float64).reshape(k, v, 2)
    if k and draw(st.booleans()):
        rings[:, -1] = rings[:, -2 if v > 1 else 0]
    return rings


@settings(max_examples=150, deadline=None)
@given(rings=ring_sets(), size=st.integers(1, 33), scale=st.sampled_from([0.5, 1.0, 2.0, 3.0, 4.0]))
def test_rasterize_convex_equals_the_windowed_scan(rings: np.ndarray, size: int, scale: float) -> None:
    expected = oracle_rasterize_convex(rings, size, scale)
    assert np.array_equal(rasterize_convex(rings, size, scale), expected)
    masks, counts = rasterize_convex_counted(rings, size, scale)
    assert np.array_equal(masks, expected)
    assert np.array_equal(counts, expected.sum(axis=(1, 2)))


@settings(max_examples=120, deadline=None)
@given(
    n=st.sampled_from([0, 1, 2, 5, 17, 32, 33, 47, 64, 65, 70]),
    layers=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
    density=st.floats(0.05, 0.95),
    as_bool=st.booleans(),
)
def test_layer_maps_equal_the_running_count(n: int, layers: int, seed: int, density: float, as_bool: bool) -> None:
    """Every word size (32, 64 bits) and the counting fallback beyond 64 instances, with
    depth ties, for one scene and for a batch of three."""
    rng = np.random.default_rng(seed)
    amodal = rng.random((3, n, 5, 7)) < density
    depth = rng.integers(0, max(n, 1), size=(3, n))
    masks = amodal if as_bool else amodal.astype(np.uint8)
    expected = np.stack([oracle_layer_maps(amodal[s], depth[s], layers) for s in range(3)])
    for s in range(3):
        assert np.array_equal(layer_maps(masks[s], depth[s], layers), expected[s])
    assert np.array_equal(layer_maps(masks, depth, layers), expected)
    assert np.array_equal(layer_maps(masks[None], depth[None], layers), expected[None])


@settings(max_examples=40, deadline=None)
@given(
    rings=st.lists(ring_sets(least_vertices=3).filter(lambda r: len(r) > 0), min_size=1, max_size=3),
    outline=st.integers(1, 7),
    channels=st.sampled_from([1, 3]),
    data=st.data(),
)
def test_outlines_equal_image_draw(rings: list[np.ndarray], outline: int, channels: int, data: st.DataObject) -> None:
    flat = [ring for group in rings for ring in group]
    depth = np.array(data.draw(st.permutations(range(len(flat)))), dtype=np.int64)
    drawn = draw_outlines(flat, depth, 32, outline, channels)
    assert drawn.tobytes() == oracle_draw_outlines(flat, depth, 32, outline, channels).tobytes()


@settings(max_examples=60, deadline=None)
@given(
    scenes=st.integers(1, 3),
    n=st.sampled_from([1, 2, 6, 18, 65]),
    shape=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    seed=st.integers(0, 2**32 - 1),
)
def test_front_masks_equal_the_id_comparison(scenes: int, n: int, shape: tuple[int, int], seed: int) -> None:
    """Visible masks scattered from the front layer: those the renderer compared id by id."""
    front = np.random.default_rng(seed).integers(0, n + 1, size=(scenes, *shape)).astype(np.uint16)
    masks, counts = _front_masks(front, n)
    expected = front[:, None] == np.arange(1, n + 1)[None, :, None, None]
    assert masks.dtype == bool and masks.shape == expected.shape and np.array_equal(masks, expected)
    assert counts.dtype == np.int32 and np.array_equal(counts, expected.sum(axis=(2, 3), dtype=np.int32))


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from([np.bool_, np.uint8, np.uint16, np.int64, np.float64, INSTANCE_DTYPE]),
    shape=st.tuples(st.integers(0, 5), st.integers(0, 9)),
    transposed=st.booleans(),
    level=st.sampled_from([1, 4]),
    seed=st.integers(0, 2**32 - 1),
)
def test_arrays_hash_and_compress_as_their_bytes(
    dtype: type, shape: tuple[int, int], transposed: bool, level: int, seed: int
) -> None:
    """Digests and chunks of arrays read in place equal those of their ``tobytes()`` copies."""
    raw = np.random.default_rng(seed).integers(0, 256, size=(*shape, np.dtype(dtype).itemsize), dtype=np.uint8)
    data = raw.view(dtype).reshape(shape)
    data = data.T if transposed else data
    assert digest(data) == hashlib.sha256(data.tobytes()).digest()
    contiguous = np.ascontiguousarray(data)
    assert deflate(contiguous.data, level) == deflate(contiguous.tobytes(), level)


@pytest.mark.parametrize(("name", "instances"), [("paper", 4), ("extended", 2), ("rectangles", 6)])
def test_visibility_is_the_same_in_runs_and_blocks_of_any_size(
    name: str, instances: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenes measured one at a time, Cyrus-Beck one pair at a time: the same bits."""
    from shapesgen import geometry

    config = preset(name).replace(instances_per_class=instances, seed=3)
    poses = geometry.stack_poses([geometry.sample_poses(config, scene_rng(3, i)) for i in range(5)])
    rings = geometry.class_rings(config, poses)
    whole, declined = boundary_visibility(rings, poses.depth, config.image_size)
    monkeypatch.setattr(visibility_module, "RUN_PAIRS", 1)
    monkeypatch.setattr(visibility_module, "BLOCK_TESTS", 1)
    split, split_declined = boundary_visibility(rings, poses.depth, config.image_size)
    for field in ("area", "box", "occluded"):
        assert getattr(split, field).tobytes() == getattr(whole, field).tobytes(), field
    assert np.array_equal(split_declined, declined)


SCENE_FIELDS = ("image", "layers", "class_layers", "amodal_masks", "visible_masks", "instances", "vertices")

# sha256 of scenes 0-2 (seed 5), every field, as rendered before the speed-ups (2d336bb):
# both word sizes of the layer bit sets (18 and 36 instances), the counting fallback (66),
# outlines wider than 4 px (curved joints), RGB and small frames
PINNED = [
    ("paper", 6, 3, {}, "29f6656503a1a4e89e8c402a22f036973ea76ce899937620b02d8b4ce16fc61d"),
    ("paper", 12, 4, {}, "b8c6502edd920524cee2cc4e71a1c66661f87131cd52e4bc25493ec4e4eb51bf"),
    (
        "paper",
        1,
        2,
        {"image_size": 64, "mask_size": 64},
        "de1dd1e38948a34594500875fcfb985c1c6774588c3cc5708aeecb449c00dd6d",
    ),
    ("extended", 4, 3, {}, "6e0fa73e4347e74f92ff9f456387eaabf73ef25170666c54751902e2dca8a69c"),
    ("paper", 3, 3, {"outline_width": 0.03}, "45f2bdb7d0eb1ecc71bc4589bd994e490cf574caae8907127668e115702f7077"),
    (
        "paper",
        22,
        2,
        {"image_size": 64, "mask_size": 32},
        "714eb41559c84ba1765b1e4c4035ab3d6cea9abe5a7d5355510ae7fc7c306abd",
    ),
    (
        "rectangles",
        8,
        5,
        {"channels": 3, "image_size": 128, "mask_size": 32},
        "8b97546064a174c9134ad75f48ee42e8c20846fc387205000427c73d7c68ccf9",
    ),
]


@pytest.mark.parametrize(("name", "instances", "layers", "extra", "pinned"), PINNED)
def test_scenes_keep_their_bytes(name: str, instances: int, layers: int, extra: dict, pinned: str) -> None:
    config = preset(name).replace(instances_per_class=instances, layers=layers, seed=5, **extra)
    digest = hashlib.sha256()
    for scene in render_scenes(config, range(3)):
        for field in (*SCENE_FIELDS, "vertex_offsets"):
            digest.update(np.ascontiguousarray(getattr(scene, field)).tobytes())
    assert digest.hexdigest() == pinned


@settings(max_examples=20, deadline=None)
@given(
    rings=st.lists(ring_sets(least_vertices=3).filter(lambda r: len(r) > 0), min_size=1, max_size=3),
    outline=st.integers(1, 4),
    data=st.data(),
)
def test_outlines_without_pillows_private_core_are_the_same(
    rings: list[np.ndarray], outline: int, data: st.DataObject
) -> None:
    """Where Pillow's core lacks ``map_buffer`` (it is not public API), ImageDraw draws the same image."""
    from PIL import Image

    flat = [ring for group in rings for ring in group]
    depth = np.array(data.draw(st.permutations(range(len(flat)))), dtype=np.int64)
    fast = draw_outlines(flat, depth, 32, outline, 1)
    with pytest.MonkeyPatch.context() as patch:
        patch.delattr(Image.core, "map_buffer")
        public = draw_outlines(flat, depth, 32, outline, 1)
    assert public.tobytes() == fast.tobytes()
