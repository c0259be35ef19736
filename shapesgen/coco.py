"""COCO exports of a dataset: flat COCO with amodal extras, and the COCOA, KINS 2020 and
aistron layouts; optionally the N-layer maps as 16-bit PNGs.

Ids: ``image_id = scene index + 1``; annotation ``id = instance row in the HDF5 file
+ 1``, so ids are the same whatever is exported and occluder ids are always defined.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from itertools import accumulate
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import shapely
from PIL import Image
from pycocotools import mask as mask_utils

from shapesgen.config import Engine, SceneConfig
from shapesgen.datasets import content_digest, content_version, registered_spec
from shapesgen.engines import ENGINES, Report, Task, check_scheduler, import_dask, run_here, run_in_pool, run_on_dask
from shapesgen.errors import ConfigError, DatasetError, ResourceError
from shapesgen.files import (
    check_output_path,
    contains,
    exclusive_lock,
    make_parents,
    partial_path,
    refuse_export_folders,
    refuse_overwriting_inputs,
    refuse_run_files,
    remove_empty,
    resolved,
    write_refusal,
)
from shapesgen.geometry import front_overlaps
from shapesgen.metadata import DEFAULT_LICENSE, LICENSES, croissant, hf_front_matter, license_of
from shapesgen.raster import layer_maps, rasterize_convex
from shapesgen.splits import Split
from shapesgen.stats import OCCLUSION_BANDS, occlusion_band
from shapesgen.storage.digests import PER_SCENE_HASHED, DigestChain, digest
from shapesgen.storage.layout import DATASETS, SHARD_MANIFEST, SHARD_VIRTUAL, Scene
from shapesgen.storage.manifest import Shard, check_shard_header, plan_shards, read_manifest
from shapesgen.storage.reader import CorruptDatasetError, ShapesDataset, open_dataset

Style = Literal["coco", "cocoa", "kins", "aistron"]
Segmentation = Literal["rle", "polygon"]
Resolution = Literal["image", "mask"]
COCO_EXPORT_VERSION = "1.3"  # 1.1: RLE visible/invisible masks in polygon mode, flags at export resolution
# 1.2: kins and aistron styles, layer PNGs (layers_png); the coco and cocoa layouts are unchanged
# 1.3: info.version is the dataset version (the layout's is info.format_version), info.dataset, info.split,
# info.content_digest; licenses filled and images[].license; croissant.json; the card's YAML header
STYLES: tuple[str, ...] = ("coco", "cocoa", "kins", "aistron")


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """How a dataset is exported to COCO JSON (recorded in the export's ``info``)."""

    style: Style = "coco"
    segmentation: Segmentation = "rle"
    resolution: Resolution = "image"
    include_hidden: bool = False
    layers_png: bool = False
    license: str = DEFAULT_LICENSE

    def __post_init__(self) -> None:
        license_of(self.license)
        for name, allowed in (
            ("style", STYLES),
            ("segmentation", ("rle", "polygon")),
            ("resolution", ("image", "mask")),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"{name}={value!r} is invalid: must be one of {', '.join(allowed)}", param=name)
        for name in ("include_hidden", "layers_png"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigError(f"{name}={value!r} is invalid: must be True or False", param=name)


def encode_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO compressed RLE (JSON-ready) for boolean masks ``(n, h, w)``."""
    if len(masks) == 0:
        return []
    encoded = mask_utils.encode(np.asfortranarray(np.moveaxis(masks, 0, -1).astype(np.uint8)))
    return [{"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")} for rle in encoded]


MAX_MASK_PIXELS = 1 << 24  # 4096 x 4096: the most pixels a segmentation read from a file may decode to
_MAX_GROUPS = 12  # 5-bit groups in one number of a compressed RLE string (60 bits: fits int64)
_SHORT_STRING = 512  # compressed strings up to this length are decoded without numpy (faster)


def _integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _string_runs(counts: bytes, pixels: int) -> list[int] | np.ndarray:
    """Run lengths of a compressed COCO RLE string, decoded as pycocotools' ``rleFrString`` does.

    Each number is little-endian in 5-bit groups, one character (``48 + group``) per group,
    bit 0x20 meaning "more groups follow" and bit 0x10 of the last group the sign; from the
    fourth run on, the number is the difference to the run two before. Other characters,
    a string that ends inside a number and numbers beyond ``pixels`` are refused, where
    pycocotools would read past the end of the string. Long strings are decoded vectorised.
    """
    bad_char = "segmentation counts must be characters '0'..'o', got {!r}"
    truncated = "segmentation counts end in the middle of a number (truncated string)"
    too_long = f"segmentation counts hold a number of more than {_MAX_GROUPS} characters"
    runs: list[int] | np.ndarray
    if len(counts) <= _SHORT_STRING:
        runs = []
        value = shift = 0
        for char in counts:
            group = char - 48
            if group < 0 or group > 63:
                raise DatasetError(bad_char.format(chr(char)))
            if group >= 32:  # more groups follow
                value |= (group - 32) << shift
                shift += 5
                if shift >= 5 * _MAX_GROUPS:
                    raise DatasetError(too_long)
                continue
            value |= group << shift
            if group & 0x10:
                value -= 32 << shift
            runs.append(value)
            value = shift = 0
        if shift:
            raise DatasetError(truncated)
    else:
        groups = np.frombuffer(counts, np.uint8).astype(np.int64) - 48
        if groups.min() < 0 or groups.max() > 63:
            raise DatasetError(bad_char.format(chr(48 + int(groups[(groups < 0) | (groups > 63)][0]))))
        last = np.flatnonzero(groups < 32)  # the last group of each number
        if last.size == 0 or last[-1] != groups.size - 1:
            raise DatasetError(truncated)
        first = np.concatenate(([0], last[:-1] + 1))
        length = last - first + 1
        if length.max() > _MAX_GROUPS:
            raise DatasetError(too_long)
        shift_of = 5 * (np.arange(groups.size) - np.repeat(first, length))
        runs = np.add.reduceat((groups & 0x1F) << shift_of, first)
        negative = groups[last] >= 16
        runs[negative] -= np.left_shift(1, 5 * length[negative])
    low, high = (min(runs, default=0), max(runs, default=0)) if isinstance(runs, list) else (runs.min(), runs.max())
    if max(-low, high) > pixels:  # a valid difference never exceeds pixels; this also bounds the sums below
        raise DatasetError(f"segmentation counts hold a number beyond height x width = {pixels}")
    if isinstance(runs, list):
        runs[1::2] = accumulate(runs[1::2])
        runs[2::2] = accumulate(runs[2::2])
    else:
        runs[1::2] = np.cumsum(runs[1::2])
        runs[2::2] = np.cumsum(runs[2::2])
    return runs


def rle_runs(rle: Any) -> tuple[int, int, list[int] | np.ndarray]:
    """``(height, width, runs)`` of a COCO RLE (compressed or not), checked before any decoding.

    Runs must be non-negative and sum to exactly ``height * width``: pycocotools trusts
    them and fills a short mask with uninitialised memory. ``height * width`` is at most
    :data:`MAX_MASK_PIXELS`. Raises :class:`DatasetError` with a one-line reason.
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise DatasetError("segmentation must be a COCO RLE with 'size' and 'counts'")
    size = rle["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_integer(v) and v > 0 for v in size)):
        scalars = isinstance(size, list) and len(size) <= 3 and all(isinstance(v, (int, float)) for v in size)
        shown = repr(size)[:40] if scalars else f"({type(size).__name__})"
        raise DatasetError(f"segmentation size {shown} must be two positive integers (height, width)")
    height, width = int(size[0]), int(size[1])
    pixels = height * width
    if pixels > MAX_MASK_PIXELS:
        raise DatasetError(f"segmentation size {height}x{width} is over the limit of {MAX_MASK_PIXELS} pixels")
    counts = rle["counts"]
    runs: list[int] | np.ndarray
    if isinstance(counts, (str, bytes)):
        try:
            runs = _string_runs(counts.encode("ascii") if isinstance(counts, str) else counts, pixels)
        except UnicodeEncodeError:
            raise DatasetError("segmentation counts must be characters '0'..'o', got a non-ASCII one") from None
    elif isinstance(counts, list) and all(_integer(c) for c in counts):
        runs = counts
        if len(counts) > _SHORT_STRING:
            try:
                runs = np.array(counts, dtype=np.int64)
            except OverflowError:
                raise DatasetError(f"segmentation counts hold a run beyond height x width = {pixels}") from None
    else:
        raise DatasetError("segmentation counts must be a list of integers or a compressed RLE string")
    low, high = (min(runs, default=0), max(runs, default=0)) if isinstance(runs, list) else (runs.min(), runs.max())
    if low < 0:
        raise DatasetError(f"segmentation counts hold a negative run length ({low})")
    if high > pixels:
        raise DatasetError(f"segmentation counts hold a run of {high}, beyond height x width = {pixels}")
    total = int(sum(runs) if isinstance(runs, list) else runs.sum())
    if total != pixels:
        raise DatasetError(f"segmentation counts sum to {total}, not height x width = {height}x{width} = {pixels}")
    return height, width, runs


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A boolean mask from a COCO polygon list, compressed or uncompressed RLE.

    Polygons are rasterised at ``height`` x ``width``; an RLE has its own ``size``. Every
    input is checked first (see :func:`rle_runs`), so a malformed one raises
    :class:`DatasetError` with a one-line reason instead of a crash or a garbage mask.
    """
    if not isinstance(segmentation, list):
        h, w, runs = rle_runs(segmentation)
        mask = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
        return np.ascontiguousarray(mask.reshape(w, h).T)
    if not (_integer(height) and _integer(width) and height > 0 and width > 0 and height * width <= MAX_MASK_PIXELS):
        limit = f"{MAX_MASK_PIXELS} pixels at most"
        raise DatasetError(f"image size {height!r}x{width!r} must be positive integers, {limit}")
    bound = 4 * max(height, width)
    for k, polygon in enumerate(segmentation):
        if not isinstance(polygon, list) or not all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in polygon
        ):
            raise DatasetError(f"segmentation polygon {k} must be a list of numbers (x1, y1, x2, y2, ...)")
        if len(polygon) % 2 or len(polygon) < 6:
            raise DatasetError(f"segmentation polygon {k} has {len(polygon)} coordinates: needs an even number >= 6")
        if not all(-bound <= v <= bound for v in polygon):  # also False for NaN
            raise DatasetError(f"segmentation polygon {k} has a coordinate that is not finite or beyond +-{bound}")
    if not segmentation:
        return np.zeros((height, width), bool)
    rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    return mask_utils.decode(rle).astype(bool)


def decode_sized(segmentation: Any, height: int, width: int, where: str, what: str = "segmentation") -> np.ndarray:
    """:func:`decode_segmentation` of a record's mask that must be ``height`` x ``width``: a
    malformed one, or one of another size, raises one line starting with ``where``."""
    try:
        mask = decode_segmentation(segmentation, height, width)
    except DatasetError as exc:
        raise DatasetError(f"{where}: {exc}") from None
    if mask.shape != (height, width):
        raise DatasetError(f"{where}: {what} size {list(mask.shape)} is not its image's [{height}, {width}]")
    return mask


def pad_rings(vertices: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Ragged rings ``(V, 2)`` + offsets as one ``(n, max V, 2)`` array, for the rasteriser.

    Rings are padded by repeating their last vertex; the zero-length edges this adds
    change nothing in the rasteriser. Exported polygons use :func:`scene_rings` instead.
    """
    counts = np.diff(offsets)
    width = int(counts.max()) if len(counts) else 0
    index = offsets[:-1, None] + np.minimum(np.arange(width)[None, :], counts[:, None] - 1)
    return vertices[index]


def scene_rings(scene: Scene) -> list[np.ndarray]:
    """Each instance's stored amodal ring ``(k, 2)`` in image pixels: its own vertices only."""
    offsets = scene.vertex_offsets
    return [scene.vertices[offsets[j] : offsets[j + 1]] for j in range(len(offsets) - 1)]


def scene_polygons(scene: Scene) -> np.ndarray:
    """The stored amodal polygons of a scene as shapely geometry."""
    rings = pad_rings(scene.vertices, scene.vertex_offsets)
    return shapely.polygons(rings)


def masks_at(scene: Scene, resolution: Resolution, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Amodal and visible masks by pixel-centre sampling (the HDF5 file's rule) at mask
    resolution (the stored masks) or image resolution (re-rasterised); visible = the
    pixels where the instance is the front-most one."""
    if resolution == "mask":
        return scene.amodal_masks, scene.visible_masks
    amodal = rasterize_convex(pad_rings(scene.vertices, scene.vertex_offsets), image_size, 1.0)
    return amodal, front_most(amodal, scene.instances["depth"])


def front_most(amodal: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Visible masks ``(n, h, w)``: each pixel goes to the front-most amodal mask covering it."""
    front = layer_maps(amodal, depth.astype(np.int64), 1)[0]
    return front[None] == np.arange(1, len(amodal) + 1, dtype=front.dtype)[:, None, None]


def polygon_coordinates(ring: np.ndarray, scale: float) -> list[float] | None:
    """One COCO polygon ``[x1, y1, x2, y2, ...]`` of a stored ring, in export pixels.

    Coordinates are divided by ``scale`` and rounded to 1e-4 px; consecutive repeats
    (and a closing repeat of the first vertex) are dropped, so every vertex is distinct
    from its neighbours. ``None`` when fewer than 3 vertices remain (no area).
    """
    xy = np.round(np.asarray(ring, dtype=np.float64) / scale, 4) + 0.0  # + 0.0: no "-0.0" in the JSON
    if len(xy):
        xy = xy[np.any(xy != np.roll(xy, 1, axis=0), axis=1)]
    return xy.ravel().tolist() if len(xy) >= 3 else None


def rasterize_polygons(polygons: list[list[float]], size: int) -> np.ndarray:
    """Masks ``(k, size, size)`` of single COCO polygons exactly as pycocotools decodes them
    (``annToMask``, ``frPyObjects``), which is what every COCO reader sees of a polygon."""
    if not polygons:
        return np.zeros((0, size, size), dtype=bool)
    rles = mask_utils.frPyObjects(polygons, size, size)
    return np.moveaxis(mask_utils.decode(rles), -1, 0).astype(bool)


def _occluders(amodal: np.ndarray, depth: np.ndarray) -> list[list[int]]:
    """Per instance: indices of instances in front that overlap it with positive area."""
    hit, other = front_overlaps(amodal, depth)
    overlap = shapely.area(shapely.intersection(amodal[hit], amodal[other])) > 0
    result: list[list[int]] = [[] for _ in range(len(amodal))]
    for h, o in zip(hit[overlap].tolist(), other[overlap].tolist(), strict=True):
        result[h].append(o)
    return [sorted(r, key=lambda j: int(depth[j])) for r in result]


def occlusion_clusters(occluders: list[list[int]], depth: np.ndarray) -> tuple[list[int], list[int]]:
    """KINS ``(oco_id, ico_id)`` per instance, from the overlap pairs of :func:`_occluders`.

    An occlusion cluster is a connected group of instances linked by pairwise overlap
    (positive area), over every instance of the scene. Clusters are numbered 1, 2, ... in
    the order of their front-most member's depth; ``ico_id`` is the depth rank inside
    the cluster (1 = front). An instance that overlaps no other has both ids 0.
    """
    n = len(occluders)
    root = list(range(n))

    def find(j: int) -> int:
        while root[j] != j:
            root[j] = root[root[j]]
            j = root[j]
        return j

    for j, front in enumerate(occluders):
        for o in front:
            root[find(j)] = find(o)
    members: dict[int, list[int]] = {}
    for j in sorted(range(n), key=lambda k: int(depth[k])):
        members.setdefault(find(j), []).append(j)
    oco, ico = [0] * n, [0] * n
    clusters = [group for group in members.values() if len(group) > 1]  # in order of their front-most member
    for number, group in enumerate(clusters, start=1):
        for rank, j in enumerate(group, start=1):
            oco[j], ico[j] = number, rank
    return oco, ico


def occluder_masks(amodal: np.ndarray, visible: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Exact occluder masks ``(n, h, w)`` (aistron's ``occluder_segm``) from the written masks.

    For each instance: the union of the visible masks of the instances in front of it
    whose amodal mask shares a pixel with its amodal mask, inside the bounding box of its
    amodal pixels (aistron crops its box-overlap estimate to the same box). Inside the
    amodal mask this is exactly the invisible mask (amodal - visible).
    """
    n = len(amodal)
    out = np.zeros_like(amodal)
    if n == 0:
        return out
    bits = np.packbits(amodal.reshape(n, -1), axis=1)
    shares = np.asarray((bits[:, None, :] & bits[None, :, :]).any(axis=2))
    occluding = shares & (depth[None, :] < depth[:, None])  # [j, i]: i is in front of j and shares a pixel
    rows, cols = np.asarray(amodal.any(axis=2)), np.asarray(amodal.any(axis=1))
    for j in np.flatnonzero(occluding.any(axis=1)).tolist():
        union = np.asarray(visible[occluding[j]].any(axis=0))
        r, c = np.flatnonzero(rows[j]), np.flatnonzero(cols[j])
        out[j, r[0] : r[-1] + 1, c[0] : c[-1] + 1] = union[r[0] : r[-1] + 1, c[0] : c[-1] + 1]
    return out


def export_layer_maps(scene: Scene, resolution: Resolution, amodal: np.ndarray, layers: int) -> np.ndarray:
    """The N-layer maps ``(layers, h, w)`` uint16 at the export's resolution (values: ``instance_id``).

    At mask resolution, the HDF5 file's maps; at image resolution, the same rule applied
    to the pixel-centre amodal masks ``amodal`` at image size (layer k = the k-th instance
    from the front covering the pixel, 0 = none). Independent of the segmentation mode.
    """
    if resolution == "mask":
        return np.asarray(scene.layers, dtype=np.uint16)
    return layer_maps(amodal, scene.instances["depth"].astype(np.int64), layers)


def scene_annotations(
    ds: ShapesDataset, scene: Scene, export: ExportConfig
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The COCO image entry and the annotations of one scene: flat (``coco`` and ``cocoa``
    styles, see :func:`cocoa_annotation`), KINS 2020 or aistron records."""
    _check_stored_values(ds, scene)
    image, annotations, _ = _scene_export(ds.config, scene, export)
    return image, annotations


def _check_stored_values(ds: ShapesDataset, scene: Scene) -> None:
    """The values an export computes with, which only a hand-edited file can break
    (the reader checks structure, not every value): finite vertices, known instance ids."""
    problem = None
    if not np.all(np.isfinite(scene.vertices)):
        problem, dataset = "vertices are not all finite", "vertices"
    elif scene.layers.size and int(scene.layers.max()) > len(scene.instances):
        problem, dataset = f"layers hold instance id {int(scene.layers.max())} of {len(scene.instances)}", "layers"
    if problem is not None:
        raise CorruptDatasetError(
            ds.path,
            f"scene {scene.index}: {problem}",
            dataset=dataset,
            scene=scene.index,
            hint=f"; check the file with `shapesgen validate {ds.path}`",
        )


def _scene_export(
    config: SceneConfig, scene: Scene, export: ExportConfig
) -> tuple[dict[str, Any], list[dict[str, Any]], np.ndarray | None]:
    """The image entry, the annotations (in the style's record layout) and, with
    ``layers_png``, the layer maps of one scene.

    Pixels (all at the export's resolution): ``is_visible`` and ``pixel_occlude_rate``,
    which select and band the ground truth, come from pixel-centre masks (the HDF5 rule)
    whatever the segmentation mode, so every export of one resolution has the same
    ground truth. The written masks split one amodal pixel set: the pixel-centre mask
    (RLE mode) or pycocotools' rasterisation of the written polygon (polygon mode);
    visible = its pixels where the instance is front-most, invisible = amodal - visible.
    Annotation ids: every scene owns ``num_instances`` instance rows (the reader checks
    the offsets), so scene ``i``'s first row is ``i * num_instances``.
    """
    scale = 1.0 if export.resolution == "image" else float(config.mask_scale)
    size = config.image_size if export.resolution == "image" else config.mask_size
    table = scene.instances
    depth = table["depth"].astype(np.int64)
    first_row = scene.index * config.num_instances
    amodal, visible = masks_at(scene, export.resolution, config.image_size)
    maps = export_layer_maps(scene, export.resolution, amodal, config.layers) if export.layers_png else None
    amodal_px = np.count_nonzero(amodal, axis=(1, 2))
    visible_px = np.count_nonzero(visible, axis=(1, 2))
    is_visible = visible_px > 0
    pixel_rate = 1.0 - visible_px / np.maximum(amodal_px, 1)  # as the HDF5 file's pixel_occlusion_rate
    polygons: list[list[float] | None] = [None] * len(table)
    if export.segmentation == "polygon":
        polygons = [polygon_coordinates(ring, scale) for ring in scene_rings(scene)]
        drawn = [j for j, polygon in enumerate(polygons) if polygon is not None]
        amodal = amodal.copy()
        amodal[drawn] = rasterize_polygons([polygon for polygon in polygons if polygon is not None], size)
        visible = front_most(amodal, depth)
    amodal_rle = encode_rle(amodal) if export.segmentation == "rle" else []
    visible_rle, invisible_rle = encode_rle(visible), encode_rle(amodal & ~visible)  # all: cheaper than a copy
    occluders = _occluders(scene_polygons(scene), depth)
    occluder_rle = encode_rle(occluder_masks(amodal, visible, depth)) if export.style == "aistron" else []
    oco, ico = occlusion_clusters(occluders, depth) if export.style == "kins" else ([], [])
    image = {
        "id": scene.index + 1,
        "file_name": f"images/{scene.index:06d}.png",
        "height": size,
        "width": size,
        "scene_index": scene.index,
        "license": LICENSE_ID,
    }
    annotations = []
    for j in np.flatnonzero(is_visible | export.include_hidden).tolist():
        row = table[j]
        polygon = polygons[j]
        segmentation: Any = [polygon] if polygon is not None else None
        if segmentation is None:  # RLE mode, or a polygon-mode shape without 3 distinct vertices
            segmentation = amodal_rle[j] if amodal_rle else encode_rle(amodal[j : j + 1])[0]
        flat = {
            "id": first_row + j + 1,
            "image_id": scene.index + 1,
            "category_id": int(row["class_id"]),
            "segmentation": segmentation,
            "area": round(float(row["area"]) / scale**2, 4),
            "bbox": [round(float(v) / scale, 4) for v in row["bbox"]],
            "iscrowd": 0,
            "visible_mask": visible_rle[j],
            "invisible_mask": invisible_rle[j],
            "visible_area": round(float(row["visible_area"]) / scale**2, 4),
            "visible_bbox": [round(float(v) / scale, 4) for v in row["visible_bbox"]],
            "occlude_rate": round(float(row["occlusion_rate"]), 6),
            "pixel_occlude_rate": float(pixel_rate[j]),
            "depth": int(row["depth"]),
            "occluder_ids": [first_row + o + 1 for o in occluders[j]],
            "instance_id": int(row["id"]),
            "is_visible": bool(is_visible[j]),
        }
        if export.style == "kins":
            flat = kins_record(flat, oco[j], ico[j])
        elif export.style == "aistron":
            flat = aistron_record(flat, occluder_rle[j])
        annotations.append(flat)
    return image, annotations, maps


_EXTRAS = ("instance_id", "depth", "occlude_rate", "pixel_occlude_rate", "is_visible")  # kept by every layout


def kins_record(flat: dict[str, Any], oco_id: int, ico_id: int) -> dict[str, Any]:
    """A KINS 2020 annotation (``update_train_2020.json`` keys) from a flat one.

    ``a_*`` = amodal, ``i_*`` = inmodal (visible); ``i_segm`` is RLE, as ``visible_mask``.
    ``oco_id`` / ``ico_id``: see :func:`occlusion_clusters`.
    """
    return {
        "id": flat["id"],
        "image_id": flat["image_id"],
        "category_id": flat["category_id"],
        "iscrowd": 0,
        "a_segm": flat["segmentation"],
        "i_segm": flat["visible_mask"],
        "a_bbox": flat["bbox"],
        "i_bbox": flat["visible_bbox"],
        "a_area": flat["area"],
        "i_area": flat["visible_area"],
        "oco_id": oco_id,
        "ico_id": ico_id,
        **{key: flat[key] for key in _EXTRAS},
    }


def aistron_record(flat: dict[str, Any], occluder: dict[str, Any]) -> dict[str, Any]:
    """An aistron annotation from a flat one: the keys its ``load_aistron_cocolike_json`` and
    dataset mapper read, plus the standard COCO ones its own converters keep.

    ``occluder_segm`` is exact (:func:`occluder_masks`); ``background_objs_segm``, which its
    mapper also reads, is the same mask, as its converters write it; ``occluded_segm``
    (the ground truth of its occluded-mask task) is the invisible mask.
    """
    return {
        "id": flat["id"],
        "image_id": flat["image_id"],
        "category_id": flat["category_id"],
        "iscrowd": 0,
        "segmentation": flat["segmentation"],
        "bbox": flat["bbox"],
        "area": flat["area"],
        "amodal_segm": flat["segmentation"],
        "visible_segm": flat["visible_mask"],
        "amodal_bbox": flat["bbox"],
        "visible_bbox": flat["visible_bbox"],
        "amodal_area": flat["area"],
        "occluder_segm": occluder,
        "background_objs_segm": occluder,
        "occluded_segm": flat["invisible_mask"],
        **{key: flat[key] for key in _EXTRAS},
    }


def cocoa_annotation(image: dict[str, Any], annotations: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """One COCOA (Zhu et al.) annotation: the scene's regions, front to back.

    A region's polygon ``segmentation`` is one flat list ``[x1, y1, ...]`` (the
    COCO-Amodal API wraps it in a list itself); ``visible_mask`` and ``invisible_mask``
    are RLE, the only form its modal path reads.
    """
    regions = sorted(annotations, key=lambda a: a["depth"])
    position = {a["id"]: i + 1 for i, a in enumerate(regions)}
    pairs = [f"{position[o]}-{position[a['id']]}" for a in regions for o in a["occluder_ids"] if o in position]
    return {
        "id": image["id"],
        "image_id": image["id"],
        "size": len(regions),
        "depth_constraint": ",".join(sorted(pairs, key=lambda p: tuple(int(v) for v in p.split("-")))),
        "regions": [
            {
                "segmentation": a["segmentation"][0] if isinstance(a["segmentation"], list) else a["segmentation"],
                "name": names[a["category_id"] - 1],
                "area": a["area"],
                "isStuff": 0,
                "occlude_rate": a["occlude_rate"],
                "order": i + 1,
                "visible_mask": a["visible_mask"],
                "invisible_mask": a["invisible_mask"],
                "id": a["id"],
                "category_id": a["category_id"],
                "bbox": a["bbox"],
                "pixel_occlude_rate": a["pixel_occlude_rate"],
                "is_visible": a["is_visible"],
            }
            for i, a in enumerate(regions)
        ],
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


CHECKSUMS = "SHA256SUMS"


def _listed(text: str) -> dict[str, str]:
    """``SHA256SUMS`` lines (``<digest>  <relative name>``) as name -> digest."""
    return {name: digest for digest, name in (line.split("  ", 1) for line in text.splitlines() if "  " in line)}


def export_digests(folder: Path) -> dict[str, str]:
    """The SHA-256 digests an export folder's ``SHA256SUMS`` lists, by relative name; empty
    when it has none (an export from another tool, or one whose list was removed)."""
    try:
        return _listed((folder / CHECKSUMS).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{CHECKSUMS} cannot be read ({getattr(exc, 'strerror', None) or exc})") from None


def check_listed_digest(name: str, data: bytes, digests: dict[str, str]) -> None:
    """Refuse ``data``, the bytes of export file ``name``, when ``SHA256SUMS`` lists another digest
    for it: the file was damaged or changed after the export wrote it."""
    expected = digests.get(name)
    if expected is not None and hashlib.sha256(data).hexdigest() != expected.lower():
        raise DatasetError(
            f"{name} does not match its digest in {CHECKSUMS}: it was damaged or changed after the export was "
            f"written; export it again, or remove {CHECKSUMS} to use the files as they are"
        )


EXPORT_FILES = frozenset({"annotations.json", "config.json", "croissant.json", "README.md", "SHA256SUMS"})
EXPORT_FOLDERS = ("images", "layers")  # of PNGs only


STAGING_MARKER = ".shapesgen-unfinished-export"  # in <out>.partial/ until it is published
CARD_TITLE = "# shapesgen dataset"


def _unlisted_file(folder: Path, listed: set[str] | None) -> str | None:
    """The first entry of ``folder`` an export does not write (``None`` if there is none).

    ``listed`` is the export's manifest; without one (a staging folder), only the
    names an export writes are allowed."""
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            return name
        if path.is_dir():
            if name not in EXPORT_FOLDERS:
                return name
            continue
        expected = (
            name in listed
            if listed is not None
            else (name in EXPORT_FILES or (name.split("/", 1)[0] in EXPORT_FOLDERS and name.endswith(".png")))
        )
        if not expected and name != "SHA256SUMS":
            return name
    return None


MAX_HEADER_LINES = 100  # a card's YAML header is shorter


def _card_title(card: Iterator[str]) -> bool:
    """Whether a card starts with our title, after its YAML header if it has one (since 1.3)."""
    first = next(card, "")
    if first.rstrip("\n") == "---":
        for _, line in zip(range(MAX_HEADER_LINES), card, strict=False):
            if line.rstrip("\n") == "---":
                return next(card, "").startswith(CARD_TITLE)
        return False
    return first.startswith(CARD_TITLE)


def is_export_folder(folder: Path) -> bool:
    """Whether ``folder`` is a shapesgen export exactly as it was written: its card is a
    shapesgen card, and every file in it is listed in its ``SHA256SUMS`` with that
    digest (nothing added, edited or removed). Only such a folder is ever replaced."""
    try:
        listed = _listed((folder / CHECKSUMS).read_text())
        with (folder / "README.md").open() as card:
            ours = _card_title(card)
    except (OSError, UnicodeDecodeError):
        return False
    if not ours or "annotations.json" not in listed or "README.md" not in listed:
        return False
    if _unlisted_file(folder, set(listed)) is not None:
        return False
    try:
        return all((folder / name).is_file() and _sha256(folder / name) == digest for name, digest in listed.items())
    except OSError:
        return False


def check_export_target(
    source: str | Path,
    out: str | Path,
    force: bool,
    inputs: dict[str, str | Path | None] | None = None,
    *,
    probe: bool = False,
) -> Path:
    """Refuse an export folder that would lose data, before any work is done.

    ``out`` must not be or contain ``source`` (nor any of ``inputs``, other files the
    caller read); an existing ``out`` is taken if empty, else replaced only with
    ``force=True`` and only if it is a previous, untouched shapesgen export. ``probe=True`` also checks that the
    folder can be made there (its parent is created and its lock taken, then both
    undone), for callers that export only after long work (``render --coco``).
    """
    out = check_output_path(out, "out")
    source = Path(source)
    if resolved(out) == resolved(source):
        raise ConfigError(
            f"out={str(out)!r} is {source}, the dataset it exports: an export is a folder of its own", param="out"
        )
    if contains(out, source):
        raise ConfigError(
            f"out={str(out)!r} contains the input {source}: an export replaces its folder, choose another one",
            param="out",
        )
    if not source.is_dir() and contains(source, out):  # a sharded dataset is a folder: an export may go inside
        raise ConfigError(
            f"out={str(out)!r} is inside {source}, which is a file: choose a folder outside it", param="out"
        )
    refuse_overwriting_inputs(out, "out", inputs or {})
    refuse_run_files(out, "out", in_datasets=False)
    refuse_export_folders(out, "out")
    if out.exists() or out.is_symlink():
        if out.is_symlink():
            raise DatasetError(
                f"out={str(out)!r} is a symbolic link: give the folder itself (a link is never replaced)", param="out"
            )
        if not out.is_dir():
            raise DatasetError(f"out={str(out)!r} exists and is not a folder: an export is a folder", param="out")
        empty = not any(out.iterdir())  # nothing to lose: taken as it is
        if not force and not empty:
            raise DatasetError(f"out={str(out)!r} exists: pass force=True to replace it", param="out")
        if not empty and not is_export_folder(out):
            raise DatasetError(
                f"out={str(out)!r} is not a shapesgen export (or files were added to it): force=True only "
                "replaces a previous export; remove it yourself or choose another folder",
                param="out",
            )
    if probe:
        _probe_writable(out)
    staging = partial_path(out)
    if (staging.exists() or staging.is_symlink()) and not (
        staging.is_dir() and not staging.is_symlink() and (staging / STAGING_MARKER).is_file()
    ):
        raise DatasetError(
            f"out={str(out)!r}: {staging} exists and is not an unfinished shapesgen export; remove it yourself",
            param="out",
        )
    return out


def _probe_writable(out: Path) -> None:
    """Make ``out``'s parent folders and take its lock, then undo both."""
    try:
        created = make_parents(out.parent)
    except OSError as exc:
        raise write_refusal(f"out={str(out)!r}: cannot create {out.parent}", exc, "out") from None
    try:
        with exclusive_lock(out, "out"):
            pass
    finally:
        remove_empty(created)


def export_coco(
    source: str | Path,
    out: str | Path,
    export: ExportConfig | None = None,
    *,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    inputs: dict[str, str | Path | None] | None = None,
    workers: int = 1,
    engine: Engine = "local",
    scheduler: str | None = None,
) -> Path:
    """Export an HDF5 dataset (a file, or a sharded folder) to ``out/`` (annotations.json,
    images/, config.json, README.md card, SHA256SUMS).

    Scenes are exported in parallel tasks (see :func:`plan_export`): ``workers`` local
    processes, or with ``engine="dask"`` one task per shard on the Dask scheduler at
    ``scheduler`` (or a ``LocalCluster`` of ``workers`` processes; every worker must see
    the source and ``out``). The files are byte-identical for any engine and worker count.
    Atomic and exclusive: built in ``out.partial/`` under ``out.lock`` and renamed into
    place; an existing export is replaced only with ``force=True`` (see
    :func:`check_export_target`), and only once the new one is complete.
    """
    export = export or ExportConfig()
    check_engine(engine, scheduler, workers)
    if engine == "dask":
        import_dask()
        if scheduler is not None:
            check_scheduler(scheduler)
    out = check_export_target(source, out, force, inputs)
    staging = partial_path(out)
    created = make_parents(out.parent) if not out.parent.exists() else []
    try:
        with exclusive_lock(out, "out"), open_dataset(source) as ds:
            check_export_target(source, out, force, inputs)  # again, now that no other export can change it
            run = Runner(engine, scheduler, workers, progress)
            _build_export(ds, staging, export, run)
            _publish(staging, out)
    except BaseException:
        remove_empty(created)
        raise
    return out


def check_engine(engine: str, scheduler: str | None, workers: int) -> None:
    """The engine settings an export takes, or :class:`ConfigError` naming the bad one."""
    if engine not in ENGINES:
        raise ConfigError(f"engine={engine!r} is invalid: must be one of {', '.join(ENGINES)}", param="engine")
    if scheduler is not None and engine != "dask":
        raise ConfigError(f"scheduler={scheduler!r} needs engine='dask'", param="scheduler", related=("engine",))
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(
            f"workers={workers!r} is invalid: must be an integer from 1 to {MAX_WORKERS}", param="workers"
        )


@dataclass(frozen=True)
class Runner:
    """Where an export's tasks run (:mod:`shapesgen.engines`) and who hears of progress."""

    engine: Engine
    scheduler: str | None
    workers: int
    progress: Callable[[int, int], None] | None

    @property
    def local_processes(self) -> int:
        """Processes of the local pool, 1 when the tasks run in this process."""
        return self.workers if self.engine == "local" else 1

    def __call__(self, tasks: list[Task], accept: Callable[[Task, Any], None], name: str) -> None:
        if self.engine == "dask":
            run_on_dask(tasks, accept, self.progress, scheduler=self.scheduler, workers=self.workers, name=name)
        elif self.workers > 1 and len(tasks) > 1:
            run_in_pool(tasks, accept, self.progress, self.workers, "export")
        else:
            run_here(tasks, accept, self.progress)


def _build_export(ds: ShapesDataset, staging: Path, export: ExportConfig, run: Runner) -> None:
    try:
        if staging.exists():
            shutil.rmtree(staging)  # an unfinished export of ours (its marker was checked)
        (staging / "images").mkdir(parents=True)
        (staging / STAGING_MARKER).write_text("an unfinished shapesgen export\n")
        _write_export(ds, staging, export, run)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise ResourceError(
                f"out={str(staging.with_name(staging.name.removesuffix('.partial')))!r}: "
                f"writing the export failed ({exc.strerror or exc}); nothing was kept",
                param="out",
            ) from None
        raise


def _publish(staging: Path, out: Path) -> None:
    """Rename the finished export into place; a previous export is moved aside first
    and removed only after the new one is in place. An empty folder there is kept (its
    owner, mode, or a mount point) and the export's files are moved into it, SHA256SUMS
    last: a folder left without it is not taken for an export."""
    (staging / STAGING_MARKER).unlink()
    try:
        if not out.exists():
            os.replace(staging, out)
        elif out.is_dir() and not any(out.iterdir()):
            entries = sorted(os.scandir(staging), key=lambda entry: entry.name == "SHA256SUMS")
            for entry in entries:
                os.replace(entry.path, out / entry.name)
            staging.rmdir()
        else:
            _replace_export(staging, out)
    except BaseException:
        if staging.is_dir():
            (staging / STAGING_MARKER).touch()  # still an unfinished export, for the next run to take over
        raise


def _replace_export(staging: Path, out: Path) -> None:
    """Swap the finished export in for the previous one, which is removed only after."""
    aside = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
    try:
        os.replace(out, aside)
    except BaseException:
        aside.rmdir()
        raise
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(aside, out)  # the previous export goes back in place
        raise
    shutil.rmtree(aside, ignore_errors=True)  # the new export is in place whatever happens here


PARTS_FOLDER = ".parts"  # in the staging folder: each task's share of annotations.json, removed before publishing
PART_SCENES = 256  # the most scenes of one local task (a Dask task is a whole shard)
MAX_WORKERS = 4096
JSON_SEPARATORS = (",", ":")


@dataclass(frozen=True)
class ExportPart:
    """One export task: records ``start .. stop - 1`` of ``file``, whose record 0 is scene
    ``first_scene`` of the dataset; ``shard``, for a sharded source, is the manifest's
    entry the file must match."""

    index: int
    file: str
    start: int
    stop: int
    first_scene: int = 0
    shard: Shard | None = None
    storage: dict[str, Any] | None = None  # the manifest's, for a shard
    checksums: str | None = None  # a single file's checksums as JSON: the file each task must find at ``file``

    @property
    def count(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class PartResult:
    """What a task tells the client: per exported instance, in order, its category,
    whether it has a visible pixel and its pixel occlusion rate (for the card), and how
    many records it wrote, and per hashed dataset its scenes' digests, concatenated (the
    client chains them into the source's checksums). Its JSON is in the staging folder's parts."""

    category: np.ndarray
    visible: np.ndarray
    rate: np.ndarray
    records: int
    digests: dict[str, bytes]


def _ranges(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + size, stop)) for lo in range(start, stop, size)] or [(start, stop)]


def plan_export(ds: ShapesDataset, engine: Engine, workers: int) -> list[ExportPart]:
    """The tasks of an export, in scene order. A sharded source (its ``dataset.h5``) is
    read shard by shard from the shard files: under Dask one task per shard, locally
    ranges of at most :data:`PART_SCENES` scenes inside shards; a single file is cut
    into ranges (one, when it is exported in this process)."""
    count = len(ds)
    size = max(1, min(PART_SCENES, -(-count // (4 * workers))))
    manifest_path = ds.path.parent / SHARD_MANIFEST
    if ds.path.name == SHARD_VIRTUAL and manifest_path.is_file() and ds.file["images"].is_virtual:
        manifest = read_manifest(ds.path.parent)
        shards = plan_shards(int(manifest["num_scenes"]), int(manifest["shard_size"]))
        if shards[-1].stop != count:
            raise DatasetError(f"{ds.path}: holds {count} scenes, its manifest {shards[-1].stop}", param="path")
        pieces = [
            (shard, lo, hi)
            for shard in shards
            for lo, hi in ([(0, shard.count)] if engine == "dask" or workers == 1 else _ranges(0, shard.count, size))
        ]
        folder = ds.path.parent.resolve()
        return [
            ExportPart(
                index=k,
                file=str(folder / shard.file),
                start=lo,
                stop=hi,
                first_scene=shard.start,
                shard=shard,
                storage=manifest["storage"],
            )
            for k, (shard, lo, hi) in enumerate(pieces)
        ]
    bounds = [(0, count)] if engine == "local" and workers == 1 else _ranges(0, count, size)
    checksums = json.dumps(ds.checksums, sort_keys=True)
    return [
        ExportPart(index=k, file=str(ds.path.resolve()), start=lo, stop=hi, checksums=checksums)
        for k, (lo, hi) in enumerate(bounds)
    ]


def part_file(folder: Path, index: int, kind: str) -> Path:
    """Task ``index``'s share of ``images`` or ``annotations`` in annotations.json, in the
    run's task folder."""
    return folder / f"{index:06d}-{kind}.json"


def _task_folder(staging: Path, export: ExportConfig) -> Path:
    """A new folder in ``staging/.parts/`` that only this run's tasks write into (with
    ``images/`` and, with layer PNGs, ``layers/``): tasks of an interrupted run that a Dask
    cluster still runs write into a path that no longer exists, never into this run's files."""
    (staging / PARTS_FOLDER).mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="run-", dir=staging / PARTS_FOLDER)).resolve()
    for name in EXPORT_FOLDERS if export.layers_png else EXPORT_FOLDERS[:1]:
        (folder / name).mkdir()
    return folder


def _move_files(source: Path, target: Path) -> None:
    """Every file of ``source`` renamed into ``target`` (same file system)."""
    for entry in os.scandir(source):
        os.replace(entry.path, target / entry.name)


def export_part(
    part: ExportPart, config: SceneConfig, folder: str, export: ExportConfig, *, report: Report
) -> PartResult:
    """Export the scenes of ``part`` into ``folder``, the run's task folder (see
    :func:`_task_folder`): their images (and layer PNGs) and their share of
    annotations.json's ``images`` and ``annotations`` lists (the JSON of each entry,
    comma-separated). One engine task."""
    staging = Path(folder)
    try:
        images, annotations, result = _export_scenes(part, config, staging, export, report)
    except CorruptDatasetError as exc:  # its own arguments do not survive pickling back to the client
        raise DatasetError(str(exc)) from None
    part_file(staging, part.index, "images").write_text(",".join(images))
    part_file(staging, part.index, "annotations").write_text(",".join(annotations))
    return result


def _export_scenes(
    part: ExportPart, config: SceneConfig, staging: Path, export: ExportConfig, report: Report
) -> tuple[list[str], list[str], PartResult]:
    """:func:`export_part`'s scenes: their files written, their JSON entries returned."""
    size = config.image_size if export.resolution == "image" else config.mask_size
    images: list[str] = []
    annotations: list[str] = []
    category: list[int] = []
    visible: list[bool] = []
    rate: list[float] = []
    digests: dict[str, list[bytes]] = {name: [] for name in PER_SCENE_HASHED}
    with open_dataset(part.file) as ds:
        if part.shard is not None:
            check_shard_header(ds, config, part.shard, part.storage)
        if part.checksums is not None and json.dumps(ds.checksums, sort_keys=True) != part.checksums:
            raise DatasetError(
                f"{part.file} was replaced by another dataset while it was exported: rerun the export", param="path"
            )
        names = ds.class_names
        for j in range(part.start, part.stop):
            scene = ds[j]
            for field in DATASETS:
                digests[field.name].append(digest(getattr(scene, field.attribute)))
            _check_stored_values(ds, scene)
            if part.first_scene:
                scene = dataclasses.replace(scene, index=part.first_scene + j)
            image, anns, maps = _scene_export(config, scene, export)
            for k, layer in enumerate(maps if maps is not None else []):
                png = Image.fromarray(np.ascontiguousarray(layer, dtype=np.uint16))  # mode I;16: 16-bit grey PNG
                png.save(staging / layer_file_name(scene.index, k + 1), format="PNG")
            pixels = Image.fromarray(scene.image[:, :, 0] if scene.image.shape[2] == 1 else scene.image)
            if size != config.image_size:
                pixels = pixels.resize((size, size), Image.Resampling.BOX)
            pixels.save(staging / image["file_name"], format="PNG")
            images.append(json.dumps(image, separators=JSON_SEPARATORS))
            for a in anns:
                category.append(a["category_id"])
                visible.append(a["is_visible"])
                rate.append(a["pixel_occlude_rate"])
            records = [cocoa_annotation(image, anns, names)] if export.style == "cocoa" else anns
            annotations.extend(json.dumps(record, separators=JSON_SEPARATORS) for record in records)
            report(j + 1 - part.start)
    result = PartResult(
        category=np.array(category, dtype=np.int64),
        visible=np.array(visible, dtype=bool),
        rate=np.array(rate, dtype=np.float64),
        records=len(annotations),
        digests={name: b"".join(values) for name, values in digests.items()},
    )
    return images, annotations, result


def _join_parts(out: IO[bytes], folder: Path, parts: list[ExportPart], kind: str) -> None:
    """The tasks' shares of one JSON list, in task order, comma-separated."""
    first = True
    for part in parts:
        with part_file(folder, part.index, kind).open("rb") as share:
            head = share.read(1)
            if not head:
                continue
            if not first:
                out.write(b",")
            out.write(head)
            shutil.copyfileobj(share, out)
            first = False


def _write_export(ds: ShapesDataset, folder: Path, export: ExportConfig, run: Runner) -> None:
    """Every file of an export. Bytes depend only on the data (config, seed, number of
    scenes), the shapesgen version and the export options: no time, no file name, and
    not how the scenes were split into tasks or where those ran. annotations.json is
    ``json.dumps(document, separators=(",", ":"))`` of the whole document, written from
    the tasks' shares in scene order."""
    config = ds.config
    names = ds.class_names
    if export.layers_png:
        (folder / "layers").mkdir(exist_ok=True)
    parts = plan_export(ds, run.engine, run.local_processes if run.engine == "local" else run.workers)
    task_folder = _task_folder(folder, export)
    results: dict[int, PartResult] = {}
    chain = DigestChain()
    tasks = [
        Task(part.index, f"scenes {part.first_scene + part.start}..{part.first_scene + part.stop - 1}", part.count,
             export_part, (part, config, str(task_folder), export))
        for part in parts
    ]  # fmt: skip

    chained = 0  # parts whose digests are in the chain: chained in scene order as results arrive, then dropped

    def accept(task: Task, result: PartResult) -> None:
        nonlocal chained
        results[task.index] = result
        while chained in results:
            chain.extend_joined(results[chained].digests)
            results[chained] = dataclasses.replace(results[chained], digests={})
            chained += 1

    run(tasks, accept, name=f"export/{task_folder}")
    ds.check_read(chain.hexdigests(), "path", "; nothing was exported")
    for name in EXPORT_FOLDERS if export.layers_png else EXPORT_FOLDERS[:1]:
        _move_files(task_folder / name, folder / name)
    ordered = [results[part.index] for part in parts]
    exported = (
        np.concatenate([r.category for r in ordered]),
        np.concatenate([r.visible for r in ordered]),
        np.concatenate([r.rate for r in ordered]),
    )
    records = sum(r.records for r in ordered)
    identity = data_identity(ds)
    licence = LICENSES[export.license]
    info = {
        "description": f"shapesgen synthetic amodal dataset {identity.name}: {len(ds)} scenes, seed {ds.seed}",
        "version": identity.version,
        "format_version": COCO_EXPORT_VERSION,
        "dataset": identity.reference,
        "split": identity.split.to_dict() if identity.split is not None else None,
        "content_digest": identity.digest,
        "license": licence.spdx,
        "shapesgen_version": str(ds.attrs["package_version"]),
        "source_format_version": str(ds.attrs["format_version"]),
        "seed": ds.seed,
        "num_scenes": len(ds),
        "config": config.to_dict(),
        "export": asdict(export),
        "source_checksums": ds.checksums,
        "ids": "image_id = scene index + 1; annotation id = instance row in the HDF5 file + 1",
    }
    head = {
        "info": info,
        "licenses": [{"id": LICENSE_ID, "name": licence.name, "url": licence.url, "spdx": licence.spdx}],
    }
    categories = [{"id": c + 1, "name": name, "supercategory": "shape"} for c, name in enumerate(names)]
    with (folder / "annotations.json").open("wb") as out:  # the document's keys in order, as json.dumps writes them
        out.write(json.dumps(head, separators=JSON_SEPARATORS)[:-1].encode() + b',"images":[')
        _join_parts(out, task_folder, parts, "images")
        out.write(b'],"annotations":[')
        _join_parts(out, task_folder, parts, "annotations")
        out.write(b'],"categories":' + json.dumps(categories, separators=JSON_SEPARATORS).encode() + b"}\n")
    shutil.rmtree(folder / PARTS_FOLDER)
    (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    digests = {name: _sha256(folder / name) for name in ("annotations.json", "config.json")}
    description = (
        f"Synthetic occlusion scenes with exact amodal ground truth ({len(ds)} images, "
        f"{', '.join(names)}), {LAYOUT_NAMES[export.style]} layout, generated by shapesgen."
    )
    metadata = croissant(
        name=f"shapesgen-{identity.name}",
        description=description,
        version=identity.version,
        license_key=export.license,
        cite_as=identity.citation(str(ds.attrs["package_version"])),
        style=export.style,
        digests=digests,
        categories=names,
        layers_png=export.layers_png,
        date_published=identity.released,
    )
    (folder / "croissant.json").write_text(json.dumps(metadata, indent=1, sort_keys=True) + "\n")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != STAGING_MARKER)
    manifest = [(p.relative_to(folder).as_posix(), _sha256(p)) for p in files]
    (folder / "README.md").write_text(dataset_card(ds, export, exported, records, manifest, identity))
    manifest.append(("README.md", _sha256(folder / "README.md")))
    (folder / "SHA256SUMS").write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(manifest)))


def layer_file_name(scene_index: int, layer: int) -> str:
    """The export's PNG of layer ``layer`` (1 = front) of scene ``scene_index`` (0-based)."""
    return f"layers/{scene_index:06d}_L{layer}.png"


LAYOUT_NAMES = {"coco": "COCO", "cocoa": "COCOA", "kins": "KINS 2020", "aistron": "aistron"}
REBUILD_FOLDER = "../shapesgen-rebuild"  # where the card's commands rebuild an export, beside it
LICENSE_ID = 1  # the one entry of "licenses", which every image names


@dataclass(frozen=True, kw_only=True)
class DataIdentity:
    """What an export says its data is: the dataset version, the registered split it was
    verified to be (``reference``, else ``None``), the split recorded in the file, and
    the content digest of its HDF5 checksums."""

    version: str
    reference: str | None
    split: Split | None
    digest: str
    released: str | None  # a registered version's date

    @property
    def name(self) -> str:
        """``paper-6-1.0.0-test``, or ``<version>`` (``-<split>``) for unregistered data."""
        if self.reference is not None:
            return self.reference.replace(":", "-").replace("/", "-")
        return self.version + (f"-{self.split.name}" if self.split is not None else "")

    @property
    def hub_split(self) -> str:
        """The split name the card's header gives the data (``train`` when it is no split,
        the Hugging Face default)."""
        return self.split.name if self.split is not None else "train"

    def citation(self, package_version: str) -> str:
        what = f"dataset {self.reference}" if self.reference is not None else f"synthetic dataset {self.name}"
        return f"shapesgen {what} (content SHA-256 {self.digest}), generated by shapesgen {package_version}"


def data_identity(ds: ShapesDataset) -> DataIdentity:
    """The identity of ``ds``'s data (see :class:`DataIdentity`)."""
    digest = content_digest(ds.checksums)
    spec = registered_spec(ds.split, ds.checksums)
    if spec is None or ds.split is None:
        return DataIdentity(
            version=content_version(digest), reference=None, split=ds.split, digest=digest, released=None
        )
    return DataIdentity(
        version=spec.version,
        reference=spec.reference(ds.split.name),
        split=ds.split,
        digest=digest,
        released=spec.released,
    )


def rebuild_commands(version: str, num_scenes: int, export: ExportConfig, split: Split | None = None) -> list[str]:
    """The shell commands that rebuild an export and check it against its ``SHA256SUMS``.

    They run from the export folder, from a source checkout of shapesgen ``version``
    (an unpublished version cannot be installed from PyPI). A registered split is
    rebuilt by name (and checked against its registered digest), a user's split from
    ``config.json`` with its base seed and name.
    """
    flags = f"--style {export.style} --segmentation {export.segmentation} --resolution {export.resolution}"
    if export.include_hidden:
        flags += " --include-hidden"
    if export.layers_png:
        flags += " --layers-png"
    flags += f" --license {export.license}"
    if split is not None and split.reference is not None:
        render = f"shapesgen render --dataset {split.reference} --out {REBUILD_FOLDER}/dataset.h5"
    else:
        chosen = f" --seed {split.base_seed} --split {split.name}" if split is not None else ""
        render = (
            f'shapesgen render --config "$EXPORT/config.json"{chosen} --num {num_scenes} '
            f"--out {REBUILD_FOLDER}/dataset.h5"
        )
    return [
        f"python -m pip install -e /path/to/shapesgen   # a source checkout of shapesgen {version}",
        f"shapesgen --version                           # must print shapesgen {version}",
        'EXPORT="$PWD"                                 # run from the folder holding this README',
        render,
        f"shapesgen export coco {REBUILD_FOLDER}/dataset.h5 --out {REBUILD_FOLDER}/export {flags}",
        f'cd {REBUILD_FOLDER}/export && sha256sum -c "$EXPORT/SHA256SUMS"',
    ]


def _identity_lines(identity: DataIdentity, seed: int, num_scenes: int) -> list[str]:
    """The card's lines on which data this is: dataset, version, split, seeds, digest."""
    split = identity.split
    if identity.reference is not None:
        lines = [f"- dataset: `{identity.reference}`, registered in shapesgen with this content (`shapesgen datasets`)"]
    else:
        lines = ["- dataset: unregistered; its version is `0.0.0+` and the first 12 hex digits of the content digest"]
    lines.append(f"- version: `{identity.version}`; {num_scenes} scenes, seed {seed}")
    if split is not None:
        lines += [
            f"- split: `{split.name}` of base seed {split.base_seed}: seed {split.seed} = first 63 bits of",
            f"  SHA-256 of `shapesgen-split/{split.base_seed}/{split.name}`, so the splits of one base seed share no",
            "  scene (scene i uses `default_rng([seed, i])`)",
        ]
    lines.append(f"- content digest: `{identity.digest}` (SHA-256 of the source file's dataset checksums)")
    return lines


def _card_fields(style: Style, side: int) -> list[str]:
    """The card's description of the fields of one layout."""
    flags = [
        f"`pixel_occlude_rate` (fraction of the amodal pixels hidden, at {side} px: the evaluation bands)",
        f"and `is_visible` (at least one visible pixel at {side} px). `image_id` = scene index + 1.",
    ]
    common = ["`visible_mask` and `invisible_mask` (RLE), `occlude_rate` (fraction hidden, exact geometry),", *flags]
    extras = [
        "`instance_id` (index in the scene + 1: the value in the layer maps), `depth` (0 = front),",
        "`occlude_rate` (fraction hidden, exact geometry),",
        *flags,
        "Annotation `id` = instance row in the source HDF5 file + 1. Masks without a polygon are RLE.",
    ]
    if style == "kins":
        return [
            "KINS 2020 layout (`update_train_2020.json` keys): `a_segm`, `a_bbox` (x, y, w, h), `a_area`",
            "are amodal; `i_segm` (RLE), `i_bbox`, `i_area` are inmodal (visible); `oco_id` numbers the",
            "occlusion cluster in the image (instances linked by overlap, 1, 2, ... by front-most member;",
            "0 = overlaps nothing) and `ico_id` is the depth rank in it (1 = front; 0 = overlaps nothing). Extra:",
            *extras,
        ]
    if style == "aistron":
        return [
            "aistron layout: `amodal_segm` (= `segmentation`), `amodal_bbox` (= `bbox`), `amodal_area`",
            "(= `area`), `visible_segm` (RLE), `visible_bbox`, `occluded_segm` (amodal - visible, RLE) and an",
            "exact `occluder_segm` (RLE; `background_objs_segm` is the same): the visible pixels of the",
            "instances in front that share a pixel with it, inside its amodal pixel box. Extra:",
            *extras,
        ]
    if style == "cocoa":
        return [
            "COCO-Amodal layout: one annotation per image (`id` = `image_id`, `size`, `depth_constraint`",
            "pairs `front-back` of 1-based positions in `regions`), its `regions` front to back, each with",
            "an amodal `segmentation` (RLE or one flat polygon), `bbox`, `area`, `name`, `isStuff` (0),",
            "`order` (1 = front), `id` (instance row in the source HDF5 file + 1), `category_id`,",
            *common,
        ]
    return [
        "`segmentation`, `bbox` and `area` are **amodal** (the full extent inside the frame). Extra:",
        "`visible_area`, `visible_bbox`, `depth` (0 = front), `occluder_ids` (annotation ids of the",
        "instances in front that overlap it), `instance_id` (index in the scene + 1),",
        *common,
        "Annotation `id` = instance row in the source HDF5 file + 1.",
    ]


def dataset_card(
    ds: ShapesDataset,
    export: ExportConfig,
    exported: tuple[np.ndarray, np.ndarray, np.ndarray],
    records: int,
    manifest: list[tuple[str, str]],
    identity: DataIdentity | None = None,
) -> str:
    """The export's README.md: a Hugging Face YAML header, what the data is, statistics of
    what was exported, its licence, how to rebuild and verify it. It names no path and
    no time, so a rebuild is byte-identical."""
    identity = identity or data_identity(ds)
    licence = LICENSES[export.license]
    config = ds.config
    version = str(ds.attrs["package_version"])
    side = config.image_size if export.resolution == "image" else config.mask_size
    category, visible = exported[0].astype(np.int64), exported[1].astype(bool)
    rates = exported[2].astype(np.float64)[visible]
    bands = occlusion_band(rates)
    band_counts = {band: int((bands == band).sum()) for band in OCCLUSION_BANDS}
    shown = max(int(visible.sum()), 1)
    total = int(ds.instance_offsets[-1])
    hidden = (
        f"; {int((~visible).sum())} with no visible pixel included (`is_visible: false`)"
        if export.include_hidden
        else "; instances with no visible pixel are left out"
    )
    lines = [
        *hf_front_matter(
            license_key=export.license,
            pretty_name=f"shapesgen {identity.reference or identity.name}",
            split=identity.hub_split,
            num_images=len(ds),
            style=export.style,
            layers_png=export.layers_png,
        ),
        CARD_TITLE,
        "",
        "Synthetic occlusion scenes with exact amodal ground truth, generated by shapesgen",
        f"{version}. Shapes are the colour of the background with black outlines; depth order is",
        "random; every mask is derived from exact polygons.",
        "",
        "## Dataset",
        "",
        *_identity_lines(identity, ds.seed, len(ds)),
        f"- licence: {licence.name} ({licence.spdx}, {licence.url}); also in `annotations.json`",
        "  (`licenses`, each image's `license`) and `croissant.json`",
        "",
        "## Contents",
        "",
        f"- {len(ds)} images ({side} x {side}, {config.channels} channel(s)) in `images/`",
        f"- `annotations.json`: {LAYOUT_NAMES[export.style]} layout, {records} records, segmentation as "
        f"{export.segmentation} at {export.resolution} resolution ({side} px)",
        f"- classes: {', '.join(ds.class_names)}; {config.instances_per_class} instances per class per image",
        f"- instances: {len(category)} exported of {total}, {int(visible.sum())} with a visible pixel at "
        f"{side} px{hidden}",
        *(
            [
                f"- `layers/NNNNNN_Lk.png`: layer k (1 = front) of image NNNNNN, 16-bit grey, {side} x {side}:",
                "  pixel value = `instance_id` of the k-th instance from the front covering the pixel, 0 = none",
                "  (from the pixel-centre amodal masks; layer 1 == `instance_id` is the pixel-centre visible",
                "  mask). Deeper layers also show instances with no visible pixel, which may not be exported.",
            ]
            if export.layers_png
            else []
        ),
        "- `config.json`: the generator config (seed included); `SHA256SUMS`: every file's SHA-256",
        "- `croissant.json`: Croissant 1.0 metadata (files with their SHA-256, record sets)",
        "",
        "## Class balance (exported instances)",
        "",
        "| class | exported | visible |",
        "|---|---|---|",
        *[
            f"| {name} | {int((category == c + 1).sum())} | {int(((category == c + 1) & visible).sum())} |"
            for c, name in enumerate(ds.class_names)
        ],
        "",
        f"## Occlusion (visible instances, pixel occlusion rate at {side} px)",
        "",
        f"Mean occlusion rate {float(rates.mean()) if rates.size else 0.0:.3f}.",
        "",
        "| band | instances | share |",
        "|---|---|---|",
        *[f"| {band} | {count} | {count / shown:.1%} |" for band, count in band_counts.items()],
        "",
        "Bands as in COCO-Amodal evaluation: none <= 1e-5, partial (1e-5, 0.25), heavy >= 0.25.",
        "",
        "## Fields",
        "",
        *_card_fields(export.style, side),
        "",
        "Masks at the export's resolution: the amodal mask is the pixel-centre sampling of the exact",
        "polygon (RLE) or what pycocotools rasterises from the written polygon (polygon); the visible",
        "mask is its pixels where no instance in front covers them, the invisible mask the rest, so",
        "amodal = visible + invisible exactly. `is_visible` and `pixel_occlude_rate` always use the",
        "pixel-centre masks, so every export of one resolution has the same ground truth and bands.",
        "",
        "## Rebuild and verify",
        "",
        "The bytes of every file depend only on `config.json` (seed included), the split, the number of",
        f"scenes, the shapesgen version ({version}) and the export options; no time or file name is recorded.",
        "With the same versions of the libraries that encode them (numpy, shapely, pycocotools, Pillow",
        "and zlib for the PNGs), these commands rebuild this folder and check every file:",
        "",
        "```bash",
        *rebuild_commands(version, len(ds), export, ds.split),
        "```",
        "",
        "## SHA-256 manifest",
        "",
        "```",
        *[f"{digest}  {name}" for name, digest in manifest],
        "```",
        "",
    ]
    return "\n".join(lines)
