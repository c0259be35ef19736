"""COCO-amodal evaluation (class-agnostic by default) by occlusion band, on pycocotools.

Ground truth is every instance visible at the ground truth's resolution (mask
resolution for HDF5 files). For a band, ground truth outside it is marked
``iscrowd=1``, which is how COCOeval ignores regions: detections matched to it count
neither as true nor as false positives. Matching is pycocotools' own.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from shapesgen.coco import decode_segmentation, encode_rle
from shapesgen.errors import ConfigError, DatasetError
from shapesgen.hdf5 import open_dataset
from shapesgen.stats import OCCLUSION_BANDS, occlusion_band

MAX_DETS = (1, 10, 100, 1000)
SCENE_BLOCK = 256


def in_band(rate: float, band: str) -> bool:
    """Whether an occlusion rate falls in a band (see :func:`shapesgen.stats.occlusion_band`)."""
    return bool(occlusion_band(np.array([rate]))[0] == band)


@dataclass
class GroundTruth:
    """Flat COCO ground truth at one resolution, with an occlusion rate per instance."""

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


def ground_truth_from_hdf5(path: str | Path, keep_layers: bool = False) -> GroundTruth:
    """Visible instances of every scene, amodal masks at mask resolution."""
    with open_dataset(path) as ds:
        m = ds.config.mask_size
        images = [{"id": i + 1, "height": m, "width": m} for i in range(len(ds))]
        annotations: list[dict[str, Any]] = []
        offsets = ds.instance_offsets
        for start in range(0, len(ds), SCENE_BLOCK):
            stop = min(start + SCENE_BLOCK, len(ds))
            rows = slice(int(offsets[start]), int(offsets[stop]))
            table = ds.instances[rows]
            keep = np.flatnonzero(table["is_visible"])
            masks = ds.amodal_masks[rows][keep]
            for k, rle in zip(keep.tolist(), encode_rle(masks), strict=True):
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
                        "occlusion_rate": float(row["pixel_occlusion_rate"]),
                    }
                )
        categories = [{"id": c + 1, "name": name} for c, name in enumerate(ds.class_names)]
        layers = ds.layers[:] if keep_layers else None
        class_of_id = []
        if keep_layers:
            for i in range(len(ds)):
                class_of_id.append(np.concatenate([[0], ds.instances[ds.instance_rows(i)]["class_id"]]))
    return GroundTruth(images, annotations, categories, str(path), layers, class_of_id)


def ground_truth_from_json(path: str | Path) -> GroundTruth:
    """A shapesgen COCO or COCOA export (or any flat COCO file with amodal masks)."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(document, dict) or "images" not in document or "annotations" not in document:
        raise DatasetError(f"{path}: not a COCO file (needs 'images' and 'annotations')")
    images = [{"id": im["id"], "height": im["height"], "width": im["width"]} for im in document["images"]]
    flat: list[dict[str, Any]] = []
    for ann in document["annotations"]:
        flat.extend(ann["regions"] if "regions" in ann else [ann])
        if "regions" in ann:
            for region in ann["regions"]:
                region.setdefault("image_id", ann["image_id"])
    heights = {im["id"]: (im["height"], im["width"]) for im in images}
    annotations = []
    for index, ann in enumerate(flat):
        if ann.get("is_visible", True) is False:
            continue
        h, w = heights[ann["image_id"]]
        mask = decode_segmentation(ann["segmentation"], h, w)
        rle = encode_rle(mask[None])[0]
        rate = ann.get("pixel_occlude_rate", ann.get("occlude_rate", ann.get("occlusion_rate", 0.0)))
        annotations.append(
            {
                "id": ann.get("id", index + 1),
                "image_id": ann["image_id"],
                "category_id": ann.get("category_id", 1),
                "segmentation": rle,
                "area": int(mask.sum()),
                "bbox": [float(v) for v in mask_utils.toBbox(_bytes_rle(rle))],
                "iscrowd": 0,
                "occlusion_rate": float(rate),
            }
        )
    categories = document.get("categories") or [{"id": 1, "name": "object"}]
    return GroundTruth(images, annotations, [{"id": c["id"], "name": c["name"]} for c in categories], str(path))


def load_ground_truth(path: str | Path, keep_layers: bool = False) -> GroundTruth:
    """Ground truth from an HDF5 dataset or a COCO JSON export."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    if path.suffix.lower() == ".json":
        return ground_truth_from_json(path)
    return ground_truth_from_hdf5(path, keep_layers=keep_layers)


def _bytes_rle(rle: dict[str, Any]) -> dict[str, Any]:
    return {
        "size": rle["size"],
        "counts": rle["counts"].encode("ascii") if isinstance(rle["counts"], str) else rle["counts"],
    }


def load_predictions(path: str | Path, gt: GroundTruth, warnings: list[str]) -> list[dict[str, Any]]:
    """COCO results (``image_id``, ``segmentation`` RLE, ``score``, ``category_id``), checked.

    Masks of another size than the ground truth are resized (nearest) with a warning.
    """
    try:
        records = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DatasetError(f"--dt {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"--dt {path}: not a readable JSON file ({exc})") from None
    if not isinstance(records, list):
        raise DatasetError(f"--dt {path}: must be a JSON list of COCO results, got {type(records).__name__}")
    return check_predictions(records, gt, warnings, str(path))


def check_predictions(
    records: list[Any], gt: GroundTruth, warnings: list[str], source: str = "predictions"
) -> list[dict[str, Any]]:
    """Validate COCO result records against the ground truth; errors name the first bad one."""
    image_ids = gt.image_ids
    categories = {c["id"] for c in gt.categories}
    resized = 0
    checked = []
    for index, record in enumerate(records):
        where = f"{source}: record {index}"
        if not isinstance(record, dict):
            raise DatasetError(f"{where}: must be an object, got {type(record).__name__}")
        missing = [key for key in ("image_id", "segmentation", "score") if key not in record]
        if missing:
            raise DatasetError(f"{where}: missing field(s) {missing}")
        image_id = record["image_id"]
        if image_id not in image_ids:
            raise DatasetError(
                f"{where}: image_id {image_id!r} is not in the ground truth ({min(image_ids)}..{max(image_ids)})"
            )
        score = record["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise DatasetError(f"{where}: score {score!r} must be a finite number")
        category = record.get("category_id", 1)
        if category not in categories:
            raise DatasetError(f"{where}: category_id {category!r} is not one of {sorted(categories)}")
        segmentation = record["segmentation"]
        if not isinstance(segmentation, dict) or "size" not in segmentation or "counts" not in segmentation:
            raise DatasetError(f"{where}: segmentation must be a COCO RLE with 'size' and 'counts'")
        h, w = gt.size_of(image_id)
        size = segmentation["size"]
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            raise DatasetError(f"{where}: segmentation size {size!r} must be [height, width]")
        try:
            mask = decode_segmentation(segmentation, size[0], size[1])
        except Exception as exc:  # pycocotools raises bare exceptions on bad counts
            raise DatasetError(f"{where}: segmentation counts cannot be decoded ({exc})") from None
        if tuple(size) != (h, w):
            mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.Resampling.NEAREST))
            resized += 1
        checked.append(
            {
                "image_id": image_id,
                "category_id": category,
                "score": float(score),
                "segmentation": encode_rle(mask[None])[0],
            }
        )
    if resized:
        warnings.append(f"{resized} predicted masks were not {h}x{w} and were resized (nearest) to the ground truth")
    return checked


def oracle_predictions(gt: GroundTruth, num_layers: int) -> list[dict[str, Any]]:
    """Each visible instance's mask = union of its pixels in the first K ground-truth layers."""
    if gt.layers is None:
        raise ConfigError("--oracle-layers needs an HDF5 ground truth (it reads the layer maps)")
    stored = gt.layers.shape[1]
    if not 1 <= num_layers <= stored:
        raise ConfigError(f"--oracle-layers={num_layers} is invalid: the file stores {stored} layers (1..{stored})")
    detections = []
    for scene, layers in enumerate(gt.layers[:, :num_layers]):
        ids = np.unique(layers[0])
        ids = ids[ids > 0]
        masks = np.any(layers[None] == ids[:, None, None, None], axis=1)
        classes = gt.class_of_id[scene]
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


def _summary(evaluator: COCOeval) -> dict[str, float]:
    """AP over IoU 0.5:0.95 at the largest maxDets, AP50, AP75, AR at 100 detections."""
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    recall = evaluator.eval["recall"][:, :, 0, MAX_DETS.index(100)]
    thresholds = evaluator.params.iouThrs
    return {
        "AP": _valid_mean(precision),
        "AP50": _valid_mean(precision[np.isclose(thresholds, 0.5)]),
        "AP75": _valid_mean(precision[np.isclose(thresholds, 0.75)]),
        "AR100": _valid_mean(recall),
    }


def _per_class(evaluator: COCOeval, categories: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {
        category["name"]: {
            "AP": _valid_mean(evaluator.eval["precision"][:, :, k, 0, -1]),
            "AR100": _valid_mean(evaluator.eval["recall"][:, k, 0, MAX_DETS.index(100)]),
        }
        for k, category in enumerate(categories)
    }


def _with_boxes(detections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Detections as COCO annotations: ids, areas and boxes from their masks."""
    out = []
    for i, d in enumerate(detections):
        rle = _bytes_rle(d["segmentation"])
        box = [float(v) for v in mask_utils.toBbox(rle)]
        out.append(dict(d, id=i + 1, area=float(mask_utils.area(rle)), bbox=box, iscrowd=0))
    return out


def _run(
    gt: GroundTruth, annotations: list[dict[str, Any]], detections: list[dict[str, Any]], use_cats: bool
) -> COCOeval | None:
    if not detections:
        return None
    gt_coco = _coco(gt.images, annotations, gt.categories)
    dt_coco = _coco(gt.images, _with_boxes(detections), gt.categories)
    evaluator = COCOeval(gt_coco, dt_coco, iouType="segm")
    evaluator.params.maxDets = list(MAX_DETS)
    evaluator.params.areaRng = [[0, 1e10]]
    evaluator.params.areaRngLbl = ["all"]
    evaluator.params.useCats = int(use_cats)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator


def evaluate(
    gt: GroundTruth, detections: list[dict[str, Any]], *, per_class: bool = False, bands: bool = True
) -> dict[str, Any]:
    """The paper's metric table: overall AP/AP50/AP75/AR100 and AR (and AP) per band."""
    band_of = occlusion_band(np.array([a["occlusion_rate"] for a in gt.annotations], dtype=np.float64))
    counts = {band: int((band_of == band).sum()) for band in OCCLUSION_BANDS}
    empty = {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AR100": 0.0}
    evaluator = _run(gt, gt.annotations, detections, use_cats=False)
    result: dict[str, Any] = {
        "all": _summary(evaluator) if evaluator else (dict(empty) if gt.annotations else dict.fromkeys(empty, -1.0)),
        "bands": {},
        "ground_truth": {"instances": len(gt.annotations), "images": len(gt.images), **counts},
        "detections": len(detections),
    }
    if bands:
        for band in OCCLUSION_BANDS:
            annotations = [dict(a, iscrowd=int(b != band)) for a, b in zip(gt.annotations, band_of, strict=True)]
            band_eval = _run(gt, annotations, detections, use_cats=False)
            if band_eval is not None:
                result["bands"][band] = _summary(band_eval)
            else:
                result["bands"][band] = dict(empty) if counts[band] else dict.fromkeys(empty, -1.0)
    if per_class:
        class_eval = _run(gt, gt.annotations, detections, use_cats=True)
        result["per_class"] = (
            _per_class(class_eval, gt.categories)
            if class_eval
            else {c["name"]: {"AP": 0.0, "AR100": 0.0} for c in gt.categories}
        )
    return result
