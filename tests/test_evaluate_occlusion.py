"""Occlusion-order metrics, invisible-mask AP and the band rate: exact on ground truth used as
predictions, equal to brute-force references built on pycocotools' own matching, and
never a number when the inputs lack what a metric needs."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from shapesgen import DatasetError
from shapesgen.coco import ExportConfig, encode_rle, export_coco
from shapesgen.errors import ConfigError
from shapesgen.evaluate import (
    IOU_THRESHOLDS,
    GroundTruth,
    _summary,
    check_predictions,
    evaluate,
    evaluate_files,
    invisible_ground_truth,
    invisible_metrics,
    invisible_predictions,
    load_ground_truth,
    pycocotools_eval,
)
from shapesgen.storage.reader import open_dataset


def rle(mask: np.ndarray) -> dict[str, Any]:
    return encode_rle(np.asarray(mask, dtype=bool)[None])[0]


def decode(segmentation: dict[str, Any]) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": segmentation["size"], "counts": segmentation["counts"].encode()}).astype(bool)


@pytest.fixture(scope="module")
def gt(tiny_dataset: Path) -> GroundTruth:
    return load_ground_truth(tiny_dataset)


def as_results(truth: GroundTruth, **fields: bool) -> list[dict[str, Any]]:
    """The ground truth as predictions (score 1), with its depth and visible mask if asked."""
    visible = None
    if fields.get("visible"):
        with open_dataset(truth.source) as ds:
            visible = [ds.visible_masks[a["id"] - 1] for a in truth.annotations]  # an HDF5 ground truth's id: row + 1
    out = []
    for k, a in enumerate(truth.annotations):
        d = {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "score": 1.0,
            "segmentation": a["segmentation"],
        }
        if fields.get("depth"):
            d["depth"] = a["depth"]
        if visible is not None:
            d["visible_segmentation"] = rle(visible[k])
        out.append(d)
    return out


# Occlusion order ---------------------------------------------------------------------------


def test_ground_truth_with_its_depth_orders_every_pair(gt: GroundTruth) -> None:
    order = evaluate(gt, as_results(gt, depth=True))["occlusion_order"]
    assert order["source"] == "depth" and order["pairs"] > 20 and order["note"] is None
    assert {k: order[k] for k in ("recall", "recall50", "accuracy", "accuracy50")} == dict.fromkeys(
        ("recall", "recall50", "accuracy", "accuracy50"), 1.0
    )
    reversed_depth = [dict(d, depth=-d["depth"]) for d in as_results(gt, depth=True)]
    flipped = evaluate(gt, reversed_depth)["occlusion_order"]
    assert flipped["recall"] == 0.0 and flipped["accuracy"] == 0.0 and flipped["pairs"] == order["pairs"]


def two_stacks() -> GroundTruth:
    """Two images of one stack each: three squares overlapping pairwise, depth 0 (front), 1, 2."""
    annotations = []
    for image in (1, 2):
        for depth, (y, x) in enumerate([(0, 0), (2, 2), (1, 3)]):
            mask = np.zeros((8, 8), bool)
            mask[y : y + 4, x : x + 4] = True
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image, "category_id": 1, "segmentation": rle(mask)}
                | {"area": 16, "bbox": [x, y, 4.0, 4.0], "iscrowd": 0, "occlusion_rate": 0.0, "depth": float(depth)}
            )
    images = [{"id": i, "height": 8, "width": 8} for i in (1, 2)]
    return GroundTruth(images, annotations, [{"id": 1, "name": "square"}], "stacks")


def test_order_reversed_in_one_of_two_images_recalls_half() -> None:
    truth = two_stacks()
    predictions = as_results(truth, depth=True)
    for d in predictions[3:]:
        d["depth"] = -d["depth"]
    order = evaluate(truth, predictions)["occlusion_order"]
    assert order["pairs"] == 6 and order["recall"] == 0.5 and order["accuracy"] == 0.5


def test_unmatched_and_apart_detections_count_against_recall_only() -> None:
    truth = two_stacks()
    predictions = as_results(truth, depth=True)
    predictions[0] = dict(predictions[0], segmentation=rle(np.eye(8, dtype=bool)))  # front square missed
    order = evaluate(truth, predictions)["occlusion_order"]
    assert order["recall"] == pytest.approx(4 / 6) and order["accuracy"] == 1.0  # 4 of 6 pairs: both matched
    ties = [dict(d, depth=0.0) for d in as_results(truth, depth=True)]
    assert evaluate(truth, ties)["occlusion_order"]["recall"] == 0.0  # equal depths order nothing


def test_ranks_from_a_cocoa_order_field_work_like_depths() -> None:
    truth = two_stacks()
    predictions = [
        {**{k: v for k, v in d.items() if k != "depth"}, "order": d["depth"] + 1} for d in as_results(truth, depth=True)
    ]
    order = evaluate(truth, predictions)["occlusion_order"]
    assert order["source"] == "order" and order["recall"] == 1.0


def test_order_metrics_are_absent_without_depths(gt: GroundTruth) -> None:
    order = evaluate(gt, as_results(gt))["occlusion_order"]
    assert order["source"] is None and order["pairs"] is None and order["recall"] is None
    assert "carry no 'depth' or 'order'" in order["note"]
    flat = GroundTruth(
        gt.images, [{k: v for k, v in a.items() if k != "depth"} for a in gt.annotations], gt.categories, "x"
    )
    order = evaluate(flat, as_results(gt, depth=True))["occlusion_order"]
    assert order["source"] == "depth" and order["recall"] is None and "no depth order" in order["note"]


def brute_force_order(truth: GroundTruth, detections: list[dict[str, Any]]) -> tuple[list[float], list[float], int]:
    """Order recall and accuracy per IoU threshold, from pycocotools' own matching (the
    COCO-Amodal API's: one category, list order on ties), pair by pair."""
    one = GroundTruth(
        truth.images, [dict(a, category_id=1) for a in truth.annotations], [{"id": 1, "name": "o"}], "one"
    )
    evaluator = pycocotools_eval(one, [dict(d, category_id=1) for d in detections])
    det_of: dict[tuple[int, int], int] = {}  # (threshold, gt id) -> detection index
    for record in evaluator.evalImgs:
        if record is not None:
            for t, row in enumerate(record["gtMatches"]):
                for gt_id, det_id in zip(record["gtIds"], row, strict=True):
                    if det_id:
                        det_of[t, int(gt_id)] = int(det_id) - 1
    masks = [decode(a["segmentation"]) for a in truth.annotations]
    det_masks = [decode(d["segmentation"]) for d in detections]
    pairs = [
        (i, j) if a["depth"] < b["depth"] else (j, i)
        for i, a in enumerate(truth.annotations)
        for j, b in enumerate(truth.annotations)
        if i < j and a["image_id"] == b["image_id"] and "depth" in a and "depth" in b
        and a["depth"] != b["depth"] and (masks[i] & masks[j]).any()
    ]  # fmt: skip
    recall, accuracy = [], []
    for t in range(len(IOU_THRESHOLDS)):
        recalled = right = matched = 0
        for front, back in pairs:
            f, b = det_of.get((t, truth.annotations[front]["id"])), det_of.get((t, truth.annotations[back]["id"]))
            if f is None or b is None:
                continue
            matched += 1
            ordered = detections[f]["depth"] < detections[b]["depth"]
            right += ordered
            recalled += ordered and bool((det_masks[f] & det_masks[b]).any())
        recall.append(recalled / len(pairs) if pairs else -1.0)
        accuracy.append(right / matched if matched else -1.0)
    return recall, accuracy, len(pairs)


def random_scene(seed: int) -> tuple[GroundTruth, list[dict[str, Any]]]:
    """Overlapping rectangles with depths (some unknown, some equal), and detections
    (shifted copies, duplicates, strays) with depths and tied scores."""
    rng = np.random.default_rng(seed)
    images = [{"id": i, "height": 9, "width": 9} for i in (2, 5, 7)[: rng.integers(1, 4)]]
    annotations, detections = [], []
    for image in images:
        masks = []
        for depth in rng.permutation(int(rng.integers(0, 7))).tolist():
            mask = np.zeros((9, 9), bool)
            y, x = rng.integers(0, 7, 2)
            mask[y : y + rng.integers(2, 6), x : x + rng.integers(2, 6)] = True
            masks.append(mask)
            annotation = {"id": len(annotations) + 1, "image_id": image["id"], "category_id": int(rng.integers(1, 3))}
            annotation |= {"segmentation": rle(mask), "area": int(mask.sum()), "bbox": [0.0] * 4, "iscrowd": 0}
            annotation |= {"occlusion_rate": 0.0}
            if rng.uniform() < 0.9:
                annotation["depth"] = float(depth if rng.uniform() < 0.9 else 0)
            annotations.append(annotation)
        for _ in range(rng.integers(0, 9)):
            mask = np.roll(masks[rng.integers(len(masks))], tuple(rng.integers(-1, 2, 2)), (0, 1)) if masks else None
            if mask is None or rng.uniform() < 0.15:
                mask = np.zeros((9, 9), bool)
                mask[rng.integers(0, 9) :, rng.integers(0, 9) :] = True
            detections.append(
                {"image_id": image["id"], "category_id": int(rng.integers(1, 3)), "segmentation": rle(mask)}
                | {"score": float(rng.choice([0.5, 0.9, rng.uniform()])), "depth": float(rng.integers(0, 4))}
            )
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return GroundTruth(images, annotations, categories, "random"), detections


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_order_metrics_equal_a_pair_by_pair_count_on_pycocotools_matches(seed: int) -> None:
    truth, detections = random_scene(seed)
    recall, accuracy, pairs = brute_force_order(truth, detections)
    order = evaluate(truth, detections)["occlusion_order"] if detections else None
    if order is None:
        return
    if not any("depth" in a for a in truth.annotations):
        assert order["pairs"] is None and order["recall"] is None and "no depth order" in order["note"]
        return
    if not pairs:
        assert order["pairs"] == 0 and order["recall"] == -1.0
        return
    assert order["pairs"] == pairs
    assert order["recall"] == pytest.approx(float(np.mean(recall)), abs=1e-12)
    assert order["recall50"] == pytest.approx(recall[0], abs=1e-12)
    defined = [a for a in accuracy if a > -1]
    assert order["accuracy"] == pytest.approx(float(np.mean(defined)) if defined else -1.0, abs=1e-12)
    assert order["accuracy50"] == pytest.approx(accuracy[0], abs=1e-12)


# Invisible-mask AP ---------------------------------------------------------------------------


def test_ground_truth_with_its_visible_masks_scores_one(gt: GroundTruth) -> None:
    hidden = evaluate(gt, as_results(gt, visible=True))["invisible"]
    occluded = sum(a["occlusion_rate"] > 0 for a in gt.annotations)
    assert hidden["source"] == "visible_segmentation" and hidden["note"] is None
    assert hidden["instances"] == hidden["detections"] == occluded > 0  # the unoccluded take no part
    assert {k: hidden[k] for k in ("AP", "AP50", "AP75", "AR100")} == dict.fromkeys(
        ("AP", "AP50", "AP75", "AR100"), 1.0
    )


def test_predicting_the_amodal_mask_as_visible_finds_nothing_and_claims_nothing(gt: GroundTruth) -> None:
    predictions = [dict(d, visible_segmentation=d["segmentation"]) for d in as_results(gt)]
    hidden = evaluate(gt, predictions)["invisible"]
    assert hidden["detections"] == 0 and hidden["AR100"] == 0.0 and hidden["AP"] == 0.0


def test_invisible_metrics_are_absent_without_visible_masks(gt: GroundTruth) -> None:
    hidden = evaluate(gt, as_results(gt))["invisible"]
    assert hidden["source"] is None and hidden["AP"] is None and "carry no 'visible_segmentation'" in hidden["note"]
    bare = GroundTruth(gt.images, [dict(a) for a in gt.annotations], gt.categories, gt.source)
    for a in bare.annotations:
        del a["hidden_part"]
    hidden = evaluate(bare, as_results(gt, visible=True))["invisible"]
    assert hidden["source"] == "visible_segmentation" and hidden["AP"] is None and "no visible masks" in hidden["note"]
    partial = GroundTruth(gt.images, [dict(a) for a in gt.annotations], gt.categories, gt.source)
    del partial.annotations[0]["hidden_part"]  # one instance without, the others with: malformed
    with pytest.raises(DatasetError, match="instance 1 has no visible mask"):
        evaluate(partial, as_results(gt, visible=True))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_invisible_ap_is_cocoeval_on_the_invisible_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth, detections = random_scene(seed)
    for a in truth.annotations:
        a["visible_source"] = ("gt", rle(decode(a["segmentation"]) & (rng.uniform(size=(9, 9)) < 0.7)))
    for d in detections:
        d["visible_segmentation"] = rle(decode(d["segmentation"]) & (rng.uniform(size=(9, 9)) < 0.6))
    ours = invisible_metrics(truth, detections) if detections else None
    if ours is None:
        return
    hidden_truth = invisible_ground_truth(truth)
    assert hidden_truth is not None
    hidden = invisible_predictions(detections)
    with contextlib.redirect_stdout(io.StringIO()):
        plain = _summary(pycocotools_eval(hidden_truth, hidden))
    assert ours["instances"] == len(hidden_truth.annotations) and ours["detections"] == len(hidden)
    for key, value in plain.items():
        assert abs(ours[key] - value) <= 1e-9, key


# The same numbers from every layout, and the predictions' fields checked -------------------


def test_every_mask_resolution_rle_layout_gives_the_hdf5_numbers(tiny_dataset: Path, tmp_path: Path, gt) -> None:
    rng = np.random.default_rng(3)
    predictions = as_results(gt, depth=True, visible=True)
    for d in predictions:
        d["score"], d["depth"] = float(rng.uniform()), d["depth"] + float(rng.normal(0, 2))
    expected = evaluate(gt, predictions)
    assert 0 < expected["occlusion_order"]["recall"] < 1
    for style in ("coco", "cocoa", "kins", "aistron"):
        folder = export_coco(tiny_dataset, tmp_path / style, ExportConfig(style=style, resolution="mask"))
        truth = load_ground_truth(folder / "annotations.json")
        got = evaluate(truth, check_predictions(predictions, truth, []))
        assert got["occlusion_order"] == expected["occlusion_order"], style
        assert got["invisible"] == expected["invisible"], style


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"depth": "near"}, "record 1: depth must be a finite number"),
        ({"order": True}, "record 1: order must be a finite number"),
        ({"depth": 10**400}, "record 1: depth must be a finite number"),
        ({"visible_segmentation": {"size": [32, 32], "counts": "5"}}, "record 1: visible_segmentation counts"),
        ({"visible_segmentation": {"size": [16, 16], "counts": [256]}}, "size [16, 16] is not its segmentation's"),
        ({"visible_segmentation": [[1, 2, 3, 4, 5, 6]]}, "record 1: visible_segmentation must be a COCO RLE"),
    ],
)
def test_bad_optional_fields_are_named(gt: GroundTruth, change: dict[str, Any], needle: str) -> None:
    records = as_results(gt, depth=True, visible=True)[:2]
    records[1] = dict(records[1], **change)
    with pytest.raises(DatasetError) as info:
        check_predictions(records, gt, [])
    assert needle in str(info.value)


@pytest.mark.parametrize("field", ["depth", "visible_segmentation"])
def test_an_optional_field_is_on_every_record_or_none(gt: GroundTruth, field: str) -> None:
    records = as_results(gt, depth=True, visible=True)[:3]
    del records[2][field]
    with pytest.raises(DatasetError, match=f"record 2: has no '{field}', unlike record 0"):
        check_predictions(records, gt, [])
    first_only = as_results(gt)[:2]
    first_only[1] = as_results(gt, depth=True, visible=True)[1]
    with pytest.raises(DatasetError, match="record 1: has 'depth', unlike record 0"):
        check_predictions(first_only, gt, [])


# Band rate -----------------------------------------------------------------------------------


def test_band_rate_chooses_the_geometric_or_the_pixel_rate(tiny_dataset: Path, tmp_path: Path) -> None:
    with open_dataset(tiny_dataset) as ds:
        table = ds.instances[:]
    shown = table[table["is_visible"]]
    for rate, column in (("pixel", "pixel_occlusion_rate"), ("geometric", "occlusion_rate")):
        truth = load_ground_truth(tiny_dataset, band_rate=rate)  # type: ignore[arg-type]
        assert [a["occlusion_rate"] for a in truth.annotations] == shown[column].tolist()
    folder = export_coco(tiny_dataset, tmp_path / "cocoa", ExportConfig(style="cocoa", resolution="mask"))
    geometric = load_ground_truth(folder / "annotations.json", band_rate="geometric")
    assert [a["occlusion_rate"] for a in geometric.annotations] == pytest.approx(
        shown["occlusion_rate"][np.argsort(shown["depth"] + 1000 * shown["scene"], kind="stable")], abs=1e-6
    )
    with pytest.raises(ConfigError, match="band_rate='area' is invalid"):
        load_ground_truth(tiny_dataset, band_rate="area")  # type: ignore[arg-type]


# The CLI and the JSON it writes --------------------------------------------------------------

ORDER_SCHEMA = {"source": str, "pairs": int, "recall": float, "recall50": float}
ORDER_SCHEMA |= {"accuracy": float, "accuracy50": float, "note": type(None)}
INVISIBLE_SCHEMA = {"source": str, "AP": float, "AP50": float, "AP75": float, "AR100": float}
INVISIBLE_SCHEMA |= {"instances": int, "detections": int, "note": type(None)}


def test_json_schema_and_printed_tables(tiny_dataset: Path, tmp_path: Path, gt: GroundTruth) -> None:
    predictions = tmp_path / "dt.json"
    predictions.write_text(json.dumps(as_results(gt, depth=True, visible=True)))
    out = tmp_path / "m.json"
    result = run_cli("evaluate", "--gt", tiny_dataset, "--dt", predictions, "--json", out, "--band-rate", "geometric")
    assert result.exit_code == 0, result.output
    assert "occlusion order (predicted by 'depth')" in result.output and "invisible masks" in result.output
    metrics = json.loads(out.read_text())
    assert list(metrics) == [
        "all", "bands", "ground_truth", "detections", "occlusion_order", "invisible",
        "ground_truth_path", "predictions", "band_rate",
    ]  # fmt: skip
    assert metrics["band_rate"] == "geometric"
    assert {k: type(v) for k, v in metrics["occlusion_order"].items()} == ORDER_SCHEMA
    assert {k: type(v) for k, v in metrics["invisible"].items()} == INVISIBLE_SCHEMA

    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(as_results(gt)))
    result = run_cli("evaluate", "--gt", tiny_dataset, "--dt", plain, "--json", out, "--force")
    assert result.exit_code == 0 and "occlusion order" not in result.output and "invisible" not in result.output
    metrics = json.loads(out.read_text())
    assert metrics["band_rate"] == "pixel"
    for key, schema in (("occlusion_order", ORDER_SCHEMA), ("invisible", INVISIBLE_SCHEMA)):
        assert list(metrics[key]) == list(schema)
        assert metrics[key]["source"] is None and metrics[key]["note"].startswith("not available: ")
        assert all(metrics[key][k] is None for k in schema if k not in ("source", "note"))


def test_the_cli_says_why_when_the_ground_truth_lacks_what_a_metric_needs(tmp_path: Path, gt: GroundTruth) -> None:
    mask = decode(gt.annotations[0]["segmentation"])
    truth = tmp_path / "gt.json"
    truth.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "height": mask.shape[0], "width": mask.shape[1]}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle(mask)}],
            }
        )
    )
    predictions = tmp_path / "dt.json"
    record = {"image_id": 1, "score": 1.0, "segmentation": rle(mask), "depth": 0, "visible_segmentation": rle(mask)}
    predictions.write_text(json.dumps([record]))
    result = run_cli("evaluate", "--gt", truth, "--dt", predictions)
    assert result.exit_code == 0, result.output
    assert "occlusion order: not available: the ground truth has no depth order" in result.output
    assert "invisible masks: not available: the ground truth has no visible masks" in result.output
    metrics, _ = evaluate_files(truth, dt=predictions)
    assert metrics["all"]["AP"] == pytest.approx(1.0)


def test_the_worked_examples_in_docs_evaluation() -> None:
    """docs/evaluation.md's example: squares A, B, C front to back, predicted depths 0.1, 0.7, 0.4."""

    def square(rows: tuple[int, int], columns: tuple[int, int]) -> np.ndarray:
        mask = np.zeros((8, 8), bool)
        mask[rows[0] : rows[1] + 1, columns[0] : columns[1] + 1] = True
        return mask

    a, b, c = square((0, 2), (0, 2)), square((1, 4), (1, 4)), square((4, 6), (4, 6))
    annotations = [
        {"id": k + 1, "image_id": 1, "category_id": 1, "segmentation": rle(mask), "area": int(mask.sum())}
        | {"bbox": [0.0] * 4, "iscrowd": 0, "occlusion_rate": 0.0, "depth": float(k)}
        | {"visible_source": ("example", rle(visible))}
        for k, (mask, visible) in enumerate([(a, a), (b, b & ~a), (c, c & ~b)])
    ]
    truth = GroundTruth([{"id": 1, "height": 8, "width": 8}], annotations, [{"id": 1, "name": "square"}], "example")
    visible = [a, b & ~square((1, 2), (1, 3)), c & ~square((4, 4), (4, 4))]
    predictions = [
        {"image_id": 1, "category_id": 1, "score": score, "segmentation": rle(mask), "depth": depth}
        | {"visible_segmentation": rle(shown)}
        for mask, shown, score, depth in zip((a, b, c), visible, (0.95, 0.8, 0.9), (0.1, 0.7, 0.4), strict=True)
    ]
    metrics = evaluate(truth, predictions)
    order = metrics["occlusion_order"]
    assert (order["pairs"], order["recall"], order["accuracy"]) == (2, 0.5, 0.5)
    without_c = evaluate(truth, predictions[:2])["occlusion_order"]
    assert (without_c["recall"], without_c["accuracy"]) == (0.5, 1.0)
    hidden = metrics["invisible"]
    assert (hidden["instances"], hidden["detections"], hidden["AP50"], hidden["AR100"]) == (2, 2, 1.0, 0.7)
    assert round(hidden["AP"], 4) == 0.7030 and round(hidden["AP75"], 4) == 0.5050
