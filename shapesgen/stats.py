"""Dataset summaries for ``shapesgen info``: counts and occlusion statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shapesgen.hdf5 import ShapesDataset, open_dataset

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
    """:func:`summarize` of the dataset at ``path`` (an unfinished render too)."""
    with open_dataset(path, allow_incomplete=True) as ds:
        return summarize(ds)
