"""Preview grids: image | layer 1..N instance maps | amodal outlines, one row per scene."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage.color import label2rgb
from skimage.segmentation import find_boundaries

from shapesgen.errors import ConfigError
from shapesgen.files import check_file_output, refuse_overwriting_inputs, write_atomically
from shapesgen.hdf5 import ShapesDataset, open_dataset
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
    scale = max(1, size // scene.amodal_masks.shape[1])
    side = scene.amodal_masks.shape[1] * scale
    outline = np.ones((side, side, 3))
    for index in np.argsort(scene.instances["depth"])[::-1]:
        big = np.kron(scene.amodal_masks[index], np.ones((scale, scale), dtype=bool))
        outline[find_boundaries(big, mode="inner")] = colours[index]
    tiles.append(_upsample((outline * 255).astype(np.uint8), size))
    return tiles


def preview_grid(ds: ShapesDataset, count: int, start: int = 0) -> Image.Image:
    """A labelled grid of ``count`` scenes starting at ``start``."""
    size = min(ds.config.image_size, MAX_TILE)
    num_layers = min(ds.config.layers, MAX_LAYER_COLUMNS)
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


MAX_TILE = 512  # preview tiles are at most this many pixels a side
MAX_ROWS = 64  # scenes in one preview
MAX_LAYER_COLUMNS = 8  # layers shown; deeper ones are left out of the preview


def write_preview(
    path: str | Path, out: str | Path, *, count: int = 4, start: int = 0, force: bool = False
) -> Path:
    """Write the preview grid of ``count`` scenes from ``start`` as a PNG, atomically
    (an existing ``out`` is replaced only with ``force=True``)."""
    if not isinstance(count, int) or not 1 <= count <= MAX_ROWS:
        raise ConfigError(f"count={count!r} is invalid: must be an integer in [1, {MAX_ROWS}]", param="count")
    refuse_overwriting_inputs(Path(out), "out", {"path": path})
    out = check_file_output(out, "out", force)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"out={str(out)!r} is invalid: the preview is a PNG, give a path ending in .png", param="out")
    with open_dataset(path) as ds:
        if not isinstance(start, int) or not 0 <= start < len(ds):
            raise ConfigError(
                f"start={start!r} is invalid: the dataset has scenes 0..{len(ds) - 1}", param="start"
            )
        grid = preview_grid(ds, count, start)
    png = io.BytesIO()
    grid.save(png, format="PNG")
    return write_atomically(out, png.getvalue(), force=force)
