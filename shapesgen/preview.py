"""Preview grids: image | layer 1..N instance maps | amodal outlines, one row per scene."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage.color import label2rgb
from skimage.segmentation import find_boundaries

from shapesgen.hdf5 import ShapesDataset
from shapesgen.scene import Scene

HEADER = 18
GAP = 4


def _palette(n: int) -> np.ndarray:
    """Distinct, stable colours for ids 1..n (golden-ratio hues)."""
    hues = (np.arange(n) * 0.618033988749895) % 1.0
    hsv = np.stack([hues, np.full(n, 0.75), np.full(n, 0.95)], axis=1)
    rgb = Image.fromarray((hsv[None] * 255).astype(np.uint8), "HSV").convert("RGB")
    return np.asarray(rgb)[0].astype(np.float64) / 255.0


def _upsample(tile: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(tile).resize((size, size), Image.Resampling.NEAREST))


def scene_tiles(scene: Scene, num_layers: int, size: int) -> list[np.ndarray]:
    """RGB uint8 tiles for one scene, each ``size`` x ``size``."""
    n = len(scene.instances)
    colours = _palette(n)
    image = scene.image if scene.image.shape[2] == 3 else np.repeat(scene.image, 3, axis=2)
    tiles = [np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.NEAREST))]
    for k in range(num_layers):
        rgb = label2rgb(scene.layers[k], colors=colours, bg_label=0, bg_color=(1, 1, 1))
        tiles.append(_upsample((rgb * 255).astype(np.uint8), size))
    scale = size // scene.amodal_masks.shape[1]
    outline = np.ones((size, size, 3))
    for index in np.argsort(scene.instances["depth"])[::-1]:
        big = np.kron(scene.amodal_masks[index], np.ones((scale, scale), dtype=bool))
        outline[find_boundaries(big, mode="inner")] = colours[index]
    tiles.append((outline * 255).astype(np.uint8))
    return tiles


def preview_grid(ds: ShapesDataset, count: int, start: int = 0) -> Image.Image:
    """A labelled grid of ``count`` scenes starting at ``start``."""
    size = ds.config.image_size
    num_layers = ds.config.layers
    labels = ["image"] + [f"layer {k + 1}" for k in range(num_layers)] + ["amodal masks"]
    columns = len(labels)
    rows = range(start, min(start + count, len(ds)))
    width = columns * size + (columns + 1) * GAP
    height = HEADER + len(rows) * (size + GAP) + GAP
    canvas = Image.new("RGB", (width, height), (40, 40, 40))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for c, label in enumerate(labels):
        draw.text((GAP + c * (size + GAP) + 2, 3), label, fill=(235, 235, 235), font=font)
    for r, index in enumerate(rows):
        for c, tile in enumerate(scene_tiles(ds[index], num_layers, size)):
            canvas.paste(Image.fromarray(tile), (GAP + c * (size + GAP), HEADER + r * (size + GAP)))
    return canvas
