"""Dataset summaries for ``shapesgen info``: counts and occlusion statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shapesgen.storage.reader import ShapesDataset, open_dataset

OCCLUSION_BANDS = ("none", "partial", "heavy")
NONE_MAX = 1e-5  # rate <= NONE_MAX: not occluded
HEAVY_MIN = 0.25  # rate >= HEAVY_MIN: heavily occluded; between the two: partial
SCENE_BLOCK = 256


def occlusion_band(rate: np.ndarray) -> np.ndarray:
    """Band name per occlusion rate, as in the paper: none <= 1e-5 < partial < 0.25 <= heavy."""
    return np.where(rate <= NONE_MAX, "none", np.where(rate < HEAVY_MIN, "partial", "heavy"))


def summarize(ds: ShapesDataset) -> dict[str, Any]:
    """Counts, class balance, occlusion-rate and stack-depth histograms."""
    offsets = ds.instance_offsets
    table = ds.instances[: int(offsets[-1])]  # the written scenes' rows only (an unfinished render may hold more)
    visible = table["is_visible"]
    rates = table["pixel_occlusion_rate"][visible]
    names = ds.class_names
    stack_hist = np.zeros(ds.config.num_instances + 1, dtype=np.int64)
    for start in range(0, len(ds), SCENE_BLOCK):
        stop = min(start + SCENE_BLOCK, len(ds))
        masks = ds.amodal_masks[offsets[start] : offsets[stop]]
        depth = np.add.reduceat(masks, offsets[start:stop] - offsets[start], axis=0, dtype=np.int64)
        stack_hist += np.bincount(depth.ravel(), minlength=stack_hist.size)
    last = int(np.flatnonzero(stack_hist)[-1]) if stack_hist.any() else 0
    edges = np.linspace(0.0, 1.0, 11)
    hist, _ = np.histogram(rates, bins=edges)
    bands = occlusion_band(rates)
    pixels = stack_hist.sum()
    return {
        "path": str(ds.path),
        "format_version": str(ds.attrs["format_version"]),
        "package_version": str(ds.attrs["package_version"]),
        "created": str(ds.attrs["created"]),
        "complete": ds.complete,
        "seed": ds.seed,
        "split": ds.split.to_dict() if ds.split is not None else None,
        "config": ds.config.to_dict(),
        "scenes": len(ds),
        "instances": int(len(table)),
        "visible_instances": int(visible.sum()),
        "per_class": {
            name: {
                "instances": int((table["class_id"] == c + 1).sum()),
                "visible": int(((table["class_id"] == c + 1) & visible).sum()),
            }
            for c, name in enumerate(names)
        },
        "occlusion_bands": {band: int((bands == band).sum()) for band in OCCLUSION_BANDS},
        "occlusion_histogram": {f"{edges[i]:.1f}-{edges[i + 1]:.1f}": int(hist[i]) for i in range(len(hist))},
        "mean_occlusion_rate": float(rates.mean()) if rates.size else 0.0,
        "stack_depth_pixels": {str(d): int(stack_hist[d]) for d in range(last + 1)},
        "pixels_deeper_than_layers": float(stack_hist[ds.config.layers + 1 :].sum() / max(pixels, 1)),
    }


def summarize_file(path: str | Path) -> dict[str, Any]:
    """:func:`summarize` of the dataset at ``path`` (an unfinished render too), or of a
    sharded dataset folder (its shards' summaries added up)."""
    from shapesgen.storage.manifest import is_sharded
    from shapesgen.storage.reader import open_sharded

    if is_sharded(path):
        with open_sharded(path) as sharded:
            parts = [summarize(sharded.shard(k)) for k in range(len(sharded.shards))]
        return merge_summaries(str(path), parts)
    with open_dataset(path, allow_incomplete=True) as ds:
        return summarize(ds)


def merge_summaries(path: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary of a dataset from its shards' (:func:`summarize` of each, in order)."""
    first = parts[0]
    visible = sum(p["visible_instances"] for p in parts)
    stack: dict[str, int] = {}
    for part in parts:
        for depth, count in part["stack_depth_pixels"].items():
            stack[depth] = stack.get(depth, 0) + count
    stack = {str(d): stack.get(str(d), 0) for d in range(max(map(int, stack), default=0) + 1)}
    layers = first["config"]["layers"]
    deeper = sum(count for depth, count in stack.items() if int(depth) > layers)

    def added(key: str) -> dict[str, int]:
        return {name: sum(p[key][name] for p in parts) for name in first[key]}

    return first | {
        "path": path,
        "shards": len(parts),
        "complete": all(p["complete"] for p in parts),
        "scenes": sum(p["scenes"] for p in parts),
        "instances": sum(p["instances"] for p in parts),
        "visible_instances": visible,
        "per_class": {
            name: {k: sum(p["per_class"][name][k] for p in parts) for k in ("instances", "visible")}
            for name in first["per_class"]
        },
        "occlusion_bands": added("occlusion_bands"),
        "occlusion_histogram": added("occlusion_histogram"),
        "mean_occlusion_rate": sum(p["mean_occlusion_rate"] * p["visible_instances"] for p in parts) / max(visible, 1),
        "stack_depth_pixels": stack,
        "pixels_deeper_than_layers": deeper / max(sum(stack.values()), 1),
    }
