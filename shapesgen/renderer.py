"""The scene renderer: one scene as a pure function of (config, index), rendered alone or in a batch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import shapely

from shapesgen import geometry, raster
from shapesgen.config import SceneConfig
from shapesgen.errors import ConfigError
from shapesgen.shapes import SHAPE_KINDS
from shapesgen.storage.layout import Scene, instance_table
from shapesgen.visibility import visibility


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of scene ``index``: independent of worker count and order."""
    return np.random.default_rng([seed, index])


VECTOR_BUDGET = 4 * 2**20  # (edge, polygon) pairs examined per vectorised call


def scenes_per_call(config: SceneConfig) -> int:
    """How many scenes one vectorised call handles: their (edge, polygon) candidate
    matrices together stay within ``VECTOR_BUDGET`` (a 64-scene paper batch is one call;
    100 instances of 128-gons go 7 scenes at a time, peaking near 0.6 GB)."""
    sides = sum(len(SHAPE_KINDS[spec.kind].template(config.circle_segments)) for spec in config.shapes)
    edges = sides * config.instances_per_class + 4
    return max(1, VECTOR_BUDGET // (edges * config.num_instances))


def render_scene(config: SceneConfig, index: int) -> Scene:
    """Render scene ``index`` of the dataset defined by ``config`` (its seed must be set)."""
    return render_scenes(config, [index])[0]


def render_scenes(config: SceneConfig, indices: Sequence[int]) -> list[Scene]:
    """Render several scenes at once; each equals ``render_scene(config, index)`` bit for bit.

    Geometry, visibility, masks and tables are computed for the whole batch in
    vectorised calls (every per-scene quantity only ever combines values of its own
    scene, in the same order), which amortises NumPy's per-call cost over the batch.
    """
    if config.seed is None:
        raise ConfigError("seed=None is invalid here: resolve a seed before rendering scenes")
    if any(index < 0 for index in indices):
        raise ConfigError(f"index={min(indices)} is invalid: must be >= 0")
    if not indices:
        return []
    per_call = scenes_per_call(config)
    if len(indices) > per_call:  # bound the memory of the vectorised arrays
        return [
            scene
            for lo in range(0, len(indices), per_call)
            for scene in render_scenes(config, indices[lo : lo + per_call])
        ]
    count, n = len(indices), config.num_instances
    poses = geometry.stack_poses([geometry.sample_poses(config, scene_rng(config.seed, i)) for i in indices])
    rings = geometry.class_rings(config, poses)  # per class: (count, k, V, 2)
    full = geometry.polygons(rings).reshape(-1)
    amodal = geometry.clip_to_frame(full, config.image_size)
    seen = visibility(rings, poses.depth, config.image_size)

    m, scale = config.mask_size, config.mask_scale
    rasters = [raster.rasterize_convex_counted(g.reshape(-1, *g.shape[-2:]), m, scale) for g in rings]
    amodal_masks = np.concatenate([masks.reshape(count, -1, m, m) for masks, _ in rasters], axis=1)
    amodal_px = np.concatenate([px.reshape(count, -1) for _, px in rasters], axis=1).astype(np.int32)
    layers = raster.layer_maps(amodal_masks, poses.depth, config.layers)  # all scenes in one call
    class_of_id = np.concatenate([[0], poses.class_index[0] + 1]).astype(np.uint8)  # the same in every scene
    class_layers = np.take(class_of_id, layers)
    ids = np.arange(1, n + 1)
    visible_masks, visible_px = _front_masks(layers[:, 0], n)
    vertices, vertex_offsets = geometry.exterior_rings(amodal)

    area = shapely.area(amodal).reshape(count, n)
    bbox = geometry.box_xywh(amodal).reshape(count, n, 4)
    visible_area = np.where(seen.occluded, np.clip(seen.area, 0.0, area), area)
    full_area = shapely.area(full).reshape(count, n)
    occlusion_rate = np.where(area > 0, 1.0 - visible_area / np.where(area > 0, area, 1.0), 0.0)
    table = instance_table(
        {
            "scene": np.asarray(indices)[:, None],
            "id": ids,
            "class_id": poses.class_index + 1,
            "depth": poses.depth,
            "anchor_x": poses.anchors[..., 0],
            "anchor_y": poses.anchors[..., 1],
            "angle": poses.angles,
            "area": area,
            "visible_area": visible_area,
            "occlusion_rate": occlusion_rate,
            "truncation": 1.0 - area / full_area,
            "bbox": bbox,
            "visible_bbox": np.where(seen.occluded[..., None], seen.box, bbox),
            "amodal_pixels": amodal_px,
            "visible_pixels": visible_px,
            "pixel_occlusion_rate": 1.0 - visible_px / np.maximum(amodal_px, 1),
            "is_visible": visible_px > 0,
        },
        (count, n),
    )

    scenes = []
    for b, index in enumerate(indices):
        flat_rings = [ring for group in rings for ring in group[b]]
        image = raster.draw_outlines(
            flat_rings, poses.depth[b], config.image_size, config.outline_pixels, config.channels
        )
        v0, v1 = vertex_offsets[b * n], vertex_offsets[(b + 1) * n]
        scenes.append(
            Scene(
                index=index,
                image=image,
                layers=layers[b],
                class_layers=class_layers[b],
                amodal_masks=amodal_masks[b],
                visible_masks=visible_masks[b],
                instances=table[b],
                vertices=vertices[v0:v1],
                vertex_offsets=vertex_offsets[b * n : (b + 1) * n + 1] - v0,
            )
        )
    return scenes


def _front_masks(front: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Visible masks ``(scenes, n, h, w)`` bool and their pixel counts ``(scenes, n)`` int32
    from the front layers ``(scenes, h, w)`` (instance ids, 0 = background): each pixel is
    scattered into its front instance's mask, background into a slot dropped after."""
    scenes, h, w = front.shape
    slot = (front.reshape(scenes, h * w) + (np.arange(scenes) * (n + 1))[:, None]).ravel()
    masks = np.zeros((scenes * (n + 1), h * w), dtype=bool)
    masks[slot, np.tile(np.arange(h * w), scenes)] = True
    counts = np.bincount(slot, minlength=scenes * (n + 1)).astype(np.int32)
    return masks.reshape(scenes, n + 1, h, w)[:, 1:], counts.reshape(scenes, n + 1)[:, 1:]
