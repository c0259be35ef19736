"""The evaluator: exact on perfect predictions, faithful to COCOeval, strict on bad input."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

from shapesgen import DatasetError
from shapesgen.coco import encode_rle, export_coco
from shapesgen.errors import ConfigError
from shapesgen.evaluate import (
    GroundTruth,
    _coco,
    _with_boxes,
    check_predictions,
    evaluate,
    in_band,
    load_ground_truth,
    oracle_predictions,
    paper_columns,
)


@pytest.fixture(scope="module")
def gt(tiny_dataset: Path):
    return load_ground_truth(tiny_dataset, keep_layers=True)


def perfect(gt) -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0, "segmentation": a["segmentation"]}
        for a in gt.annotations
    ]


def test_bands_are_the_amodal_apis_ranges() -> None:
    """The COCO-Amodal API's occRng: none [0, 1e-5], partial [1e-5, 0.25], heavy [0.25, 1], bounds included."""
    assert in_band(0.0, "none") and in_band(1e-5, "none") and not in_band(2e-5, "none")
    assert in_band(1e-5, "partial") and in_band(0.2499, "partial") and in_band(0.25, "partial")
    assert not in_band(0.0, "partial") and not in_band(0.2501, "partial")
    assert in_band(0.25, "heavy") and in_band(1.0, "heavy") and not in_band(0.2499, "heavy")


def square_truth(rates: list[float]) -> GroundTruth:
    """One 8x8 image holding a 2x2 square per rate, side by side in row 0 and 4."""
    annotations = []
    for k, rate in enumerate(rates):
        mask = np.zeros((8, 8), bool)
        mask[4 * (k // 2) : 4 * (k // 2) + 2, 4 * (k % 2) : 4 * (k % 2) + 2] = True
        rle = encode_rle(mask[None])[0]
        annotations.append(
            {"id": k + 1, "image_id": 1, "category_id": 1, "segmentation": rle, "area": 4, "iscrowd": 0}
            | {"bbox": [0.0, 0.0, 2.0, 2.0], "occlusion_rate": rate}
        )
    return GroundTruth([{"id": 1, "height": 8, "width": 8}], annotations, [{"id": 1, "name": "o"}], "squares")


def test_band_semantics_are_the_amodal_apis() -> None:
    """Out-of-band ground truth is ignored with ordinary IoU and matched once (the API), not as a crowd region."""
    truth = square_truth([0.0, 0.5])  # a "none" square, a "heavy" square
    none_square, heavy_square = (a["segmentation"] for a in truth.annotations)
    corner = np.zeros((8, 8), bool)
    corner[0, 4] = True  # a quarter of the heavy square: IoU 0.25, crowd IoU 1
    detections = [
        {"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": heavy_square},  # matches ignored GT: ignored
        {"image_id": 1, "category_id": 1, "score": 0.8, "segmentation": heavy_square},  # GT taken: false positive
        {"image_id": 1, "category_id": 1, "score": 0.7, "segmentation": none_square},  # true positive
    ]
    none = evaluate(truth, detections)["bands"]["none"]
    assert none == {"AP": 0.5, "AP50": 0.5, "AP75": 0.5, "AR100": 1.0}  # crowd semantics: AP 1.0
    part = [detections[0], dict(detections[1], segmentation=encode_rle(corner[None])[0]), detections[2]]
    assert evaluate(truth, part)["bands"]["none"] == none  # crowd semantics would ignore the corner


def test_rates_on_a_bound_count_in_both_bands() -> None:
    truth = square_truth([1e-5, 0.25, 0.1, 0.7])
    metrics = evaluate(truth, [])
    assert {b: metrics["ground_truth"][b] for b in ("none", "partial", "heavy")} == {
        "none": 1,
        "partial": 3,
        "heavy": 2,
    }


def test_perfect_predictions_score_one_everywhere(gt) -> None:
    metrics = evaluate(gt, perfect(gt), per_class=True)
    assert metrics["all"] == {"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "AR100": 1.0}
    for band, values in metrics["bands"].items():
        assert metrics["ground_truth"][band] > 0
        assert values["AR100"] == 1.0 and values["AP"] == 1.0
    assert all(v == {"AP": 1.0, "AR100": 1.0} for v in metrics["per_class"].values())


def test_dropping_half_the_instances_halves_recall(gt) -> None:
    kept = perfect(gt)[::2]
    metrics = evaluate(gt, kept)
    assert metrics["all"]["AR100"] == pytest.approx(len(kept) / len(gt.annotations), abs=0.03)
    assert metrics["all"]["AP"] < 0.7


def test_paper_columns_are_the_results_summary_and_band_recalls(gt) -> None:
    metrics = evaluate(gt, oracle_predictions(gt, 1))
    row = paper_columns(metrics)
    assert list(row) == ["AP", "AP50", "AP75", "AR100", "AR_none", "AR_partial", "AR_heavy"]
    assert row["AP50"] == round(metrics["all"]["AP50"], 4)
    assert row["AR_heavy"] == round(metrics["bands"]["heavy"]["AR100"], 4)
    assert (
        row["AR_none"] == 1.0 and row["AR_heavy"] < 1.0
    )  # one layer finds every unoccluded instance, not all hidden parts


def test_band_filter_ignores_out_of_band_ground_truth(gt) -> None:
    heavy_only = [d for d, a in zip(perfect(gt), gt.annotations, strict=True) if in_band(a["occlusion_rate"], "heavy")]
    metrics = evaluate(gt, heavy_only)
    assert metrics["bands"]["heavy"]["AR100"] == 1.0 and metrics["bands"]["heavy"]["AP"] == 1.0
    assert metrics["bands"]["none"]["AR100"] < 0.05  # only chance IoU >= 0.5 overlaps remain
    assert metrics["all"]["AR100"] < 1.0


def test_a_band_without_ground_truth_reports_minus_one(gt) -> None:
    only_heavy = [a for a in gt.annotations if in_band(a["occlusion_rate"], "heavy")]
    subset = type(gt)(gt.images, only_heavy, gt.categories, gt.source)
    dets = [d for d, a in zip(perfect(gt), gt.annotations, strict=True) if in_band(a["occlusion_rate"], "heavy")]
    metrics = evaluate(subset, dets)
    assert metrics["bands"]["none"]["AR100"] == -1.0 and metrics["bands"]["partial"]["AP"] == -1.0
    assert metrics["bands"]["heavy"]["AR100"] == 1.0


def test_agrees_with_a_plain_cocoeval_run(gt) -> None:
    dets = oracle_predictions(gt, 1)
    rng = np.random.default_rng(0)
    for d in dets:
        d["score"] = float(rng.uniform(0.1, 1.0))
    ours = evaluate(gt, dets, bands=False)["all"]
    plain = COCOeval(
        _coco(gt.images, gt.annotations, gt.categories), _coco(gt.images, _with_boxes(dets), gt.categories), "segm"
    )
    plain.params.useCats = 0
    with contextlib.redirect_stdout(io.StringIO()):
        plain.evaluate()
        plain.accumulate()
        plain.summarize()
    assert ours["AP"] == pytest.approx(plain.stats[0], abs=1e-12)
    assert ours["AP50"] == pytest.approx(plain.stats[1], abs=1e-12)
    assert ours["AP75"] == pytest.approx(plain.stats[2], abs=1e-12)
    assert ours["AR100"] == pytest.approx(plain.stats[8], abs=1e-12)
    assert 0 < ours["AP"] < 1


def test_oracle_improves_with_layers_and_checks_k(gt) -> None:
    scores = [evaluate(gt, oracle_predictions(gt, k), bands=False)["all"]["AP"] for k in (1, 2, 3)]
    assert scores[0] < scores[1] <= scores[2] <= 1.0
    with pytest.raises(ConfigError, match="stores 3 layers"):
        oracle_predictions(gt, 4)


def test_empty_predictions_score_zero(gt) -> None:
    metrics = evaluate(gt, [])
    assert metrics["all"] == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AR100": 0.0}
    assert metrics["detections"] == 0


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        ({"segmentation": {}, "score": 1}, "missing field(s) ['image_id']"),
        ({"image_id": 999, "segmentation": {"size": [32, 32], "counts": "0"}, "score": 1}, "image_id 999"),
        ({"image_id": 1, "segmentation": {"size": [32, 32], "counts": "0"}, "score": float("nan")}, "score nan"),
        ({"image_id": 1, "segmentation": [[1, 2, 3]], "score": 0.5}, "COCO RLE"),
        (
            {"image_id": 1, "segmentation": {"size": [32, 32], "counts": "0"}, "score": 1, "category_id": 9},
            "category_id 9",
        ),
        ("nope", "must be an object"),
    ],
)
def test_bad_prediction_records_are_named(gt, record, needle: str) -> None:
    good = perfect(gt)[0]
    with pytest.raises(DatasetError, match=None) as info:
        check_predictions([good, record], gt, [])
    assert "record 1" in str(info.value) and needle in str(info.value)


def test_other_resolutions_are_resized_with_a_warning(gt) -> None:
    from pycocotools import mask as mask_utils

    from shapesgen.coco import decode_segmentation, encode_rle

    big = []
    for d in perfect(gt):
        mask = decode_segmentation(d["segmentation"], 32, 32)
        big.append(dict(d, segmentation=encode_rle(np.kron(mask, np.ones((2, 2), bool))[None])[0]))
    warnings: list[str] = []
    checked = check_predictions(big, gt, warnings)
    assert warnings and "resized" in warnings[0]
    assert mask_utils.decode({"size": [32, 32], "counts": checked[0]["segmentation"]["counts"].encode()}).shape == (
        32,
        32,
    )
    assert evaluate(gt, checked, bands=False)["all"]["AP"] == 1.0


def test_json_export_is_valid_ground_truth(tiny_dataset: Path, tmp_path: Path, gt) -> None:
    folder = export_coco(tiny_dataset, tmp_path / "x")
    from_json = load_ground_truth(folder / "annotations.json")
    assert len(from_json.annotations) == len(gt.annotations)
    assert from_json.size_of(1) == (64, 64)
    cocoa = export_coco(tiny_dataset, tmp_path / "y", __import__("shapesgen.coco").coco.ExportConfig(style="cocoa"))
    assert len(load_ground_truth(cocoa / "annotations.json").annotations) == len(gt.annotations)
    (tmp_path / "broken.json").write_text(json.dumps({"foo": 1}))
    with pytest.raises(DatasetError, match="not a COCO file"):
        load_ground_truth(tmp_path / "broken.json")
