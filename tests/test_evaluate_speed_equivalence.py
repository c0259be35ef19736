"""The vectorised evaluator equals plain pycocotools, to 1e-9, on any predictions.

``evaluate`` replaces COCOeval's per-image Python matching loop. These tests hold it to
the reference run by pycocotools itself (``pycocotools_eval``): overall and per class
against ``COCOeval`` as it is, per band against ``COCOeval`` running the COCO-Amodal
API's semantics (out-of-band ground truth ignored with ordinary IoU, list order on ties).
Random cases are built to hit every tie and corner: equal scores, duplicate masks (equal
IoUs), empty masks, images without ground truth or without detections, categories with
unsorted and non-contiguous ids, rates on the band bounds, more than 1000 detections.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shapesgen.coco import encode_rle
from shapesgen.evaluate import (
    GroundTruth,
    _summary,
    _valid_mean,
    evaluate,
    load_ground_truth,
    oracle_predictions,
    pycocotools_eval,
)
from shapesgen.stats import OCCLUSION_BANDS

RATES = (0.0, 1e-5, 0.1, 0.25, 0.6, 1.0)  # both band bounds included


def reference(gt: GroundTruth, detections: list[dict[str, Any]]) -> dict[str, Any]:
    """What pycocotools itself computes, in :func:`evaluate`'s layout."""
    per_class = pycocotools_eval(gt, detections, use_cats=True)
    ids = sorted(c["id"] for c in gt.categories)
    return {
        "all": _summary(pycocotools_eval(gt, detections)),
        "bands": {band: _summary(pycocotools_eval(gt, detections, band=band)) for band in OCCLUSION_BANDS},
        "per_class": {
            c["name"]: {
                "AP": _valid_mean(per_class.eval["precision"][:, :, ids.index(c["id"]), 0, -1]),
                "AR100": _valid_mean(per_class.eval["recall"][:, ids.index(c["id"]), 0, 2]),
            }
            for c in gt.categories
        },
    }


def assert_equal_metrics(ours: dict[str, Any], expected: dict[str, Any]) -> None:
    flat = {("all", k): v for k, v in ours["all"].items()}
    flat |= {(band, k): v for band, values in ours["bands"].items() for k, v in values.items()}
    flat |= {(name, k): v for name, values in ours["per_class"].items() for k, v in values.items()}
    want = {("all", k): v for k, v in expected["all"].items()}
    want |= {(band, k): v for band, values in expected["bands"].items() for k, v in values.items()}
    want |= {(name, k): v for name, values in expected["per_class"].items() for k, v in values.items()}
    assert flat.keys() == want.keys()
    wrong = {key: (flat[key], want[key]) for key in want if abs(flat[key] - want[key]) > 1e-9}
    assert not wrong, f"ours vs pycocotools: {wrong}"


def annotation(image_id: int, category_id: int, mask: np.ndarray, rate: float) -> dict[str, Any]:
    return {
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": encode_rle(mask[None])[0],
        "area": int(mask.sum()),
        "bbox": [0.0, 0.0, 0.0, 0.0],
        "iscrowd": 0,
        "occlusion_rate": rate,
    }


def rectangle(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    if rng.uniform() < 0.05:
        return mask  # an empty mask
    y, x = rng.integers(0, height), rng.integers(0, width)
    mask[y : y + rng.integers(1, height + 1), x : x + rng.integers(1, width + 1)] = True
    return mask


def random_case(seed: int) -> tuple[GroundTruth, list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    category_ids = [int(c) for c in rng.choice([9, 2, 5, 1], size=rng.integers(1, 4), replace=False)]
    categories = [{"id": c, "name": f"class {c}"} for c in category_ids]
    image_ids = [int(i) for i in rng.permutation(np.arange(1, rng.integers(2, 6)) * 3)]
    images = [{"id": i, "height": int(rng.integers(3, 9)), "width": int(rng.integers(3, 9))} for i in image_ids]
    annotations: list[dict[str, Any]] = []
    detections: list[dict[str, Any]] = []
    for image in images:
        h, w = image["height"], image["width"]
        masks: list[np.ndarray] = []
        for _ in range(rng.integers(0, 6)):  # 0: an image without ground truth
            duplicate = masks and rng.uniform() < 0.25  # equal IoUs
            masks.append(masks[rng.integers(len(masks))].copy() if duplicate else rectangle(rng, h, w))
            category = int(rng.choice(category_ids))
            rate = float(rng.choice(RATES)) if rng.uniform() < 0.7 else float(rng.uniform())
            annotations.append(annotation(image["id"], category, masks[-1], rate))
        for _ in range(rng.integers(0, 9)):  # 0: an image without detections
            if masks and rng.uniform() < 0.6:
                mask = np.roll(masks[rng.integers(len(masks))], tuple(rng.integers(-1, 2, 2)), axis=(0, 1))
            else:
                mask = rectangle(rng, h, w)
            score = float(rng.choice([0.9, 0.5, 0.5, 0.25])) if rng.uniform() < 0.6 else float(rng.uniform())
            segmentation = encode_rle(mask[None])[0]
            detections.append({"image_id": image["id"], "category_id": int(rng.choice(category_ids)), "score": score})
            detections[-1]["segmentation"] = segmentation
    for k, a in enumerate(annotations):
        a["id"] = k + 1
    return GroundTruth(images, annotations, categories, "random"), detections


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_random_predictions_score_as_pycocotools_does(seed: int) -> None:
    gt, detections = random_case(seed)
    assert_equal_metrics(evaluate(gt, detections, per_class=True), reference(gt, detections))


# the first 8, and cases where which of two ground truths of equal IoU a detection takes changes the metrics
@pytest.mark.parametrize("seed", [*range(8), 237, 605, 892, 938])
def test_fixed_random_cases(seed: int) -> None:
    gt, detections = random_case(seed)
    assert_equal_metrics(evaluate(gt, detections, per_class=True), reference(gt, detections))


@pytest.mark.parametrize("layers", [1, 2])
def test_rendered_scenes_with_tied_scores(tiny_dataset: Path, layers: int) -> None:
    gt = load_ground_truth(tiny_dataset, keep_layers=True)
    rng = np.random.default_rng(layers)
    detections = oracle_predictions(gt, layers)
    for d in detections:
        d["score"] = float(rng.choice([1.0, 0.5, rng.uniform()]))
    detections = [d for d in detections if rng.uniform() < 0.9]
    assert_equal_metrics(evaluate(gt, detections, per_class=True), reference(gt, detections))


def test_over_a_thousand_detections_per_image() -> None:
    """Class-agnostic runs keep an image's 1000 best over all categories; class-aware runs 1000 per category."""
    rng = np.random.default_rng(7)
    images = [{"id": 1, "height": 6, "width": 6}, {"id": 2, "height": 6, "width": 6}]
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    annotations = [annotation(1 + k % 2, 1 + k % 3 // 2, rectangle(rng, 6, 6), RATES[k % 6]) for k in range(10)]
    for k, a in enumerate(annotations):
        a["id"] = k + 1
    gt = GroundTruth(images, annotations, categories, "many")
    detections = [
        {
            "image_id": 1 + k % 2,
            "category_id": 1 + k % 3 // 2,
            "score": float(rng.choice([0.5, rng.uniform()])),
            "segmentation": encode_rle(rectangle(rng, 6, 6)[None])[0],
        }
        for k in range(2700)
    ]
    assert_equal_metrics(evaluate(gt, detections, per_class=True), reference(gt, detections))


def test_no_detections_and_no_ground_truth() -> None:
    gt, detections = random_case(3)
    assert_equal_metrics(evaluate(gt, [], per_class=True), reference(gt, []))
    bare = GroundTruth(gt.images, [], gt.categories, "bare")
    ours = evaluate(bare, detections, per_class=True)
    assert_equal_metrics(ours, reference(bare, detections))
    assert ours["all"] == dict.fromkeys(("AP", "AP50", "AP75", "AR100"), -1.0)
