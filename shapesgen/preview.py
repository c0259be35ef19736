"""Preview grids, one row per scene: image | layer 1..N instance maps | amodal outlines,
or, next to a COCO results file, image | ground truth | predicted instances."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from warnings import warn

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage.color import label2rgb
from skimage.segmentation import find_boundaries

from shapesgen.coco import decode_segmentation
from shapesgen.errors import ConfigError, ShapesgenNote
from shapesgen.evaluate import GroundTruth, load_predictions
from shapesgen.files import check_file_output, refuse_overwriting_inputs, write_atomically
from shapesgen.storage.layout import Scene
from shapesgen.storage.reader import ShapesDataset, open_dataset

HEADER = 18
GAP = 4
MAX_TILE = 512  # preview tiles are at most this many pixels a side
MAX_ROWS = 64  # scenes in one preview
MAX_LAYER_COLUMNS = 8  # layers shown; deeper ones are left out of the preview
MAX_DRAWN = 100  # predictions drawn per scene: the best-scoring, as AR100 counts them
MATCH_IOU = 0.5  # a prediction matches a ground-truth instance from this IoU on
VISIBLE_TINT = 0.45  # share of an instance's colour in the fill of its visible part
PREDICTED_ALPHA = (0.1, 0.5)  # opacity of a predicted instance's fill at score 0 and 1 (clipped)
TEXT_MIN_TILE = 128  # scores and IoUs are written on tiles at least this many pixels a side


def _palette(n: int) -> np.ndarray:
    """Distinct, stable colours for ids 1..n (golden-ratio hues)."""
    hues = (np.arange(n) * 0.618033988749895) % 1.0
    hsv = np.stack([hues, np.full(n, 0.75), np.full(n, 0.95)], axis=1)
    rgb = Image.fromarray((hsv[None] * 255).astype(np.uint8), "HSV").convert("RGB")
    return np.asarray(rgb)[0].astype(np.float64) / 255.0


def _upsample(tile: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(tile).resize((size, size), Image.Resampling.NEAREST))


def _image_tile(scene: Scene, size: int) -> np.ndarray:
    image = scene.image if scene.image.shape[2] == 3 else np.repeat(scene.image, 3, axis=2)
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.NEAREST))


def scene_tiles(scene: Scene, num_layers: int, size: int) -> list[np.ndarray]:
    """RGB uint8 tiles for one scene, each ``size`` x ``size``."""
    n = len(scene.instances)
    colours = _palette(n)
    tiles = [_image_tile(scene, size)]
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


def _grid(labels: Sequence[str], rows: Sequence[Sequence[np.ndarray]], size: int) -> Image.Image:
    """Tiles of ``size`` pixels under their column labels, one row of tiles per scene."""
    columns = len(labels)
    width = columns * size + (columns + 1) * GAP
    height = HEADER + len(rows) * (size + GAP) + GAP
    canvas = Image.new("RGB", (width, height), (40, 40, 40))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for c, label in enumerate(labels):
        draw.text((GAP + c * (size + GAP) + 2, 3), label, fill=(235, 235, 235), font=font)
    for r, tiles in enumerate(rows):
        for c, tile in enumerate(tiles):
            canvas.paste(Image.fromarray(tile), (GAP + c * (size + GAP), HEADER + r * (size + GAP)))
    return canvas


def preview_grid(ds: ShapesDataset, count: int, start: int = 0) -> Image.Image:
    """A labelled grid of ``count`` scenes starting at ``start``."""
    size = min(ds.config.image_size, MAX_TILE)
    num_layers = min(ds.config.layers, MAX_LAYER_COLUMNS)
    labels = ["image"] + [f"layer {k + 1}" for k in range(num_layers)] + ["amodal masks"]
    rows = range(start, min(start + count, len(ds)))
    return _grid(labels, [scene_tiles(ds[index], num_layers, size) for index in rows], size)


def _check_preview_output(
    path: str | Path, out: str | Path, count: int, force: bool, results: str | Path | None = None
) -> Path:
    if not isinstance(count, int) or not 1 <= count <= MAX_ROWS:
        raise ConfigError(f"count={count!r} is invalid: must be an integer in [1, {MAX_ROWS}]", param="count")
    refuse_overwriting_inputs(Path(out), "out", {"path": path, "results": results})
    out = check_file_output(out, "out", force, "PNG")
    if out.suffix.lower() != ".png":
        raise ConfigError(f"out={str(out)!r} is invalid: the preview is a PNG, give a path ending in .png", param="out")
    return out


def _check_start(ds: ShapesDataset, start: int, count: int) -> None:
    """``start`` is a scene of ``ds``; a note if fewer than ``count`` scenes follow a later
    start (from scene 0, a short grid is the whole dataset: no surprise)."""
    if not isinstance(start, int) or not 0 <= start < len(ds):
        raise ConfigError(f"start={start!r} is invalid: the dataset has scenes 0..{len(ds) - 1}", param="start")
    if start > 0 and start + count > len(ds):
        shown = len(ds) - start
        last = len(ds) - 1
        note = f"count={count} from scene {start}: the dataset ends at scene {last}, so {shown} shown"
        warn(ShapesgenNote(note), stacklevel=3)


def _write_png(out: Path, grid: Image.Image, force: bool) -> Path:
    png = io.BytesIO()
    grid.save(png, format="PNG")
    return write_atomically(out, png.getvalue(), force=force, kind="PNG")


def write_preview(path: str | Path, out: str | Path, *, count: int = 4, start: int = 0, force: bool = False) -> Path:
    """Write the preview grid of ``count`` scenes from ``start`` as a PNG, atomically
    (an existing ``out`` is replaced only with ``force=True``)."""
    out = _check_preview_output(path, out, count, force)
    with open_dataset(path) as ds:
        _check_start(ds, start, count)
        grid = preview_grid(ds, count, start)
    return _write_png(out, grid, force)


@dataclass(frozen=True)
class Prediction:
    """One predicted instance of a scene: its amodal mask at the scene's mask size."""

    mask: np.ndarray  # (M, M) bool
    score: float


def match_predictions(gt_masks: np.ndarray, predictions: Sequence[Prediction]) -> tuple[np.ndarray, np.ndarray]:
    """Greedy class-agnostic matching, as COCO's at IoU 0.5: predictions in falling score
    order (ties: list order) each take the unmatched instance of highest IoU >= 0.5.

    Returns per ground-truth instance the index of its prediction (-1: missed) and the IoU.
    """
    n = len(gt_masks)
    matched, ious = np.full(n, -1, dtype=np.int64), np.zeros(n)
    if not n or not predictions:
        return matched, ious
    gt = gt_masks.reshape(n, -1).astype(np.float64)
    pred = np.stack([p.mask for p in predictions]).reshape(len(predictions), -1).astype(np.float64)
    inter = pred @ gt.T
    union = pred.sum(axis=1)[:, None] + gt.sum(axis=1)[None] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    for d in np.argsort([-p.score for p in predictions], kind="stable").tolist():
        free = np.where(matched < 0, iou[d], -1.0)
        best = int(np.argmax(free))
        if free[best] >= MATCH_IOU:
            matched[best], ious[best] = d, iou[d, best]
    return matched, ious


def _scaled(mask: np.ndarray, scale: int) -> np.ndarray:
    return np.kron(mask, np.ones((scale, scale), dtype=bool))


def _edge(mask: np.ndarray, scale: int) -> np.ndarray:
    """The inner outline of ``mask`` upsampled ``scale`` times, ``scale // 2`` pixels (at least 1) thick."""
    inside = _scaled(mask, scale)
    edge = np.zeros_like(inside)
    for _ in range(max(1, scale // 2)):
        ring = find_boundaries(inside, mode="inner")
        edge |= ring
        inside &= ~ring
    return edge


def _dashes(side: int, scale: int) -> np.ndarray:
    """Where a dashed outline is drawn: diagonal bands of ``2 * scale`` pixels."""
    period = max(2, 2 * scale)
    yy, xx = np.indices((side, side))
    return ((yy + xx) // period) % 2 == 0


def _label(tile: np.ndarray, texts: Sequence[tuple[np.ndarray, str]], size: int) -> np.ndarray:
    """``tile`` upsampled to ``size`` with each text centred on its mask's bounding box
    (if ``size`` is at least :data:`TEXT_MIN_TILE`: on smaller tiles text hides the masks)."""
    image = Image.fromarray(_upsample(tile, size))
    if size < TEXT_MIN_TILE:
        return np.asarray(image)
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    for mask, text in texts:
        ys, xs = np.nonzero(mask)
        if not ys.size:
            continue
        x, y = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
        centre = (float(x) * size / mask.shape[1], float(y) * size / mask.shape[0])
        box = draw.textbbox(centre, text, font=font, anchor="mm")
        draw.rectangle((box[0] - 1, box[1] - 1, box[2], box[3]), fill=(255, 255, 255))
        draw.text(centre, text, fill=(20, 20, 20), font=font, anchor="mm")
    return np.asarray(image)


def comparison_tiles(scene: Scene, predictions: Sequence[Prediction], size: int) -> list[np.ndarray]:
    """RGB uint8 tiles ``size`` x ``size`` for one scene: image | ground truth | predictions.

    Ground truth is every visible instance (as :mod:`shapesgen.evaluate` counts them),
    in the colours of the layer columns: its visible part filled with a tint, its amodal
    outline solid where visible and dashed where occluded, and the IoU of its match (or
    ``miss``) written on it. Each prediction is outlined and filled, the more opaque the
    higher its score (:data:`PREDICTED_ALPHA`), in the colour of the instance it matches
    (:func:`match_predictions`) or, unmatched, in a colour of its own, with its score
    written on it; higher scores are drawn on top. Text is written only on tiles of at
    least :data:`TEXT_MIN_TILE` pixels.
    """
    n, m = len(scene.instances), scene.amodal_masks.shape[1]
    visible = np.flatnonzero(scene.instances["is_visible"])
    matched, ious = match_predictions(scene.amodal_masks[visible], predictions)
    owner = np.full(len(predictions), -1, dtype=np.int64)
    owner[matched[matched >= 0]] = visible[matched >= 0]
    unmatched = np.flatnonzero(owner < 0)
    colours = _palette(n + unmatched.size)
    pred_colours = colours[np.where(owner >= 0, owner, 0)]
    pred_colours[unmatched] = colours[n + np.arange(unmatched.size)]
    scale = max(1, size // m)
    dashed = _dashes(m * scale, scale)

    truth = np.ones((m, m, 3))
    for index in visible.tolist():
        truth[scene.visible_masks[index]] = 1 - VISIBLE_TINT * (1 - colours[index])
    truth = np.repeat(np.repeat(truth, scale, axis=0), scale, axis=1)
    for index in visible[np.argsort(scene.instances["depth"][visible], kind="stable")[::-1]].tolist():
        edge = _edge(scene.amodal_masks[index], scale)
        truth[edge & (_scaled(scene.visible_masks[index], scale) | dashed)] = colours[index]
    notes = [
        (scene.amodal_masks[v], f"{iou:.2f}" if k >= 0 else "miss")
        for v, k, iou in zip(visible, matched, ious, strict=True)
    ]

    drawn = np.ones((m, m, 3))
    order = sorted(range(len(predictions)), key=lambda k: (predictions[k].score, -k))
    low, high = PREDICTED_ALPHA
    for k in order:
        mask, alpha = predictions[k].mask, low + (high - low) * min(max(predictions[k].score, 0.0), 1.0)
        drawn[mask] = (1 - alpha) * drawn[mask] + alpha * pred_colours[k]
    drawn = np.repeat(np.repeat(drawn, scale, axis=0), scale, axis=1)
    for k in order:
        drawn[_edge(predictions[k].mask, scale)] = pred_colours[k]
    scores = [(predictions[k].mask, f"{predictions[k].score:.2f}") for k in order]
    return [
        _image_tile(scene, size),
        _label((truth * 255).round().astype(np.uint8), notes, size),
        _label((drawn * 255).round().astype(np.uint8), scores, size),
    ]


def comparison_grid(scenes: Sequence[Scene], predictions: Sequence[Sequence[Prediction]], size: int) -> Image.Image:
    """A labelled grid, one row per scene: image | ground truth | its ``predictions``."""
    if len(scenes) != len(predictions):
        raise ConfigError(f"predictions has {len(predictions)} entries for {len(scenes)} scenes", param="predictions")
    rows = [comparison_tiles(scene, preds, size) for scene, preds in zip(scenes, predictions, strict=True)]
    return _grid(["image", "ground truth", "predicted"], rows, size)


def scene_predictions(
    ds: ShapesDataset, results: str | Path, indices: Sequence[int], score_threshold: float
) -> tuple[list[list[Prediction]], list[str]]:
    """The predictions in the COCO results file ``results`` for scenes ``indices``, and warnings.

    The file is read and checked as ``shapesgen evaluate`` reads it (same errors, masks of
    another size resized, nearest, to the mask size); results for other scenes are
    ignored. Per scene, those scoring at least ``score_threshold`` are kept, at most the
    :data:`MAX_DRAWN` best (ties: the earlier record).
    """
    m = ds.config.mask_size
    truth = GroundTruth(
        images=[{"id": i + 1, "height": m, "width": m} for i in range(len(ds))],
        annotations=[],
        categories=[{"id": c + 1, "name": name} for c, name in enumerate(ds.class_names)],
        source=str(ds.path),
    )
    warnings: list[str] = []
    records = load_predictions(results, truth, warnings)
    wanted = {index + 1: k for k, index in enumerate(indices)}
    chosen: list[list[tuple[float, int, dict[str, Any]]]] = [[] for _ in indices]
    for position, record in enumerate(records):
        if record["image_id"] in wanted:
            chosen[wanted[record["image_id"]]].append((record["score"], position, record))
    shown = f"scenes {indices[0]}..{indices[-1]}" if len(indices) > 1 else f"scene {indices[0]}"
    if not any(chosen):
        ids = sorted({record["image_id"] for record in records})
        found = f"image ids {ids[0]}..{ids[-1]}" if ids else "no results at all"
        warnings.append(
            f"{results}: no result is for the previewed {shown} (image ids {indices[0] + 1}..{indices[-1] + 1}); "
            f"the file has {found}"
        )
    kept, below, beyond = [], 0, 0
    for entries in chosen:
        passing = [entry for entry in entries if entry[0] >= score_threshold]
        below += len(entries) - len(passing)
        passing.sort(key=lambda entry: (-entry[0], entry[1]))
        beyond += max(0, len(passing) - MAX_DRAWN)
        kept.append(
            [Prediction(decode_segmentation(r["segmentation"], m, m), float(s)) for s, _, r in passing[:MAX_DRAWN]]
        )
    if below and not any(kept):
        warnings.append(f"all {below} results for the previewed {shown} score below the threshold {score_threshold}")
    if beyond:
        warnings.append(f"{beyond} results beyond the {MAX_DRAWN} best-scoring per scene are not drawn")
    return kept, warnings


def write_comparison(
    path: str | Path,
    results: str | Path,
    out: str | Path,
    *,
    count: int = 4,
    start: int = 0,
    score_threshold: float = 0.0,
    force: bool = False,
) -> tuple[Path, list[str]]:
    """Write the ground truth of ``count`` scenes from ``start`` next to the predictions
    in the COCO results file ``results`` (see :func:`comparison_tiles`) as a PNG,
    atomically. Returns the path written and the warnings raised reading ``results``."""
    if not isinstance(score_threshold, (int, float)) or not math.isfinite(score_threshold):
        raise ConfigError(
            f"score_threshold={score_threshold!r} is invalid: must be a finite number", param="score_threshold"
        )
    out = _check_preview_output(path, out, count, force, results=results)
    with open_dataset(path) as ds:
        _check_start(ds, start, count)
        indices = list(range(start, min(start + count, len(ds))))
        predictions, warnings = scene_predictions(ds, results, indices, float(score_threshold))
        grid = comparison_grid([ds[i] for i in indices], predictions, min(ds.config.image_size, MAX_TILE))
    return _write_png(out, grid, force), warnings
