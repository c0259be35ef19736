"""Rasterisation: exact masks, N-layer maps and the outline image.

Masks sample pixel centres: mask pixel ``(r, c)`` belongs to a polygon when the point
``((c + 0.5) * s, (r + 0.5) * s)`` (image pixels, ``s`` = image pixels per mask pixel)
lies inside it, with the half-open rule on edges. This equals shapely's exact
point-in-polygon test away from edges, with no anti-aliasing or resampling.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw


class _BitStack(NamedTuple):
    """A pixel's covering instances as a bit set in one word, for up to ``bits`` instances."""

    bits: int
    word: type[np.unsignedinteger]
    real: type[np.floating]  # holds every power of two of a word exactly
    mantissa: int  # bits of ``real``'s mantissa: 2^b has biased exponent ``bias + b`` above them
    bias: int


_BIT_STACKS = (_BitStack(32, np.uint32, np.float32, 23, 127), _BitStack(64, np.uint64, np.float64, 52, 1023))


def rasterize_convex(rings: np.ndarray, size: int, scale: float) -> np.ndarray:
    """Masks ``(k, size, size)`` of convex polygons ``rings`` ``(k, V, 2)`` in image px.

    Scanline form: on each row the polygon covers one interval between its two edge
    crossings. Each edge is met only on the rows its y-range spans, and each row's
    interval is filled, so the work is about ``k * (height + area)`` in mask pixels.
    """
    return rasterize_convex_counted(rings, size, scale)[0]


def rasterize_convex_counted(rings: np.ndarray, size: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``rasterize_convex``'s masks, and each mask's pixel count ``(k,)`` int64 summed from its rows' widths."""
    k = len(rings)
    left, right = _row_intervals(rings, size, scale)
    columns = np.arange(size) + 0.5
    first = np.searchsorted(columns, left.ravel(), "left")  # first column with centre >= left
    width = np.maximum(np.searchsorted(columns, right.ravel(), "left") - first, 0)  # centres < right
    start = np.arange(k * size) * size + first
    out = np.zeros(k * size * size, dtype=bool)
    out[np.arange(int(width.sum())) + np.repeat(start - (np.cumsum(width) - width), width)] = True
    return out.reshape(k, size, size), width.reshape(k, size).sum(axis=1)


def _row_intervals(rings: np.ndarray, size: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Least and greatest x (mask px) where each polygon's edges cross each row's centre line,
    ``(k, size)`` float64 each; +inf and -inf on rows no edge crosses.

    An edge from y0 to y1 crosses row r when ``(y0 <= r + 0.5) != (y1 <= r + 0.5)``, at
    ``x0 + ((r + 0.5 - y0) * (1 / (y1 - y0))) * (x1 - x0)``.
    """
    k, v = rings.shape[:2]
    q = rings / scale
    x0, y0 = q[..., 0].ravel(), q[..., 1].ravel()
    ahead = np.roll(q, -1, axis=1)
    x1, y1 = ahead[..., 0].ravel(), ahead[..., 1].ravel()
    centres = np.arange(size) + 0.5
    top = np.searchsorted(centres, np.minimum(y0, y1), "left")  # rows with centre >= the lower y ...
    count = np.searchsorted(centres, np.maximum(y0, y1), "left") - top  # ... and < the greater y
    edge = np.repeat(np.arange(k * v), count)
    row = np.arange(edge.size) - np.repeat(np.cumsum(count) - count - top, count)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inverse_dy = 1.0 / (y1 - y0)
        x_at = x0[edge] + (((row + 0.5) - y0[edge]) * inverse_dy[edge]) * (x1 - x0)[edge]
    key = (edge // v) * size + row
    left = np.full(k * size, np.inf)
    right = np.full(k * size, -np.inf)
    np.minimum.at(left, key, x_at)
    np.maximum.at(right, key, x_at)
    return left.reshape(k, size), right.reshape(k, size)


def layer_maps(amodal: np.ndarray, depth: np.ndarray, layers: int) -> np.ndarray:
    """Instance ids ``(..., layers, h, w)``: layer k holds the k-th instance from the top.

    ``amodal`` is ``(..., n, h, w)`` in instance order and ``depth`` ``(..., n)``; leading
    axes are scenes, mapped independently. Ids are ``index + 1``, 0 is background (fewer
    than k+1 instances cover the pixel); ties in ``depth`` go to the lower index. Each
    pixel's covering instances form a bit set, bit j for the j-th nearest; layer k is the
    k-th lowest set bit.
    """
    *leading, n, h, w = amodal.shape
    scenes = int(np.prod(leading, dtype=np.int64))
    cover = amodal.reshape(scenes, n, h * w)
    order = np.argsort(np.reshape(depth, (scenes, n)), axis=1, kind="stable")
    stack_type = next((s for s in _BIT_STACKS if n <= s.bits), None)
    if stack_type is None:
        out = np.stack([_layer_maps_by_count(cover[s], order[s], layers) for s in range(scenes)])
        return out.reshape(*leading, layers, h, w)
    bits, word, real, mantissa, bias = stack_type
    weight = np.zeros((scenes, n), dtype=word)
    np.put_along_axis(weight, order, word(1) << np.arange(n, dtype=word), axis=1)
    covering = cover if cover.dtype == bool else cover != 0
    stack = np.zeros((scenes, h * w), dtype=word)
    for index in range(n):  # each instance's bit, set where it covers (cheaper than a sum of products)
        np.bitwise_or(stack, weight[:, index : index + 1], out=stack, where=covering[:, index])
    # the lowest set bit b of a word is exactly 2^b as a float: its biased exponent is bias + b
    table = np.zeros((scenes, bias + bits + 1), dtype=np.uint16)
    table[:, bias : bias + n] = order + 1
    out = np.zeros((scenes, layers, h * w), dtype=np.uint16)
    for k in range(min(layers, n)):
        lowest = stack & (~stack + word(1))
        exponent = lowest.astype(real).view(word) >> word(mantissa)
        for s in range(scenes):
            np.take(table[s], exponent[s], out=out[s, k])
        stack ^= lowest
    return out.reshape(*leading, layers, h, w)


def _layer_maps_by_count(cover: np.ndarray, order: np.ndarray, layers: int) -> np.ndarray:
    """``layer_maps`` of one scene for any number of instances, ``(layers, P)``: a running
    coverage count, front to back (``order``), gives each instance its rank at each pixel
    of ``cover`` ``(n, P)`` that it covers."""
    out = np.zeros((layers, cover.shape[1]), dtype=np.uint16)
    count = np.zeros(cover.shape[1], dtype=np.uint16)
    for index in order:
        covered = np.flatnonzero(cover[index])
        rank = count[covered]
        count[covered] = rank + 1
        in_stack = rank < layers
        out[rank[in_stack], covered[in_stack]] = index + 1
    return out


def draw_outlines(
    rings: list[np.ndarray], depth: np.ndarray, image_size: int, outline_px: int, channels: int
) -> np.ndarray:
    """Background-coloured shapes with black outlines, drawn back to front.

    Outlines are centred on the polygon boundary (as in the reference code) and a
    later (nearer) shape's fill hides what lies beneath it, so only outlines show.
    Outlines up to 4 px wide are drawn by Pillow's core straight into the returned
    array's memory, with the calls ``ImageDraw.polygon(fill=255)`` and
    ``ImageDraw.line(fill=0, joint="curve")`` make; that core is not Pillow's public
    API, so where it is missing or changed the public ``ImageDraw`` draws the same
    pixels (as it always does for wider outlines, the only ones with curved joints).
    """
    order = np.argsort(depth, kind="stable")[::-1]
    pixels = _draw_into_array(rings, order, image_size, outline_px) if outline_px <= 4 else None
    if pixels is None:
        pixels = _draw_with_imagedraw(rings, order, image_size, outline_px)
    return np.repeat(pixels[:, :, None], channels, axis=2) if channels > 1 else pixels[:, :, None]


def _draw_into_array(rings: list[np.ndarray], order: np.ndarray, image_size: int, outline_px: int) -> np.ndarray | None:
    """The outlines drawn by Pillow's core into a new array's memory (no image, no copy);
    None where this Pillow's core lacks or changed those calls."""
    pixels = np.full((image_size, image_size), 255, dtype=np.uint8)
    try:
        core = Image.core.draw(Image.core.map_buffer(pixels, (image_size, image_size), "raw", 0, ("L", 0, 1)), 0)
        white, black = core.draw_ink(255), core.draw_ink(0)
        for index in order:
            points = rings[index].ravel().tolist()
            core.draw_polygon(points, white, 1)
            points += points[:2]
            core.draw_lines(points, black, outline_px)
    except (AttributeError, TypeError, ValueError):
        return None
    return pixels


def _draw_with_imagedraw(rings: list[np.ndarray], order: np.ndarray, image_size: int, outline_px: int) -> np.ndarray:
    """The outlines drawn through Pillow's public ``ImageDraw``, then copied out."""
    image = Image.new("L", (image_size, image_size), 255)
    draw = ImageDraw.Draw(image)
    for index in order:
        points = rings[index].ravel().tolist()
        draw.polygon(points, fill=255)
        draw.line(points + points[:2], fill=0, width=outline_px, joint="curve")
    return np.array(image)
