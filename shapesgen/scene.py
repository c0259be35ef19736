"""One scene as a pure function of (config, index)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

from shapesgen import geometry, raster
from shapesgen.config import SceneConfig
from shapesgen.errors import ConfigError
from shapesgen.schema import INSTANCE_DTYPE
from shapesgen.visibility import visibility


@dataclass(frozen=True)
class Scene:
    """Everything rendered for one scene (see ``docs/format.md`` for each field)."""

    index: int
    image: np.ndarray  # (S, S, C) uint8
    layers: np.ndarray  # (L, M, M) uint16
    class_layers: np.ndarray  # (L, M, M) uint8
    amodal_masks: np.ndarray  # (n, M, M) bool
    visible_masks: np.ndarray  # (n, M, M) bool
    instances: np.ndarray  # (n,) INSTANCE_DTYPE
    vertices: np.ndarray  # (V, 2) float64
    vertex_offsets: np.ndarray  # (n + 1,) int64, local to this scene


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of scene ``index``: independent of worker count and order."""
    return np.random.default_rng([seed, index])


def render_scene(config: SceneConfig, index: int) -> Scene:
    """Render scene ``index`` of the dataset defined by ``config`` (its seed must be set)."""
    if config.seed is None:
        raise ConfigError("seed=None is invalid here: resolve a seed before rendering scenes")
    if index < 0:
        raise ConfigError(f"index={index} is invalid: must be >= 0")
    poses = geometry.sample_poses(config, scene_rng(config.seed, index))
    rings = geometry.class_rings(config, poses)
    full = geometry.polygons(rings)
    amodal = geometry.clip_to_frame(full, config.image_size)
    seen = visibility(rings, poses.depth, config.image_size)

    m, scale = config.mask_size, config.mask_scale
    amodal_masks = np.concatenate([raster.rasterize_convex(group, m, scale) for group in rings])
    layers = raster.layer_maps(amodal_masks, poses.depth, config.layers)
    class_of_id = np.concatenate([[0], poses.class_index + 1]).astype(np.uint8)
    class_layers = class_of_id[layers]
    visible_masks = layers[0][None, :, :] == np.arange(1, config.num_instances + 1)[:, None, None]
    flat_rings = [ring for group in rings for ring in group]
    image = raster.draw_outlines(flat_rings, poses.depth, config.image_size, config.outline_pixels, config.channels)

    vertices, vertex_offsets = geometry.exterior_rings(amodal)
    table = np.zeros(config.num_instances, dtype=INSTANCE_DTYPE)
    area = shapely.area(amodal)
    bbox = geometry.box_xywh(amodal)
    visible_area = np.where(seen.occluded, np.clip(seen.area, 0.0, area), area)
    full_area = shapely.area(full)
    amodal_px = amodal_masks.sum(axis=(1, 2), dtype=np.int32)
    visible_px = visible_masks.sum(axis=(1, 2), dtype=np.int32)
    table["scene"] = index
    table["id"] = np.arange(1, config.num_instances + 1)
    table["class_id"] = poses.class_index + 1
    table["depth"] = poses.depth
    table["anchor_x"], table["anchor_y"] = poses.anchors[:, 0], poses.anchors[:, 1]
    table["angle"] = poses.angles
    table["area"] = area
    table["visible_area"] = visible_area
    table["occlusion_rate"] = np.where(area > 0, 1.0 - visible_area / np.where(area > 0, area, 1.0), 0.0)
    table["truncation"] = 1.0 - area / full_area
    table["bbox"] = bbox
    table["visible_bbox"] = np.where(seen.occluded[:, None], seen.box, bbox)
    table["amodal_pixels"] = amodal_px
    table["visible_pixels"] = visible_px
    table["pixel_occlusion_rate"] = 1.0 - visible_px / np.maximum(amodal_px, 1)
    table["is_visible"] = visible_px > 0
    return Scene(
        index=index,
        image=image,
        layers=layers,
        class_layers=class_layers,
        amodal_masks=amodal_masks,
        visible_masks=visible_masks,
        instances=table,
        vertices=vertices,
        vertex_offsets=vertex_offsets,
    )
