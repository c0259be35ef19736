"""Rasterisation: exact masks, N-layer maps and the outline image.

Masks sample pixel centres: mask pixel ``(r, c)`` belongs to a polygon when the point
``((c + 0.5) * s, (r + 0.5) * s)`` (image pixels, ``s`` = image pixels per mask pixel)
lies inside it, with the half-open rule on edges. This equals shapely's exact
point-in-polygon test away from edges, with no anti-aliasing or resampling.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def rasterize_convex(rings: np.ndarray, size: int, scale: float) -> np.ndarray:
    """Masks ``(k, size, size)`` of convex polygons ``rings`` ``(k, V, 2)`` in image px.

    Scanline form: on each row the polygon covers one interval between its two edge
    crossings. Only a window of rows as tall as the tallest polygon is scanned, so
    the work is ``k * V * rows`` plus one comparison per pixel of the window.
    """
    q = np.concatenate([rings, rings[:, :1]], axis=1) / scale
    x0, y0 = q[:, :-1, 0], q[:, :-1, 1]
    x1, y1 = q[:, 1:, 0], q[:, 1:, 1]
    out = np.zeros((len(rings), size, size), dtype=bool)
    first = np.clip(np.ceil(y0.min(axis=1) - 0.5), 0, size).astype(np.int64)
    stop = np.clip(np.floor(y0.max(axis=1) - 0.5) + 1, 0, size).astype(np.int64)
    span = int((stop - first).max(initial=0))
    if span <= 0:
        return out
    rows = np.minimum(first, size - span)[:, None] + np.arange(span)  # (k, span), inside the mask
    centres = (rows + 0.5)[:, None, :]
    y0c, y1c = y0[:, :, None], y1[:, :, None]
    crosses = (y0c <= centres) != (y1c <= centres)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inverse_dy = (1.0 / (y1 - y0))[:, :, None]
        t = (centres - y0c) * inverse_dy  # in [0, 1] on every crossing edge; others are masked below
        x_at = x0[:, :, None] + t * (x1 - x0)[:, :, None]
    left = np.where(crosses, x_at, np.inf).min(axis=1)
    right = np.where(crosses, x_at, -np.inf).max(axis=1)
    columns = np.arange(size) + 0.5
    out[np.arange(len(rings))[:, None], rows] = (left[:, :, None] <= columns) & (columns < right[:, :, None])
    return out


def layer_maps(amodal: np.ndarray, depth: np.ndarray, layers: int) -> np.ndarray:
    """Instance ids ``(layers, h, w)``: layer k holds the k-th instance from the top.

    ``amodal`` is ``(n, h, w)`` in instance order, ids are ``index + 1``, 0 is
    background (fewer than k+1 instances cover the pixel). A running coverage count,
    front to back, gives each instance its rank at each pixel it covers.
    """
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


def draw_outlines(
    rings: list[np.ndarray], depth: np.ndarray, image_size: int, outline_px: int, channels: int
) -> np.ndarray:
    """Background-coloured shapes with black outlines, drawn back to front.

    Outlines are centred on the polygon boundary (as in the reference code) and a
    later (nearer) shape's fill hides what lies beneath it, so only outlines show.
    """
    image = Image.new("L", (image_size, image_size), 255)
    draw = ImageDraw.Draw(image)
    for index in np.argsort(depth, kind="stable")[::-1]:
        points = rings[index].ravel().tolist()
        draw.polygon(points, fill=255)
        draw.line(points + points[:2], fill=0, width=outline_px, joint="curve")
    pixels = np.asarray(image)[:, :, None]
    return np.repeat(pixels, channels, axis=2) if channels > 1 else pixels.copy()
