"""COCO-amodal evaluation (class-agnostic by default) by occlusion band, on pycocotools.

Ground truth is every instance visible at the ground truth's resolution (mask
resolution for HDF5 files). Overall and per class the metrics are pycocotools'
``COCOeval``'s to the last bit; per occlusion band they are the COCO-Amodal API's:
ground truth outside the band is ignored (a detection matched to it counts neither as
a true nor as a false positive) with ordinary IoU. The matching runs vectorised over all
images instead of in COCOeval's per-image Python loop (:func:`pycocotools_eval` is the
reference that tests compare against). Bands use the pixel occlusion rate, or with
``band_rate="geometric"`` the geometric one (the COCO-Amodal API's ``occlude_rate``).

When the predictions carry a ``depth`` or ``order``, occlusion-order recall and accuracy
are computed (:func:`occlusion_order_metrics`); when they carry a
``visible_segmentation``, invisible-mask AP (:func:`invisible_metrics`). Otherwise these
are reported as not available, never estimated.

Both input files are untrusted: every record is checked before pycocotools sees it
(pycocotools trusts RLE counts and decodes uninitialised memory from short ones), and a
bad one stops the run with one line naming the file and the record. Predictions are
read one record at a time and only the :data:`KEEP_PER_IMAGE` best-scoring per image
and category are kept, all that COCOeval ever looks at, so memory follows the ground
truth, not the size of the results file.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import io
import json
import math
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, cast

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from shapesgen.coco import (
    MAX_MASK_PIXELS,
    check_listed_digest,
    decode_segmentation,
    decode_sized,
    encode_rle,
    export_digests,
    rle_runs,
)
from shapesgen.errors import ConfigError, DatasetError
from shapesgen.files import check_file_output, contains, file_kind, regular_input, resolved, write_atomically
from shapesgen.stats import HEAVY_MIN, NONE_MAX, OCCLUSION_BANDS
from shapesgen.storage.digests import digest, segment_digests
from shapesgen.storage.manifest import is_sharded
from shapesgen.storage.reader import open_dataset

MAX_DETS = (1, 10, 100, 1000)
KEEP_PER_IMAGE = MAX_DETS[-1]  # detections kept per (image, category): COCOeval drops the rest itself
MAX_RECORD_BYTES = 64 << 20  # one prediction record's JSON text
SCENE_BLOCK = 256
# the datasets ground truth is read from (and layers), checked: visible masks give invisible-mask AP
GROUND_TRUTH_READ = ("instances", "amodal_masks", "visible_masks")
_READ_CHUNK = 1 << 20
_NOT_SPACE = re.compile(r"[^ \t\n\r]")
BandRate = Literal["pixel", "geometric"]
BAND_RATES: tuple[BandRate, ...] = ("pixel", "geometric")
# the occlusion rate that bands a JSON record, by band rate: the first key the record has (none: 0)
_RATE_KEYS: dict[str, tuple[str, ...]] = {
    "pixel": ("pixel_occlude_rate", "occlude_rate", "occlusion_rate"),
    "geometric": ("occlude_rate", "occlusion_rate"),
}
_HDF5_RATE = {"pixel": "pixel_occlusion_rate", "geometric": "occlusion_rate"}
_DEPTH_KEYS = ("depth", "order")  # a record's depth order, smaller = nearer: shapesgen's depth, COCOA's order
_VISIBLE_KEYS = ("visible_mask", "i_segm", "visible_segm")  # a ground-truth record's visible mask (COCO, KINS, aistron)
IOU_THRESHOLDS = Params(iouType="segm").iouThrs  # 0.50:0.05:0.95, pycocotools' own values
RECALL_THRESHOLDS = Params(iouType="segm").recThrs
# occlusion-rate bands as the COCO-Amodal API's ``occRng``: both bounds included, so a
# rate of exactly 1e-5 or 0.25 lies in two bands
BAND_RANGES = {"none": (0.0, NONE_MAX), "partial": (NONE_MAX, HEAVY_MIN), "heavy": (HEAVY_MIN, 1.0)}


def _in_band(rates: np.ndarray, band: str) -> np.ndarray:
    low, high = BAND_RANGES[band]
    return (rates >= low) & (rates <= high)


def paper_columns(metrics: dict[str, Any]) -> dict[str, float]:
    """The paper's columns of an :func:`evaluate` result, rounded to 4 places: AP, AP50,
    AP75, AR100 over all instances, then AR100 of each occlusion band (``AR_none`` ...)."""
    row = {key: round(float(metrics["all"][key]), 4) for key in ("AP", "AP50", "AP75", "AR100")}
    row.update({f"AR_{band}": round(float(metrics["bands"][band]["AR100"]), 4) for band in OCCLUSION_BANDS})
    return row


def in_band(rate: float, band: str) -> bool:
    """Whether an occlusion rate falls in a band, bounds included as in the COCO-Amodal API."""
    return bool(_in_band(np.array([rate], dtype=np.float64), band)[0])


@dataclass
class GroundTruth:
    """Flat COCO ground truth at one resolution, with an occlusion rate per instance.

    Optional annotation keys: ``depth`` (its depth order, smaller = nearer), and what
    invisible-mask AP needs, either
    ``hidden_part`` (its amodal mask minus its visible mask, ``(RLE, area)``, or ``None``
    when empty: an HDF5 file's, made while its visible masks are read for their checksums)
    or ``visible_source`` (``(where, value)`` from a JSON file, checked only when read).
    """

    images: list[dict[str, Any]]
    annotations: list[dict[str, Any]]
    categories: list[dict[str, Any]]
    source: str
    layers: np.ndarray | None = None  # (scenes, L, h, w) ids, only for HDF5 sources
    class_of_id: list[np.ndarray] = field(default_factory=list)

    @property
    def image_ids(self) -> set[int]:
        return {image["id"] for image in self.images}

    def size_of(self, image_id: int) -> tuple[int, int]:
        image = self._by_id[image_id]
        return int(image["height"]), int(image["width"])

    def __post_init__(self) -> None:
        self._by_id = {image["id"]: image for image in self.images}


def ground_truth_from_hdf5(path: str | Path, keep_layers: bool = False, band_rate: BandRate = "pixel") -> GroundTruth:
    """Visible instances of every scene, amodal masks at mask resolution, banded by
    ``pixel_occlusion_rate`` (``band_rate="pixel"``) or the geometric ``occlusion_rate``."""
    rate_column = _HDF5_RATE[band_rate]
    with open_dataset(path) as ds:
        m = ds.config.mask_size
        images = [{"id": i + 1, "height": m, "width": m} for i in range(len(ds))]
        annotations: list[dict[str, Any]] = []
        offsets = ds.instance_offsets
        hashers = {name: hashlib.sha256() for name in GROUND_TRUTH_READ}
        for start in range(0, len(ds), SCENE_BLOCK):
            stop = min(start + SCENE_BLOCK, len(ds))
            rows = slice(int(offsets[start]), int(offsets[stop]))
            table = ds.instances[rows]
            keep = np.flatnonzero(table["is_visible"])
            all_masks = ds.amodal_masks[rows]
            bounds = offsets[start : stop + 1] - offsets[start]
            hashers["instances"].update(segment_digests(table, bounds))
            hashers["amodal_masks"].update(segment_digests(all_masks, bounds))
            visible = ds.visible_masks[rows]
            hashers["visible_masks"].update(segment_digests(visible, bounds))
            masks = all_masks[keep]
            has_hidden, hidden_rles, hidden_areas = _hidden_parts(masks, visible[keep])
            hidden_parts = iter(zip(hidden_rles, hidden_areas.tolist(), strict=True))
            for k, rle, hides in zip(keep.tolist(), encode_rle(masks), has_hidden.tolist(), strict=True):
                row = table[k]
                annotations.append(
                    {
                        "id": rows.start + k + 1,
                        "image_id": int(row["scene"]) + 1,
                        "category_id": int(row["class_id"]),
                        "segmentation": rle,
                        "area": int(row["amodal_pixels"]),
                        "bbox": [float(v) for v in mask_utils.toBbox(_bytes_rle(rle))],
                        "iscrowd": 0,
                        "occlusion_rate": float(row[rate_column]),
                        "depth": float(row["depth"]),
                        "hidden_part": next(hidden_parts) if hides else None,
                    }
                )
        layers = ds.layers[:] if keep_layers else None
        if layers is not None:
            hashers["layers"] = hashlib.sha256(b"".join(digest(scene) for scene in layers))
        ds.check_read({name: hasher.hexdigest() for name, hasher in hashers.items()}, "gt")
        categories = [{"id": c + 1, "name": name} for c, name in enumerate(ds.class_names)]
        class_of_id = []
        if keep_layers:
            for i in range(len(ds)):
                class_of_id.append(np.concatenate([[0], ds.instances[ds.instance_rows(i)]["class_id"]]))
    return GroundTruth(images, annotations, categories, str(path), layers, class_of_id)


def _integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _show(value: Any) -> str:
    """A JSON value for a one-line message: short, and never the whole of a big one."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    if _integer(value) and int(value).bit_length() > 128:
        return f"an integer of {int(value).bit_length()} bits"
    text = repr(value) if isinstance(value, (str, bool, int, float)) or value is None else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _open_regular(path: Path) -> IO[bytes]:
    """``path`` opened for reading if it is a regular file.

    FIFOs and devices are refused without blocking: the type is checked before opening,
    the open itself cannot block (``O_NONBLOCK``), and the opened file is checked again
    in case the path was swapped in between.
    """
    regular_input(path, None)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror})", param="path") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise DatasetError(f"{path} is {file_kind(mode)}, not a file")
    return os.fdopen(fd, "rb")


def _read_json(path: Path) -> Any:
    """A whole JSON document; decoding errors, deep nesting and huge numbers become one line.
    A file that a ``SHA256SUMS`` beside it lists (an export's) must match its digest."""
    with _open_regular(path) as file:
        try:
            data = file.read()
        except OSError as exc:
            raise DatasetError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        real = path.resolve()  # the SHA256SUMS beside the file itself, as training reads an export
        check_listed_digest(real.name, data, export_digests(real.parent))
    except DatasetError as exc:
        raise DatasetError(f"{path.parent}: {exc}") from None
    try:
        return json.loads(data)
    except RecursionError:
        raise DatasetError(f"{path}: JSON nested too deeply to read") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable JSON file ({exc})") from None
    except ValueError:  # an integer of more than 4300 digits
        raise DatasetError(f"{path}: JSON holds a number with too many digits") from None


def _gt_images(images: Any, source: str) -> list[dict[str, Any]]:
    if not isinstance(images, list):
        raise DatasetError(f"{source}: images must be a list, got {_show(images)}")
    if not images:
        raise DatasetError(f"{source}: images is empty: there is nothing to evaluate on")
    checked: list[dict[str, Any]] = []
    first_index: dict[int, int] = {}
    for i, image in enumerate(images):
        where = f"{source}: images[{i}]"
        if not isinstance(image, dict):
            raise DatasetError(f"{where}: must be an object, got {_show(image)}")
        for key in ("id", "height", "width"):
            if key not in image:
                raise DatasetError(f"{where}: missing {key!r}")
        image_id, height, width = image["id"], image["height"], image["width"]
        if not _integer(image_id):
            raise DatasetError(f"{where}: id must be an integer, got {_show(image_id)}")
        for key, value in (("height", height), ("width", width)):
            if not _integer(value) or value < 1:
                raise DatasetError(f"{where}: {key} must be a positive integer, got {_show(value)}")
        if height * width > MAX_MASK_PIXELS:
            raise DatasetError(f"{where}: {height}x{width} is over the limit of {MAX_MASK_PIXELS} pixels")
        if image_id in first_index:
            raise DatasetError(f"{where}: id {image_id} is also the id of images[{first_index[image_id]}]")
        first_index[image_id] = i
        checked.append({"id": int(image_id), "height": int(height), "width": int(width)})
    return checked


def _gt_categories(categories: Any, used: set[int], source: str) -> list[dict[str, Any]]:
    """The file's categories, or when it has none one per category id its annotations use."""
    if categories is None or categories == []:
        ids = sorted(used) or [1]
        return [{"id": c, "name": "object" if ids == [1] else f"category {c}"} for c in ids]
    if not isinstance(categories, list):
        raise DatasetError(f"{source}: categories must be a list, got {_show(categories)}")
    checked: list[dict[str, Any]] = []
    for k, category in enumerate(categories):
        where = f"{source}: categories[{k}]"
        if not isinstance(category, dict):
            raise DatasetError(f"{where}: must be an object, got {_show(category)}")
        for key in ("id", "name"):
            if key not in category:
                raise DatasetError(f"{where}: missing {key!r}")
        category_id, name = category["id"], category["name"]
        if not _integer(category_id):
            raise DatasetError(f"{where}: id must be an integer, got {_show(category_id)}")
        if not isinstance(name, str) or not name:
            raise DatasetError(f"{where}: name must be a non-empty string, got {_show(name)}")
        for other, seen in enumerate(checked):
            if seen["id"] == category_id or seen["name"] == name:
                raise DatasetError(f"{where}: id {category_id} or name {name!r} repeats categories[{other}]")
        checked.append({"id": int(category_id), "name": name})
    return checked


def _gt_records(annotations: Any, source: str) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """``(where, record, inherited image_id)`` for flat annotations and COCOA regions.

    A region's ``segmentation`` may be one flat polygon ``[x1, y1, ...]`` (the COCOA form):
    it is read as the list of that one polygon, as the COCO-Amodal API reads it. A flat
    annotation without ``segmentation`` has its amodal mask read from the KINS 2020 key
    ``a_segm`` or the aistron key ``amodal_segm``.
    """
    if not isinstance(annotations, list):
        raise DatasetError(f"{source}: annotations must be a list, got {_show(annotations)}")
    for i, annotation in enumerate(annotations):
        where = f"{source}: annotations[{i}]"
        if not isinstance(annotation, dict):
            raise DatasetError(f"{where}: must be an object, got {_show(annotation)}")
        if "regions" not in annotation:
            amodal = next((k for k in ("a_segm", "amodal_segm") if k in annotation), None)
            if "segmentation" not in annotation and amodal:
                annotation = dict(annotation, segmentation=annotation[amodal])
            yield where, annotation, None
            continue
        regions = annotation["regions"]
        if not isinstance(regions, list):
            raise DatasetError(f"{where}: regions must be a list, got {_show(regions)}")
        for j, region in enumerate(regions):
            if not isinstance(region, dict):
                raise DatasetError(f"{where}.regions[{j}]: must be an object, got {_show(region)}")
            polygon = region.get("segmentation")
            if isinstance(polygon, list) and polygon and not isinstance(polygon[0], list):
                region = dict(region, segmentation=[polygon])  # one flat COCOA polygon: wrapped, as the API does
            yield f"{where}.regions[{j}]", region, annotation.get("image_id")


def _finite(value: Any) -> bool:
    """A JSON number (never a boolean) of finite value as a float."""
    if not _number(value):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer beyond float range
        return False


def _gt_annotation(
    where: str, record: dict[str, Any], inherited: Any, sizes: dict[int, tuple[int, int]], band_rate: BandRate
) -> Any:
    """One checked annotation (``None`` if flagged invisible): ``(image_id, category, mask,
    rate, depth or None, (where, visible mask value) or None)``."""
    image_id = record.get("image_id", inherited)
    if image_id is None:
        raise DatasetError(f"{where}: missing 'image_id'")
    if not _integer(image_id):
        raise DatasetError(f"{where}: image_id must be an integer, got {_show(image_id)}")
    if image_id not in sizes:
        raise DatasetError(f"{where}: image_id {image_id} is not an image id")
    visible = record.get("is_visible", True)
    if not isinstance(visible, bool):
        raise DatasetError(f"{where}: is_visible must be true or false, got {_show(visible)}")
    category = record.get("category_id", 1)
    if not _integer(category):
        raise DatasetError(f"{where}: category_id must be an integer, got {_show(category)}")
    key = next((k for k in _RATE_KEYS[band_rate] if k in record), None)
    rate = record[key] if key else 0.0
    if not _number(rate) or not 0.0 <= rate <= 1.0:
        raise DatasetError(f"{where}: {key} must be a number in [0, 1], got {_show(rate)}")
    if "segmentation" not in record:
        raise DatasetError(f"{where}: missing 'segmentation' (or the KINS 'a_segm', the aistron 'amodal_segm')")
    h, w = sizes[image_id]
    mask = decode_sized(record["segmentation"], h, w, where)
    depth_key = next((k for k in _DEPTH_KEYS if k in record), None)
    depth = record[depth_key] if depth_key else None
    if depth_key and not _finite(depth):
        raise DatasetError(f"{where}: {depth_key} must be a finite number (smaller = nearer), got {_show(depth)}")
    if not visible:
        return None
    visible_key = next((k for k in _VISIBLE_KEYS if k in record), None)
    visible_mask = (f"{where}.{visible_key}", record[visible_key]) if visible_key else None
    return int(image_id), int(category), mask, float(rate), None if depth is None else float(depth), visible_mask


def ground_truth_from_json(path: str | Path, band_rate: BandRate = "pixel") -> GroundTruth:
    """A shapesgen COCO or COCOA export (or any flat COCO file with amodal masks), checked.

    ``band_rate="pixel"`` bands by ``pixel_occlude_rate`` (else ``occlude_rate``, else
    ``occlusion_rate``), ``"geometric"`` by ``occlude_rate`` (else ``occlusion_rate``);
    a record with none of them has rate 0. A record's ``depth`` (else COCOA's ``order``)
    is its depth order; its visible mask (``visible_mask``, KINS ``i_segm`` or aistron
    ``visible_segm``) is kept unread until invisible-mask AP needs it.

    Any malformed part (structure, types, ids, masks) raises :class:`DatasetError` with
    one line naming the file and the record, e.g. ``annotations[17]: image_id 99 is not an image id``.
    Annotations are numbered afresh; the file's own ``id`` fields are not used.
    """
    source = str(path)
    document = _read_json(Path(path))
    if not isinstance(document, dict) or "images" not in document or "annotations" not in document:
        raise DatasetError(f"{source}: not a COCO file (needs 'images' and 'annotations')")
    images = _gt_images(document["images"], source)
    sizes = {image["id"]: (image["height"], image["width"]) for image in images}
    annotations: list[dict[str, Any]] = []
    where_of: list[str] = []
    for where, record, inherited in _gt_records(document["annotations"], source):
        checked = _gt_annotation(where, record, inherited, sizes, band_rate)
        if checked is None:
            continue
        image_id, category, mask, rate, depth, visible_mask = checked
        rle = encode_rle(mask[None])[0]  # only the RLE is kept: memory grows with the file, not with pixels
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category,
                "segmentation": rle,
                "area": int(mask.sum()),
                "bbox": [float(v) for v in mask_utils.toBbox(_bytes_rle(rle))],
                "iscrowd": 0,
                "occlusion_rate": rate,
            }
        )
        if depth is not None:
            annotations[-1]["depth"] = depth
        if visible_mask is not None:
            annotations[-1]["visible_source"] = visible_mask
        where_of.append(where)
    categories = _gt_categories(document.get("categories"), {a["category_id"] for a in annotations}, source)
    category_ids = {c["id"] for c in categories}
    for where, annotation in zip(where_of, annotations, strict=True):
        if annotation["category_id"] not in category_ids:
            raise DatasetError(f"{where}: category_id {annotation['category_id']} is not a category id")
    return GroundTruth(images, annotations, categories, source)


def check_band_rate(band_rate: Any) -> BandRate:
    """``band_rate`` if it is one of :data:`BAND_RATES`, else a :class:`ConfigError`."""
    if band_rate not in BAND_RATES:
        raise ConfigError(
            f"band_rate={band_rate!r} is invalid: use 'pixel' (mask pixels hidden, the default) or 'geometric' "
            "(area hidden, exact geometry: the COCO-Amodal API's occlude_rate)",
            param="band_rate",
        )
    return cast(BandRate, band_rate)


def load_ground_truth(path: str | Path, keep_layers: bool = False, band_rate: BandRate = "pixel") -> GroundTruth:
    """Ground truth from an HDF5 dataset (a file, or a sharded dataset folder: its
    ``dataset.h5``) or a COCO JSON export, banded by ``band_rate``."""
    band_rate = check_band_rate(band_rate)
    path = Path(path)
    if is_sharded(path):  # opened through its dataset.h5 (which says so if it is missing)
        return ground_truth_from_hdf5(path, keep_layers=keep_layers, band_rate=band_rate)
    regular_input(path, None)
    if path.suffix.lower() == ".json":
        return ground_truth_from_json(path, band_rate)
    return ground_truth_from_hdf5(path, keep_layers=keep_layers, band_rate=band_rate)


def _bytes_rle(rle: dict[str, Any]) -> dict[str, Any]:
    return {
        "size": rle["size"],
        "counts": rle["counts"].encode("ascii") if isinstance(rle["counts"], str) else rle["counts"],
    }


def _json_start(char: str) -> str:
    """What a JSON document starting with ``char`` is, for messages."""
    kinds = {"{": "an object", '"': "a string", "t": "a boolean", "f": "a boolean", "n": "null", "": "an empty file"}
    if char in kinds:
        return kinds[char]
    return "a number" if char in "-0123456789" else f"not JSON (it starts with {char!r})"


class _JsonListReader:
    """The elements of a top-level JSON list, parsed one at a time.

    Memory holds the current record and a read buffer, never the whole file; one record
    may be at most :data:`MAX_RECORD_BYTES` of text.
    """

    def __init__(self, file: IO[str], source: str) -> None:
        self.file, self.source = file, source
        self.buffer, self.pos, self.offset, self.eof = "", 0, 0, False
        self.decoder = json.JSONDecoder()

    def _read(self, size: int) -> None:
        try:
            chunk = self.file.read(size)
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{self.source}: not UTF-8 text ({exc.reason})") from None
        except OSError as exc:
            raise DatasetError(f"{self.source}: cannot be read ({exc.strerror})") from None
        self.eof = not chunk
        if self.pos >= _READ_CHUNK:
            self.offset += self.pos
            self.buffer, self.pos = self.buffer[self.pos :], 0
        self.buffer += chunk

    def _peek(self) -> str:
        """The next character that is not whitespace (not consumed), or '' at the end."""
        while True:
            found = _NOT_SPACE.search(self.buffer, self.pos)
            if found:
                self.pos = found.start()
                return self.buffer[self.pos]
            self.pos = len(self.buffer)
            if self.eof:
                return ""
            self._read(_READ_CHUNK)

    def _value(self, index: int) -> Any:
        where = f"{self.source}: record {index}"
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buffer, self.pos)
            except json.JSONDecodeError as exc:
                if self.eof:
                    at = f"character {self.offset + exc.pos}"
                    raise DatasetError(f"{where}: not valid JSON ({exc.msg}, {at})") from None
                if len(self.buffer) - self.pos > MAX_RECORD_BYTES:
                    within = f"within {MAX_RECORD_BYTES >> 20} MiB"
                    raise DatasetError(f"{where}: not valid JSON {within} ({exc.msg})") from None
                self._read(max(_READ_CHUNK, len(self.buffer) - self.pos))
                continue
            except RecursionError:
                raise DatasetError(f"{where}: JSON nested too deeply to read") from None
            except ValueError:  # an integer of more than 4300 digits
                raise DatasetError(f"{where}: holds a number with too many digits") from None
            if isinstance(value, (int, float)) and not self.eof and end + 64 > len(self.buffer):
                self._read(_READ_CHUNK)  # a number may go on in the next chunk ("1" of "1.5e3")
                continue
            self.pos = end
            return value

    def records(self) -> Iterator[Any]:
        first = self._peek()
        if first != "[":
            raise DatasetError(f"{self.source}: must be a JSON list of COCO results, got {_json_start(first)}")
        self.pos += 1
        index = 0
        if self._peek() != "]":
            while True:
                if not self._peek():
                    raise DatasetError(f"{self.source}: ends before record {index} (truncated file?)")
                yield self._value(index)
                index += 1
                after = self._peek()
                self.pos += 1
                if after == "]":
                    break
                if after != ",":
                    found = repr(after) if after else "the end of the file"
                    raise DatasetError(f"{self.source}: after record {index - 1}: expected ',' or ']', got {found}")
        else:
            self.pos += 1
        if self._peek():
            raise DatasetError(f"{self.source}: unexpected data after the list at character {self.offset + self.pos}")


OPTIONAL_RESULT_FIELDS = ("depth", "order", "visible_segmentation")
"""Result fields beyond COCO's, each on every record or on none: ``depth`` and ``order``
(a number, smaller = nearer: occlusion-order metrics) and ``visible_segmentation`` (an
RLE of the mask's size: invisible-mask AP)."""


def load_predictions(path: str | Path, gt: GroundTruth, warnings: list[str]) -> list[dict[str, Any]]:
    """COCO results (``image_id``, ``segmentation`` RLE, ``score``, ``category_id``, and
    the :data:`OPTIONAL_RESULT_FIELDS`), checked.

    The file is read one record at a time; see :func:`check_predictions` for what is kept.
    """
    path = Path(path)
    with io.TextIOWrapper(_open_regular(path), encoding="utf-8-sig") as text:
        return check_predictions(_JsonListReader(text, str(path)).records(), gt, warnings, str(path))


def _resized_rle(rle: Any, size: tuple[int, int], target: tuple[int, int]) -> dict[str, Any]:
    """A checked RLE of ``size`` as a compressed RLE of ``target`` (resized nearest)."""
    mask = decode_segmentation(rle, *size)
    if size != target:
        mask = np.asarray(Image.fromarray(mask).resize((target[1], target[0]), Image.Resampling.NEAREST))
    return encode_rle(mask[None])[0]


def _check_record(
    record: Any, where: str, image_ids: set[int], categories: set[int]
) -> tuple[int, int, float, tuple[int, int]]:
    """``(image_id, category_id, score, mask size)`` of a valid result record."""
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: must be an object, got {_show(record)}")
    missing = [key for key in ("image_id", "segmentation", "score") if key not in record]
    if missing:
        raise DatasetError(f"{where}: missing field(s) {missing}")
    image_id = record["image_id"]
    if not _integer(image_id):
        raise DatasetError(f"{where}: image_id must be an integer, got {_show(image_id)}")
    if image_id not in image_ids:
        known = f" ({min(image_ids)}..{max(image_ids)})" if image_ids else ""
        raise DatasetError(f"{where}: image_id {image_id} is not in the ground truth{known}")
    score = record["score"]
    try:
        value = float(score) if _number(score) else math.nan
    except OverflowError:  # an integer beyond float range
        value = math.inf
    if not math.isfinite(value):
        raise DatasetError(f"{where}: score {_show(score)} must be a finite number")
    category = record.get("category_id", 1)
    if not _integer(category):
        raise DatasetError(f"{where}: category_id must be an integer, got {_show(category)}")
    if category not in categories:
        raise DatasetError(f"{where}: category_id {category} is not one of {sorted(categories)}")
    try:
        height, width, _ = rle_runs(record["segmentation"])
    except DatasetError as exc:
        raise DatasetError(f"{where}: {exc}") from None
    for key in ("depth", "order"):
        if key in record and not _finite(record[key]):
            raise DatasetError(f"{where}: {key} must be a finite number (smaller = nearer), got {_show(record[key])}")
    if "visible_segmentation" in record:
        try:
            visible_size = rle_runs(record["visible_segmentation"])[:2]
        except DatasetError as exc:
            message = str(exc)
            named = f"visible_{message}" if message.startswith("segmentation") else f"visible_segmentation: {message}"
            raise DatasetError(f"{where}: {named}") from None
        if visible_size != (height, width):
            raise DatasetError(
                f"{where}: visible_segmentation size {list(visible_size)} is not its segmentation's {[height, width]}"
            )
    return int(image_id), int(category), value, (height, width)


def _same_fields(record: dict[str, Any], first: tuple[str, ...] | None, where: str) -> tuple[str, ...]:
    """The optional fields ``record`` carries, which must be those of the first record."""
    fields = tuple(key for key in OPTIONAL_RESULT_FIELDS if key in record)
    if first is not None and fields != first:
        key = next(key for key in OPTIONAL_RESULT_FIELDS if (key in fields) != (key in first))
        has = "has" if key in fields else "has no"
        raise DatasetError(f"{where}: {has} {key!r}, unlike record 0: give {key!r} on every record or on none")
    return fields


def check_predictions(
    records: Iterable[Any], gt: GroundTruth, warnings: list[str], source: str = "predictions"
) -> list[dict[str, Any]]:
    """Validate COCO result records against the ground truth; errors name the first bad one.

    Every record is checked (RLE runs must sum to height x width before anything decodes
    them). Of each image and category only the :data:`KEEP_PER_IMAGE` best-scoring
    detections are kept, ties going to the earlier record, as COCOeval keeps them, so the
    metrics are exactly those of the full list and memory stays bounded; a warning says
    how many were dropped. Masks of another size than the ground truth are resized
    (nearest) with a warning. The :data:`OPTIONAL_RESULT_FIELDS` a record carries are
    kept (``depth`` and ``order`` as floats, ``visible_segmentation`` resized like the
    mask). The result keeps the records' order.
    """
    image_ids = gt.image_ids
    categories = {c["id"] for c in gt.categories}
    best: dict[tuple[int, int], list[tuple[float, int, dict[str, Any]]]] = {}
    resized = dropped = 0
    first: tuple[str, ...] | None = None
    for index, record in enumerate(records):
        where = f"{source}: record {index}"
        image_id, category, score, size = _check_record(record, where, image_ids, categories)
        first = _same_fields(record, first, where)
        h, w = gt.size_of(image_id)
        resized += size != (h, w)
        heap = best.setdefault((image_id, category), [])
        if len(heap) >= KEEP_PER_IMAGE:
            dropped += 1
            if (score, -index) < heap[0][:2]:
                continue
        detection: dict[str, Any] = {
            "image_id": image_id,
            "category_id": category,
            "score": score,
            "segmentation": _resized_rle(record["segmentation"], size, (h, w)),
        }
        for key in ("depth", "order"):
            if key in record:
                detection[key] = float(record[key])
        if "visible_segmentation" in record:
            detection["visible_segmentation"] = _resized_rle(record["visible_segmentation"], size, (h, w))
        entry = (score, -index, detection)
        if len(heap) >= KEEP_PER_IMAGE:
            heapq.heapreplace(heap, entry)
        else:
            heapq.heappush(heap, entry)
    if resized:
        warnings.append(f"{resized} predicted masks were not the ground truth's size and were resized (nearest) to it")
    if dropped:
        warnings.append(
            f"{dropped} detections beyond the {KEEP_PER_IMAGE} best-scoring per image and category were dropped"
            " (COCOeval never looks at them)"
        )
    kept = sorted((entry for heap in best.values() for entry in heap), key=lambda entry: -entry[1])
    return [entry[2] for entry in kept]


def oracle_predictions(gt: GroundTruth, num_layers: int) -> list[dict[str, Any]]:
    """Each visible instance's mask = union of its pixels in the first K ground-truth layers."""
    if gt.layers is None:
        raise ConfigError(
            "num_layers needs an HDF5 ground truth loaded with keep_layers=True (it reads the layer maps)",
            param="num_layers",
        )
    stored = gt.layers.shape[1]
    if not 1 <= num_layers <= stored:
        raise ConfigError(
            f"num_layers={num_layers} is invalid: the file stores {stored} layers (1..{stored})", param="num_layers"
        )
    detections = []
    for scene, layers in enumerate(gt.layers[:, :num_layers]):
        ids = np.unique(layers[0])
        ids = ids[ids > 0]
        classes = gt.class_of_id[scene]
        if len(ids) and int(ids[-1]) >= len(classes):  # only a hand-edited file can hold such an id
            raise DatasetError(
                f"{gt.source}: scene {scene}: layer 1 holds instance id {int(ids[-1])}, but the scene has "
                f"{len(classes) - 1} instances; check the file with `shapesgen validate {gt.source}`"
            )
        masks = np.any(layers[None] == ids[:, None, None, None], axis=1)
        for instance, rle in zip(ids.tolist(), encode_rle(masks), strict=True):
            detections.append(
                {"image_id": scene + 1, "category_id": int(classes[instance]), "score": 1.0, "segmentation": rle}
            )
    return detections


def _coco(images: list[dict[str, Any]], annotations: list[dict[str, Any]], categories: list[dict[str, Any]]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _valid_mean(values: np.ndarray) -> float:
    """Mean of the entries COCOeval filled (> -1), or -1 when there are none, as COCO reports."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


def _summary_of(precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
    """AP, AP50, AP75 from precision ``(T, R, ...)`` at the largest maxDets, AR100 from recall ``(T, ...)``."""
    return {
        "AP": _valid_mean(precision),
        "AP50": _valid_mean(precision[np.isclose(IOU_THRESHOLDS, 0.5)]),
        "AP75": _valid_mean(precision[np.isclose(IOU_THRESHOLDS, 0.75)]),
        "AR100": _valid_mean(recall),
    }


def _summary(evaluator: COCOeval) -> dict[str, float]:
    """The same summary of a pycocotools run (``maxDets`` must be :data:`MAX_DETS`)."""
    return _summary_of(
        evaluator.eval["precision"][:, :, :, 0, -1], evaluator.eval["recall"][:, :, 0, MAX_DETS.index(100)]
    )


def _with_boxes(detections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Detections as COCO annotations: ids, areas and boxes from their masks."""
    out = []
    for i, d in enumerate(detections):
        rle = _bytes_rle(d["segmentation"])
        box = [float(v) for v in mask_utils.toBbox(rle)]
        out.append(dict(d, id=i + 1, area=float(mask_utils.area(rle)), bbox=box, iscrowd=0))
    return out


def pycocotools_eval(
    gt: GroundTruth, detections: list[dict[str, Any]], *, use_cats: bool = False, band: str | None = None
) -> COCOeval:
    """The reference: plain pycocotools ``COCOeval``, evaluated and accumulated.

    :func:`evaluate` equals it (tests check this; ``benchmarks/bench_eval.py`` times both).
    With a ``band`` it runs the COCO-Amodal API's semantics in pycocotools' own code:
    ground truth outside the band gets an area outside the one area range, which
    pycocotools ignores with ordinary IoU, and all categories become one, so that equal
    scores and equal IoUs are taken in list order as the API (which has no categories)
    takes them.
    """
    annotations = [dict(a) for a in gt.annotations]  # COCOeval writes its flags into them
    records, categories = detections, gt.categories
    if band is not None:
        annotations = [
            dict(a, category_id=1, area=a["area"] if in_band(a["occlusion_rate"], band) else -1.0) for a in annotations
        ]
        records = [dict(d, category_id=1) for d in detections]
        categories = [{"id": 1, "name": "object"}]
    evaluator = COCOeval(
        _coco(gt.images, annotations, categories), _coco(gt.images, _with_boxes(records), categories), "segm"
    )
    evaluator.params.maxDets = list(MAX_DETS)
    evaluator.params.areaRng = [[0, 1e10]]
    evaluator.params.areaRngLbl = ["all"]
    evaluator.params.useCats = int(use_cats)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator


@dataclass
class _Table:
    """Ground truth and detections as arrays in list order, with every pair that can match.

    Images and categories are numbered by ascending id. ``pair_*`` holds (detection,
    ground truth, IoU) for every pair in one image with IoU >= 0.5, the lowest threshold:
    no other pair can ever match. ``*_depth``: depth order (smaller = nearer), NaN if unknown.
    """

    gt_image: np.ndarray
    gt_category: np.ndarray
    gt_rate: np.ndarray
    gt_depth: np.ndarray
    det_image: np.ndarray
    det_category: np.ndarray
    det_score: np.ndarray
    det_depth: np.ndarray
    pair_det: np.ndarray
    pair_gt: np.ndarray
    pair_iou: np.ndarray


@dataclass
class _Order:
    """One evaluator's processing order (see :func:`_order`)."""

    det_rank: np.ndarray  # per detection, its rank among those of its image (and category, per class)
    det_sequence: np.ndarray  # the detections in the order accumulation concatenates them
    gt_position: np.ndarray  # per ground truth, its place in its image's list: the later wins IoU ties


def _ranks(groups: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal values (``groups`` sorted)."""
    if not groups.size:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    return np.arange(groups.size) - np.repeat(starts, np.diff(np.r_[starts, groups.size]))


def _order(table: _Table, kind: str) -> _Order:
    """The order in which an evaluator takes ground truth and detections; it decides ties.

    ``"cocoeval"``: pycocotools' class-agnostic run, which lists an image's ground truth
    and detections category by category (ascending id), then in list order, and sorts
    detections by score stably. ``"api"``: the COCO-Amodal API, which keeps list order.
    ``"class"``: pycocotools' class-aware run, per image and category. Images come in
    ascending id in all three.
    """
    det_index, gt_index = np.arange(table.det_score.size), np.arange(table.gt_rate.size)
    image, category, score = table.det_image, table.det_category, table.det_score
    if kind == "api":
        sequence = np.lexsort((det_index, -score, image))
        gt_sequence = np.lexsort((gt_index, table.gt_image))
    else:
        keys = (det_index, category, -score, image) if kind == "cocoeval" else (det_index, -score, category, image)
        sequence = np.lexsort(keys)
        gt_sequence = np.lexsort((gt_index, table.gt_category, table.gt_image))
    groups = table.det_image[sequence]
    if kind == "class":
        groups = groups * (int(table.det_category.max(initial=0)) + 1) + table.det_category[sequence]
    rank = np.empty_like(det_index)
    rank[sequence] = _ranks(groups)
    position = np.empty_like(gt_index)
    position[gt_sequence] = gt_index
    return _Order(rank, sequence, position)


def _table(
    gt: GroundTruth, detections: list[dict[str, Any]], depth_key: str | None = None
) -> tuple[_Table, list[Any], list[Any]]:
    """The arrays of :class:`_Table` (pairs still empty) and the masks, in list order;
    a detection's depth is its ``depth_key`` field.

    Records of images or categories that the ground truth lacks are left out, as COCOeval
    leaves them out (the loaders refuse them anyway).
    """
    image_index = {image_id: k for k, image_id in enumerate(sorted(gt.image_ids))}
    category_index = {c: k for k, c in enumerate(sorted(c["id"] for c in gt.categories))}
    anns = [a for a in gt.annotations if a["image_id"] in image_index and a["category_id"] in category_index]
    dets = [d for d in detections if d["image_id"] in image_index and d["category_id"] in category_index]
    empty = np.zeros(0, dtype=np.int64)
    table = _Table(
        gt_image=np.array([image_index[a["image_id"]] for a in anns], dtype=np.int64),
        gt_category=np.array([category_index[a["category_id"]] for a in anns], dtype=np.int64),
        gt_rate=np.array([a["occlusion_rate"] for a in anns], dtype=np.float64),
        gt_depth=np.array([a.get("depth", math.nan) for a in anns], dtype=np.float64),
        det_image=np.array([image_index[d["image_id"]] for d in dets], dtype=np.int64),
        det_category=np.array([category_index[d["category_id"]] for d in dets], dtype=np.int64),
        det_score=np.array([d["score"] for d in dets], dtype=np.float64),
        det_depth=np.array([d[depth_key] if depth_key else math.nan for d in dets], dtype=np.float64),
        pair_det=empty,
        pair_gt=empty,
        pair_iou=np.zeros(0),
    )
    return table, [a["segmentation"] for a in anns], [d["segmentation"] for d in dets]


def _find_pairs(table: _Table, gt_masks: list[Any], det_masks: list[Any], needed: np.ndarray) -> None:
    """Fill the table's pairs: IoU (pycocotools' own) of the ``needed`` detections with
    the ground truth of their image, keeping IoU >= 0.5."""
    images = int(max(table.gt_image.max(initial=-1), table.det_image.max(initial=-1))) + 1
    gts = np.argsort(table.gt_image, kind="stable")
    dets = np.flatnonzero(needed)
    dets = dets[np.argsort(table.det_image[dets], kind="stable")]
    gt_bounds = np.searchsorted(table.gt_image[gts], np.arange(images + 1))
    det_bounds = np.searchsorted(table.det_image[dets], np.arange(images + 1))
    lowest = min(float(IOU_THRESHOLDS[0]), 1 - 1e-10)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for image in np.flatnonzero((np.diff(gt_bounds) > 0) & (np.diff(det_bounds) > 0)).tolist():
        g = gts[gt_bounds[image] : gt_bounds[image + 1]]
        d = dets[det_bounds[image] : det_bounds[image + 1]]
        ious = mask_utils.iou([det_masks[k] for k in d.tolist()], [gt_masks[k] for k in g.tolist()], [0] * g.size)
        rows, columns = np.nonzero(np.asarray(ious) >= lowest)
        found.append((d[rows], g[columns], np.asarray(ious, dtype=np.float64)[rows, columns]))
    if found:
        table.pair_det, table.pair_gt, table.pair_iou = (np.concatenate(column) for column in zip(*found, strict=True))


def _match(
    table: _Table, order: _Order, ignored: np.ndarray, pairs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COCOeval's greedy matching (and the COCO-Amodal API's), all images and IoU thresholds at once.

    Per image, detections in ``order`` each take, per threshold, the still unmatched
    ground truth of highest IoU >= the threshold, preferring one not ``ignored`` (ties:
    the later in ``order``); a detection that only finds ignored ground truth takes it
    and is itself ignored. None of our ground truth is a crowd region, so each is matched
    at most once. Images are independent, so step ``r`` takes the ``r``-th detection of
    every image together. Only ``pairs`` (indices into the table's pairs) take part.
    Returns ``(matched, matched_to_ignored, partner)``, each ``(thresholds, detections)``;
    ``partner`` is the index of the matched ground truth, -1 if none.
    """
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[:, None]
    shape = (thresholds.shape[0], table.det_score.size)
    matched, to_ignored = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    partner = np.full(shape, -1, dtype=np.int64)
    det, gt, iou = table.pair_det[pairs], table.pair_gt[pairs], table.pair_iou[pairs]
    rank = order.det_rank[det]
    # by step, then detection, then rising preference: a detection takes its last eligible candidate
    by = np.lexsort((order.gt_position[gt], iou, ~ignored[gt], det, rank))
    det, gt, iou, rank = det[by], gt[by], iou[by], rank[by]
    taken = np.zeros((thresholds.shape[0], table.gt_rate.size), dtype=bool)
    starts = np.flatnonzero(np.r_[True, det[1:] != det[:-1]]) if det.size else np.zeros(0, dtype=np.int64)
    steps = np.searchsorted(rank[starts], np.arange(int(rank.max(initial=-1)) + 2))
    for first, last in zip(steps[:-1].tolist(), steps[1:].tolist(), strict=True):
        if first == last:
            continue
        a, b = starts[first], starts[last] if last < starts.size else det.size
        step_gt = gt[a:b]
        eligible = (iou[a:b] >= thresholds) & ~taken[:, step_gt]
        chosen = np.maximum.reduceat(np.where(eligible, np.arange(b - a), -1), starts[first:last] - a, axis=1)
        t, k = np.nonzero(chosen >= 0)
        choice = step_gt[chosen[t, k]]
        taken[t, choice] = True
        d = det[starts[first + k]]
        matched[t, d] = True
        to_ignored[t, d] = ignored[choice]
        partner[t, d] = choice
    return matched, to_ignored, partner


def _accumulate(
    table: _Table,
    order: _Order,
    match: tuple[np.ndarray, np.ndarray],
    kept: np.ndarray,
    kept_100: np.ndarray,
    npig: int,
) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval's ``accumulate`` for one category, with its exact arithmetic.

    Precision ``(T, R)`` over the ``kept`` detections (the first 1000 per image), recall
    ``(T,)`` over ``kept_100`` (the first 100); -1 when there is no ground truth to find
    (``npig``, the non-ignored ground truth), 0 when nothing was detected.
    """
    num_t, num_r = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)
    if npig == 0:
        return -np.ones((num_t, num_r)), -np.ones(num_t)
    matched, to_ignored = match
    found_100 = (matched[:, kept_100] & ~to_ignored[:, kept_100]).sum(axis=1)
    recall = found_100 / npig if kept_100.any() else np.zeros(num_t)
    precision = np.zeros((num_t, num_r))
    sequence = order.det_sequence[kept[order.det_sequence]]
    if not sequence.size:
        return precision, recall
    sequence = sequence[np.argsort(-table.det_score[sequence], kind="mergesort")]
    hit, skip = matched[:, sequence], to_ignored[:, sequence]
    tp_sum = np.cumsum(hit & ~skip, axis=1).astype(dtype=float)
    fp_sum = np.cumsum(~hit & ~skip, axis=1).astype(dtype=float)
    rc = tp_sum / npig
    pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # COCOeval's monotone envelope
    for t in range(num_t):
        at = np.searchsorted(rc[t], RECALL_THRESHOLDS, side="left")
        reached = at < sequence.size
        precision[t, reached] = pr[t, at[reached]]
    return precision, recall


ORDER_KEYS = ("recall", "recall50", "accuracy", "accuracy50")
INVISIBLE_KEYS = ("AP", "AP50", "AP75", "AR100")
_DECODE_PIXELS = 1 << 24  # masks decoded at once for invisible-mask AP (16 MiB of booleans)


def evaluate(
    gt: GroundTruth, detections: list[dict[str, Any]], *, per_class: bool = False, bands: bool = True
) -> dict[str, Any]:
    """The paper's metric table: overall AP/AP50/AP75/AR100, the same per occlusion band, per class if asked.

    Overall and per class the numbers are pycocotools' ``COCOeval`` (``iouType="segm"``,
    ``maxDets`` :data:`MAX_DETS`, one area range), bit for bit. Per band they are the
    COCO-Amodal API's ``occRng`` filter: ground truth outside the band (bounds included,
    :data:`BAND_RANGES`) is ignored with ordinary IoU, and equal scores are taken in list
    order as the API takes them. :func:`pycocotools_eval` is the reference. Matching runs
    for all images at once on the pairs of IoU >= 0.5, not in COCOeval's per-image loop.

    Also ``occlusion_order`` (:func:`occlusion_order_metrics`) and ``invisible``
    (:func:`invisible_metrics`): their numbers are ``None``, with a ``note`` saying why,
    when the predictions or the ground truth lack what they need.
    """
    depth_key = _carried(detections, ("depth", "order"))
    result, table, orders, gt_masks, det_masks = _amodal_metrics(
        gt, detections, per_class=per_class, bands=bands, depth_key=depth_key
    )
    result["occlusion_order"] = occlusion_order_metrics(table, gt_masks, det_masks, orders.get("api"), depth_key)
    result["invisible"] = invisible_metrics(gt, detections)
    return result


def _carried(detections: list[dict[str, Any]], keys: tuple[str, ...]) -> str | None:
    """The first of ``keys`` that every detection carries (``None`` for no detections)."""
    return next((key for key in keys if detections and all(key in d for d in detections)), None)


def _amodal_metrics(
    gt: GroundTruth, detections: list[dict[str, Any]], *, per_class: bool, bands: bool, depth_key: str | None = None
) -> tuple[dict[str, Any], _Table, dict[str, _Order], list[Any], list[Any]]:
    """:func:`evaluate`'s mask metrics, and the table, orders and masks they were computed
    from (with the COCO-Amodal API's order too when ``depth_key`` asks for order metrics)."""
    table, gt_masks, det_masks = _table(gt, detections, depth_key)
    orders = {"cocoeval": _order(table, "cocoeval")}
    if bands or depth_key is not None:
        orders["api"] = _order(table, "api")
    if per_class:
        orders["class"] = _order(table, "class")
    needed = np.logical_or.reduce([order.det_rank < KEEP_PER_IMAGE for order in orders.values()])
    _find_pairs(table, gt_masks, det_masks, needed)
    nothing_ignored = np.zeros(table.gt_rate.size, dtype=bool)
    in_bands = {band: _in_band(table.gt_rate, band) for band in OCCLUSION_BANDS}

    def run(kind: str, ignored: np.ndarray) -> dict[str, float]:
        order = orders[kind]
        matched, to_ignored, _ = _match(
            table, order, ignored, np.flatnonzero(order.det_rank[table.pair_det] < KEEP_PER_IMAGE)
        )
        kept, kept_100 = order.det_rank < KEEP_PER_IMAGE, order.det_rank < 100
        return _summary_of(*_accumulate(table, order, (matched, to_ignored), kept, kept_100, int((~ignored).sum())))

    result: dict[str, Any] = {
        "all": run("cocoeval", nothing_ignored),
        "bands": {band: run("api", ~inside) for band, inside in in_bands.items()} if bands else {},
        "ground_truth": {
            "instances": len(gt.annotations),
            "images": len(gt.images),
            **{band: int(inside.sum()) for band, inside in in_bands.items()},
        },
        "detections": len(detections),
    }
    if per_class:
        order = orders["class"]
        same_class = table.det_category[table.pair_det] == table.gt_category[table.pair_gt]
        pairs = np.flatnonzero(same_class & (order.det_rank[table.pair_det] < KEEP_PER_IMAGE))
        matched, to_ignored, _ = _match(table, order, nothing_ignored, pairs)
        index_of = {c: k for k, c in enumerate(sorted(c["id"] for c in gt.categories))}
        result["per_class"] = {}
        for category in gt.categories:
            k = index_of[category["id"]]
            mine = table.det_category == k
            precision, recall = _accumulate(
                table,
                order,
                (matched, to_ignored),
                mine & (order.det_rank < KEEP_PER_IMAGE),
                mine & (order.det_rank < 100),
                int((table.gt_category == k).sum()),
            )
            result["per_class"][category["name"]] = {"AP": _valid_mean(precision), "AR100": _valid_mean(recall)}
    return result, table, orders, gt_masks, det_masks


def _unavailable(source: str | None, keys: tuple[str, ...], note: str) -> dict[str, Any]:
    """A metric group that was not computed: every number ``None``, and why."""
    return {"source": source, **dict.fromkeys(keys), "note": f"not available: {note}"}


def _by_image(indices: np.ndarray, image: np.ndarray) -> Iterator[np.ndarray]:
    """``indices`` in groups of one image each (ascending image, list order within)."""
    if not indices.size:
        return
    indices = indices[np.argsort(image[indices], kind="stable")]
    bounds = np.flatnonzero(np.r_[True, np.diff(image[indices]) != 0, True])
    for start, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        yield indices[start:stop]


def _touch_matrix(masks: list[Any]) -> np.ndarray:
    """Whether each two of one image's masks share a pixel (IoU > 0; an empty mask touches nothing)."""
    return np.asarray(mask_utils.iou(masks, masks, [0] * len(masks))) > 0


def overlapping_pairs(table: _Table, gt_masks: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(front, back)``: every two ground-truth instances of one image whose amodal masks
    share a pixel and whose depths are known and differ, the nearer one first."""
    fronts, backs = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for members in _by_image(np.flatnonzero(~np.isnan(table.gt_depth)), table.gt_image):
        if members.size < 2:
            continue
        i, j = np.nonzero(np.triu(_touch_matrix([gt_masks[k] for k in members.tolist()]), 1))
        a, b = members[i], members[j]
        depth_a, depth_b = table.gt_depth[a], table.gt_depth[b]
        known = depth_a != depth_b
        a_first = depth_a < depth_b
        fronts.append(np.where(a_first, a, b)[known])
        backs.append(np.where(a_first, b, a)[known])
    return np.concatenate(fronts), np.concatenate(backs)


def _touching(table: _Table, det_masks: list[Any], first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Whether the masks of detections ``first[k]`` and ``second[k]`` (of one image) share a pixel."""
    count = table.det_score.size
    keys, inverse = np.unique(first * count + second, return_inverse=True)
    a, b = keys // count, keys % count
    touching = np.zeros(keys.size, dtype=bool)
    for chosen in _by_image(np.arange(keys.size), table.det_image[a]):
        members = np.unique(np.r_[a[chosen], b[chosen]])
        touch = _touch_matrix([det_masks[k] for k in members.tolist()])
        touching[chosen] = touch[np.searchsorted(members, a[chosen]), np.searchsorted(members, b[chosen])]
    return touching[inverse.reshape(-1)]


def occlusion_order_metrics(
    table: _Table, gt_masks: list[Any], det_masks: list[Any], order: _Order | None, depth_key: str | None
) -> dict[str, Any]:
    """Occlusion-order recall (COCOA's "Order AR") and pairwise depth-order accuracy.

    Ground-truth pairs: every two instances of one image whose amodal masks share a pixel,
    with known, different depths (:func:`overlapping_pairs`). Detections are matched to
    ground truth as the COCO-Amodal API matches them (all ground truth in range, equal
    scores in list order, the 1000 best per image), at each IoU threshold. A pair is
    *ordered right* when both members are matched and the detection matched to the front
    one has the smaller ``depth_key`` value; *recalled* when, moreover, the two detections'
    masks share a pixel (the API's condition). Per threshold, recall = recalled / pairs and
    accuracy = ordered right / pairs with both members matched. ``recall`` and
    ``accuracy`` average the ten thresholds (accuracy over those with a matched pair),
    ``recall50`` and ``accuracy50`` are at IoU 0.5; -1 where there is nothing to measure.
    """
    if depth_key is None or order is None:
        return _unavailable(None, ("pairs", *ORDER_KEYS), "the predictions carry no 'depth' or 'order'")
    if np.isnan(table.gt_depth).all():
        note = "the ground truth has no depth order ('depth', or the COCOA 'order')"
        return _unavailable(depth_key, ("pairs", *ORDER_KEYS), note)
    front, back = overlapping_pairs(table, gt_masks)
    if not front.size:
        return {"source": depth_key, "pairs": 0, **dict.fromkeys(ORDER_KEYS, -1.0), "note": None}
    kept = np.flatnonzero(order.det_rank[table.pair_det] < KEEP_PER_IMAGE)
    _, _, partner = _match(table, order, np.zeros(table.gt_rate.size, dtype=bool), kept)
    det_of_gt = np.full((partner.shape[0], table.gt_rate.size), -1, dtype=np.int64)
    t, d = np.nonzero(partner >= 0)
    det_of_gt[t, partner[t, d]] = d
    at_front, at_back = det_of_gt[:, front], det_of_gt[:, back]
    both = (at_front >= 0) & (at_back >= 0)
    depth = np.append(table.det_depth, np.nan)  # index -1 (unmatched): NaN, never nearer
    right = both & (depth[at_front] < depth[at_back])
    touching = np.zeros_like(both)
    touching[both] = _touching(table, det_masks, at_front[both], at_back[both])
    recall = (right & touching).sum(axis=1) / front.size
    matched = both.sum(axis=1)
    accuracy = np.where(matched > 0, right.sum(axis=1) / np.maximum(matched, 1), -1.0)
    at_50 = int(np.flatnonzero(np.isclose(IOU_THRESHOLDS, 0.5))[0])
    return {
        "source": depth_key,
        "pairs": int(front.size),
        "recall": float(recall.mean()),
        "recall50": float(recall[at_50]),
        "accuracy": _valid_mean(accuracy),
        "accuracy50": float(accuracy[at_50]),
        "note": None,
    }


def _rle(mask: np.ndarray) -> dict[str, Any]:
    return encode_rle(mask[None])[0]


def _decode_many(rles: list[dict[str, Any]]) -> np.ndarray:
    """Masks ``(n, h, w)`` of checked RLEs of one size, decoded in one pycocotools call."""
    return np.moveaxis(mask_utils.decode([_bytes_rle(rle) for rle in rles]), -1, 0).astype(bool)


def _chunks(sizes: list[tuple[int, int]]) -> Iterator[list[int]]:
    """Indices of ``sizes`` in chunks of one size and at most :data:`_DECODE_PIXELS` pixels,
    in list order within each size."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for k, size in enumerate(sizes):
        by_size.setdefault(size, []).append(k)
    for (height, width), members in sorted(by_size.items()):
        step = max(1, _DECODE_PIXELS // (height * width))
        for start in range(0, len(members), step):
            yield members[start : start + step]


def _hidden_parts(amodal: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray]:
    """``(which are not empty, their invisible masks as RLE, their areas)`` of amodal minus visible."""
    hidden = amodal & ~visible
    areas = np.count_nonzero(hidden, axis=(1, 2))
    kept = areas > 0
    return kept, encode_rle(hidden[kept]), areas[kept]


def _check_visible_sources(gt: GroundTruth) -> bool:
    """Whether every annotation says where its visible mask is (``False``: none does)."""
    known = ["hidden_part" in a or "visible_source" in a for a in gt.annotations]
    if gt.annotations and not any(known):
        return False
    if not all(known):
        raise DatasetError(
            f"{gt.source}: evaluated instance {known.index(False) + 1} has no visible mask ('visible_mask', 'i_segm' "
            "or 'visible_segm') while others have one: invisible-mask AP needs one on every instance"
        )
    return True


def _read_visible(gt: GroundTruth, chunk: list[int]) -> np.ndarray:
    """The visible masks ``(n, h, w)`` of annotations ``chunk`` (of one image size, each with
    a ``visible_source``), checked."""
    h, w = gt.size_of(gt.annotations[chunk[0]]["image_id"])
    masks = np.zeros((len(chunk), h, w), dtype=bool)
    for i, k in enumerate(chunk):
        where, value = gt.annotations[k]["visible_source"]
        masks[i] = decode_sized(value, h, w, where, "visible mask")
    return masks


def invisible_ground_truth(gt: GroundTruth) -> GroundTruth | None:
    """The ground truth of invisible-mask AP: each instance's amodal mask minus its visible
    mask, for the instances whose invisible region is not empty (the others have nothing
    to find); ``None`` when the ground truth has no visible masks.

    An HDF5 file's hidden parts were made when its ground truth was read
    (``hidden_part``); a JSON file's visible masks are decoded (and checked) a chunk at a
    time: memory holds one chunk of masks, not the dataset's.
    """
    if not _check_visible_sources(gt):
        return None
    kept: list[tuple[int, dict[str, Any], int]] = [
        (k, *a["hidden_part"]) for k, a in enumerate(gt.annotations) if a.get("hidden_part") is not None
    ]
    to_read = [k for k, a in enumerate(gt.annotations) if "hidden_part" not in a]
    sizes = [gt.size_of(gt.annotations[k]["image_id"]) for k in to_read]
    for positions in _chunks(sizes):
        chunk = [to_read[p] for p in positions]
        amodal = _decode_many([gt.annotations[k]["segmentation"] for k in chunk])
        present, rles, areas = _hidden_parts(amodal, _read_visible(gt, chunk))
        chosen = [k for k, keep in zip(chunk, present.tolist(), strict=True) if keep]
        kept.extend(zip(chosen, rles, areas.tolist(), strict=True))
    kept.sort(key=lambda item: item[0])
    boxes = mask_utils.toBbox([_bytes_rle(rle) for _, rle, _ in kept]) if kept else []
    annotations = [
        dict(gt.annotations[k], id=n + 1, segmentation=rle, area=area, bbox=[float(v) for v in box])
        for n, ((k, rle, area), box) in enumerate(zip(kept, boxes, strict=True))
    ]
    return GroundTruth(gt.images, annotations, gt.categories, gt.source)


def invisible_predictions(detections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each detection's invisible mask, its ``segmentation`` minus its ``visible_segmentation``,
    with its image, category and score, in list order; detections whose invisible mask is
    empty (no claim of a hidden part) are left out."""
    sizes = [(int(d["segmentation"]["size"][0]), int(d["segmentation"]["size"][1])) for d in detections]
    kept: list[tuple[int, dict[str, Any]]] = []
    for chunk in _chunks(sizes):
        amodal = _decode_many([detections[k]["segmentation"] for k in chunk])
        visible = _decode_many([detections[k]["visible_segmentation"] for k in chunk])
        present, rles, _ = _hidden_parts(amodal, visible)
        kept.extend(zip([k for k, keep in zip(chunk, present.tolist(), strict=True) if keep], rles, strict=True))
    kept.sort(key=lambda item: item[0])
    return [
        {"image_id": detections[k]["image_id"], "category_id": detections[k]["category_id"]}
        | {"score": detections[k]["score"], "segmentation": rle}
        for k, rle in kept
    ]


def invisible_metrics(gt: GroundTruth, detections: list[dict[str, Any]]) -> dict[str, Any]:
    """Invisible-mask AP, AP50, AP75 and AR100: COCO's class-agnostic segm metrics (as
    ``evaluate``'s overall ones) of :func:`invisible_predictions` against
    :func:`invisible_ground_truth`, with how many of each took part (-1: no invisible ground truth)."""
    if not _carried(detections, ("visible_segmentation",)):
        return _unavailable(
            None, (*INVISIBLE_KEYS, "instances", "detections"), "the predictions carry no 'visible_segmentation'"
        )
    truth = invisible_ground_truth(gt)
    if truth is None:
        note = "the ground truth has no visible masks ('visible_mask', KINS 'i_segm' or aistron 'visible_segm')"
        return _unavailable("visible_segmentation", (*INVISIBLE_KEYS, "instances", "detections"), note)
    hidden = invisible_predictions(detections)
    metrics = _amodal_metrics(truth, hidden, per_class=False, bands=False)[0]["all"]
    return {
        "source": "visible_segmentation",
        **metrics,
        "instances": len(truth.annotations),
        "detections": len(hidden),
        "note": None,
    }


def evaluate_files(
    gt: str | Path,
    *,
    dt: str | Path | None = None,
    oracle_layers: int | None = None,
    per_class: bool = False,
    band_rate: BandRate = "pixel",
    json_out: str | Path | None = None,
    force: bool = False,
) -> tuple[dict[str, Any], list[str]]:
    """Metrics of the predictions file ``dt`` (or of the ``oracle_layers`` oracle) against
    the ground-truth file ``gt``, banded by ``band_rate``; also written to ``json_out`` if
    given. Returns the metrics and the warnings raised while reading the predictions."""
    band_rate = check_band_rate(band_rate)
    if (dt is None) == (oracle_layers is None):
        raise ConfigError(
            "give exactly one of dt= (predictions) or oracle_layers= (the layer oracle)",
            param="dt",
            related=("oracle_layers",),
        )
    if json_out is not None:
        check_file_output(json_out, "json_out", force, "metrics")
        if resolved(Path(json_out)) in {resolved(Path(gt)), resolved(Path(dt)) if dt is not None else None}:
            raise ConfigError(f"json_out={str(json_out)!r} would overwrite an input", param="json_out")
        if is_sharded(gt) and contains(Path(gt), Path(json_out)):
            raise ConfigError(
                f"json_out={str(json_out)!r} is inside the sharded dataset gt={str(gt)!r}: give a path outside it",
                param="json_out",
            )
    if oracle_layers is not None and Path(gt).suffix.lower() == ".json":
        raise ConfigError(
            f"oracle_layers={oracle_layers!r} needs an HDF5 ground truth (it reads the layer maps); "
            f"gt={str(gt)!r} is a JSON export",
            param="oracle_layers",
            related=("gt",),
        )
    warnings: list[str] = []
    truth = load_ground_truth(gt, keep_layers=oracle_layers is not None, band_rate=band_rate)
    if oracle_layers is not None:
        detections = oracle_predictions(truth, oracle_layers)
    else:
        assert dt is not None
        detections = load_predictions(dt, truth, warnings)
        last = max((int(d["image_id"]) for d in detections), default=0)
        after = sum(image_id > last for image_id in truth.image_ids)
        if not detections:
            warnings.append(
                f"{dt} holds no predictions: every ground-truth instance counts as missed (AP and AR are 0)"
            )
        elif after >= max(2, len(truth.images) // 100):  # not a model that found nothing in the last image
            warnings.append(
                f"the predictions stop at image id {last}: the {after} ground-truth images after it have none, and "
                "their instances count as missed (predicted with --limit, or for another dataset?)"
            )
    metrics = evaluate(truth, detections, per_class=per_class)
    metrics["ground_truth_path"] = str(gt)
    metrics["predictions"] = f"oracle K={oracle_layers}" if oracle_layers is not None else str(dt)
    metrics["band_rate"] = band_rate
    if json_out is not None:
        write_atomically(
            json_out, (json.dumps(metrics, indent=2) + "\n").encode(), param="json_out", force=force, kind="metrics"
        )
    return metrics, warnings
