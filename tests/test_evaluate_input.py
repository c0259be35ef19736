"""The evaluator's inputs are untrusted: every bad ground truth or results file gives one clean line.

Each case runs through ``shapesgen evaluate`` and must exit 2 with a single stderr line
(no traceback) naming the file and the record, leaving no file behind. Property tests
feed random JSON to both readers: only :class:`ShapesgenError` may come out. RLE counts
are checked before decoding, so a bad mask is refused the same way on every run.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from conftest import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from shapesgen.coco import decode_segmentation, encode_rle, rle_runs
from shapesgen.errors import DatasetError, ShapesgenError
from shapesgen.evaluate import (
    KEEP_PER_IMAGE,
    _coco,
    _summary,
    _with_boxes,
    check_predictions,
    evaluate,
    load_ground_truth,
    load_predictions,
)

SIZE = 8


def square(x0: int, y0: int, side: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[y0 : y0 + side, x0 : x0 + side] = True
    return mask


def rle(mask: np.ndarray) -> dict[str, Any]:
    return encode_rle(mask[None])[0]


GOOD_GT: dict[str, Any] = {
    "images": [{"id": 1, "height": SIZE, "width": SIZE}, {"id": 2, "height": SIZE, "width": SIZE}],
    "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle(square(0, 0, 4)), "pixel_occlude_rate": 0.0},
        {"id": 2, "image_id": 1, "category_id": 2, "segmentation": [[4, 4, 8, 4, 8, 8, 4, 8]], "occlude_rate": 0.5},
        {"id": 3, "image_id": 2, "category_id": 1, "segmentation": {"size": [SIZE, SIZE], "counts": [8, 56]}},
    ],
}
GOOD_RECORD: dict[str, Any] = {"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": rle(square(0, 0, 4))}


def gt_with(change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    doc = copy.deepcopy(GOOD_GT)
    change(doc)
    return doc


def set_in(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def delete(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return change


def assert_clean_failure(result: Any, needle: str) -> str:
    """Exit 2, one stderr line naming ``needle``, no traceback; returns the line."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.stdout)
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert needle in lines[0], (needle, lines[0])
    return lines[0]


def run_evaluate(tmp_path: Path, gt: Path, dt: Path, needle: str) -> str:
    before = sorted(tmp_path.rglob("*"))
    result = run_cli("evaluate", "--gt", gt, "--dt", dt)
    assert sorted(tmp_path.rglob("*")) == before, "evaluate left a file behind"
    return assert_clean_failure(result, needle)


def write(path: Path, content: Any) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return path


DEEP = b"[" * 100_000 + b"]" * 100_000
HUGE_INT = b"1" * 4400

BAD_GT = {
    "missing height": (gt_with(delete(("images", 1, "height"))), "images[1]: missing 'height'"),
    "unknown image_id": (
        gt_with(set_in(("annotations", 1, "image_id"), 99)),
        "annotations[1]: image_id 99 is not an image id",
    ),
    "images not a list": (gt_with(set_in(("images",), {"1": {}})), "images must be a list, got an object"),
    "annotations not a list": (gt_with(set_in(("annotations",), "x")), "annotations must be a list, got 'x'"),
    "no images": (gt_with(set_in(("images",), [])), "images is empty"),
    "image not an object": (gt_with(set_in(("images", 0), 7)), "images[0]: must be an object, got 7"),
    "annotation not an object": (gt_with(set_in(("annotations", 2), [1])), "annotations[2]: must be an object"),
    "duplicate image id": (gt_with(set_in(("images", 1, "id"), 1)), "images[1]: id 1 is also the id of images[0]"),
    "bool image id": (gt_with(set_in(("images", 0, "id"), True)), "images[0]: id must be an integer, got True"),
    "bool height": (gt_with(set_in(("images", 0, "height"), True)), "images[0]: height must be a positive integer"),
    "zero width": (gt_with(set_in(("images", 0, "width"), 0)), "images[0]: width must be a positive integer, got 0"),
    "huge image": (gt_with(set_in(("images", 0, "width"), 10**7)), "images[0]: 8x10000000 is over the limit"),
    "bool annotation image_id": (
        gt_with(set_in(("annotations", 0, "image_id"), True)),
        "annotations[0]: image_id must be an integer, got True",
    ),
    "list image_id": (gt_with(set_in(("annotations", 0, "image_id"), [1])), "image_id must be an integer, got a list"),
    "bool category_id": (gt_with(set_in(("annotations", 0, "category_id"), False)), "annotations[0]: category_id"),
    "unknown category_id": (
        gt_with(set_in(("annotations", 0, "category_id"), 7)),
        "annotations[0]: category_id 7 is not a category id",
    ),
    "segmentation missing": (gt_with(delete(("annotations", 0, "segmentation"))), "missing 'segmentation'"),
    "segmentation a string": (gt_with(set_in(("annotations", 0, "segmentation"), "abc")), "must be a COCO RLE"),
    "rle counts sum short": (
        gt_with(set_in(("annotations", 0, "segmentation"), {"size": [SIZE, SIZE], "counts": [1, 2]})),
        "annotations[0]: segmentation counts sum to 3, not height x width = 8x8 = 64",
    ),
    "rle empty string": (
        gt_with(set_in(("annotations", 0, "segmentation"), {"size": [SIZE, SIZE], "counts": ""})),
        "annotations[0]: segmentation counts sum to 0",
    ),
    "rle garbage characters": (
        gt_with(set_in(("annotations", 0, "segmentation", "counts"), "~~~")),
        "annotations[0]: segmentation counts must be characters '0'..'o', got '~'",
    ),
    "rle negative run": (
        gt_with(set_in(("annotations", 2, "segmentation", "counts"), [-1, 65])),
        "annotations[2]: segmentation counts hold a negative run length (-1)",
    ),
    "rle counts an object": (
        gt_with(set_in(("annotations", 2, "segmentation", "counts"), {})),
        "counts must be a list of integers",
    ),
    "rle wrong size": (
        gt_with(set_in(("annotations", 0, "segmentation"), rle(np.ones((4, 4), bool)))),
        "annotations[0]: segmentation size [4, 4] is not its image's [8, 8]",
    ),
    "rle size zero": (
        gt_with(set_in(("annotations", 2, "segmentation", "size"), [0, 8])),
        "segmentation size [0, 8] must be two positive integers",
    ),
    "polygon odd length": (
        gt_with(set_in(("annotations", 1, "segmentation"), [[1, 2, 3, 4, 5, 6, 7]])),
        "annotations[1]: segmentation polygon 0 has 7 coordinates",
    ),
    "polygon non-numbers": (
        gt_with(set_in(("annotations", 1, "segmentation"), [[1, 2, "a", 4, 5, 6]])),
        "annotations[1]: segmentation polygon 0 must be a list of numbers",
    ),
    "polygon bool": (
        gt_with(set_in(("annotations", 1, "segmentation"), [[1, 2, True, 4, 5, 6]])),
        "segmentation polygon 0 must be a list of numbers",
    ),
    "polygon nan": (
        gt_with(set_in(("annotations", 1, "segmentation"), [[0, 0, float("nan"), 4, 5, 6]])),
        "annotations[1]: segmentation polygon 0 has a coordinate that is not finite",
    ),
    "polygon far away": (
        gt_with(set_in(("annotations", 1, "segmentation"), [[0, 0, 1e12, 0, 5, 5]])),
        "segmentation polygon 0 has a coordinate that is not finite or beyond",
    ),
    "category without name": (gt_with(delete(("categories", 0, "name"))), "categories[0]: missing 'name'"),
    "category without id": (gt_with(delete(("categories", 1, "id"))), "categories[1]: missing 'id'"),
    "category bool id": (gt_with(set_in(("categories", 1, "id"), True)), "categories[1]: id must be an integer"),
    "category repeated": (gt_with(set_in(("categories", 1, "id"), 1)), "categories[1]: id 1 or name 'square' repeats"),
    "categories not a list": (gt_with(set_in(("categories",), "x")), "categories must be a list"),
    "occlusion rate a string": (
        gt_with(set_in(("annotations", 0, "pixel_occlude_rate"), "x")),
        "annotations[0]: pixel_occlude_rate must be a number in [0, 1], got 'x'",
    ),
    "is_visible a string": (gt_with(set_in(("annotations", 0, "is_visible"), "no")), "is_visible must be true or"),
    "regions not a list": (
        gt_with(set_in(("annotations",), [{"image_id": 1, "regions": 5}])),
        "annotations[0]: regions must be a list",
    ),
    "region with bad mask": (
        gt_with(set_in(("annotations",), [{"image_id": 1, "regions": [{"segmentation": {"size": [8, 8]}}]}])),
        "annotations[0].regions[0]: segmentation must be a COCO RLE",
    ),
    "a list, not a COCO file": ([1, 2], "not a COCO file"),
    "not JSON": (b"\x89HDF\r\n", "not a readable JSON file"),
    "deep nesting": (DEEP, "nested too deeply"),
    "4400-digit integer": (b'{"images": ' + HUGE_INT + b"}", "a number with too many digits"),
}


@pytest.mark.parametrize("case", list(BAD_GT))
def test_bad_ground_truth_is_one_line_naming_the_record(tmp_path: Path, case: str) -> None:
    content, needle = BAD_GT[case]
    gt = write(tmp_path / "gt.json", content)
    dt = write(tmp_path / "dt.json", [GOOD_RECORD])
    line = run_evaluate(tmp_path, gt, dt, needle)
    assert "gt.json" in line


def bad_record(**change: Any) -> list[Any]:
    return [GOOD_RECORD, {**GOOD_RECORD, **change}]


def with_segmentation(**change: Any) -> list[Any]:
    return bad_record(segmentation={**GOOD_RECORD["segmentation"], **change})


GOOD = json.dumps(GOOD_RECORD).encode()


def raw_records(second: bytes) -> bytes:
    return b"[" + GOOD + b", " + second + b"]"


BAD_DT = {
    "rle runs sum to 3": (with_segmentation(counts=[1, 2]), "record 1: segmentation counts sum to 3, not"),
    "rle empty string": (with_segmentation(counts=""), "record 1: segmentation counts sum to 0, not"),
    "rle string sums short": (with_segmentation(counts="12"), "record 1: segmentation counts sum to 3, not"),
    "rle string sums long": (with_segmentation(counts="ooo1"), "record 1: segmentation counts hold a number beyond"),
    "rle truncated string": (with_segmentation(counts="0o"), "record 1: segmentation counts end in the middle"),
    "rle garbage characters": (with_segmentation(counts="~!"), "record 1: segmentation counts must be characters"),
    "rle non-ASCII": (with_segmentation(counts="é"), "record 1: segmentation counts must be characters"),
    "rle negative runs": (with_segmentation(counts=[-5, 69]), "record 1: segmentation counts hold a negative run"),
    "rle negative in string": (with_segmentation(counts="1O"), "record 1: segmentation counts hold a negative run"),
    "rle bool counts": (with_segmentation(counts=[True, 63]), "record 1: segmentation counts must be a list of"),
    "rle float counts": (with_segmentation(counts=[64.0]), "record 1: segmentation counts must be a list of"),
    "rle counts null": (with_segmentation(counts=None), "record 1: segmentation counts must be a list of"),
    "rle size bool": (with_segmentation(size=[True, 8]), "record 1: segmentation size [True, 8] must be"),
    "rle size zero": (with_segmentation(size=[0, 8]), "record 1: segmentation size [0, 8] must be"),
    "rle size negative": (with_segmentation(size=[-8, -8]), "record 1: segmentation size [-8, -8] must be"),
    "rle size one number": (with_segmentation(size=[8]), "record 1: segmentation size [8] must be"),
    "rle size a string": (with_segmentation(size="8x8"), "record 1: segmentation size (str) must be"),
    "rle size huge": (with_segmentation(size=[10**6, 10**6]), "record 1: segmentation size 1000000x1000000 is over"),
    "polygon, not rle": (bad_record(segmentation=[[1, 2, 3, 4, 5, 6]]), "record 1: segmentation must be a COCO RLE"),
    "image_id true": (bad_record(image_id=True), "record 1: image_id must be an integer, got True"),
    "image_id a list": (bad_record(image_id=[1]), "record 1: image_id must be an integer, got a list of 1"),
    "image_id an object": (bad_record(image_id={"a": 1}), "record 1: image_id must be an integer, got an object"),
    "image_id a float": (bad_record(image_id=1.0), "record 1: image_id must be an integer, got 1.0"),
    "image_id unknown": (bad_record(image_id=99), "record 1: image_id 99 is not in the ground truth (1..2)"),
    "category_id true": (bad_record(category_id=True), "record 1: category_id must be an integer, got True"),
    "category_id a list": (bad_record(category_id=[1]), "record 1: category_id must be an integer, got a list of 1"),
    "category_id unknown": (bad_record(category_id=9), "record 1: category_id 9 is not one of [1, 2]"),
    "score true": (bad_record(score=True), "record 1: score True must be a finite number"),
    "score a string": (bad_record(score="0.5"), "record 1: score '0.5' must be a finite number"),
    "score rich markup": (bad_record(score="[/x]"), "record 1: score '[/x]' must be a finite number"),
    "score nan": (bad_record(score=float("nan")), "record 1: score nan must be a finite number"),
    "score infinity": (bad_record(score=float("inf")), "record 1: score inf must be a finite number"),
    "score 1e400": (raw_records(b'{"image_id": 1, "score": 1e400, "segmentation": {}}'), "record 1: score inf"),
    "score a 400-digit int": (bad_record(score=10**400), "record 1: score an integer of 1329 bits must be"),
    "missing fields": ([GOOD_RECORD, {"image_id": 1}], "record 1: missing field(s) ['segmentation', 'score']"),
    "record not an object": ([GOOD_RECORD, 5], "record 1: must be an object, got 5"),
    "not a list": ({"image_id": 1}, "must be a JSON list of COCO results, got an object"),
    "empty file": (b"", "must be a JSON list of COCO results, got an empty file"),
    "deep nesting": (raw_records(DEEP), "record 1: JSON nested too deeply"),
    "deep nesting at the top": (DEEP, "record 0: JSON nested too deeply"),
    "4400-digit integer": (raw_records(HUGE_INT), "record 1: holds a number with too many digits"),
    "truncated file": (raw_records(b'{"image_id": 1, "sc'), "record 1: not valid JSON"),
    "unclosed list": (raw_records(GOOD)[:-1], "after record 1: expected ',' or ']', got the end of the file"),
    "missing comma": (raw_records(GOOD + b" " + GOOD), "after record 1: expected ',' or ']', got '{'"),
    "trailing comma": (raw_records(GOOD + b","), "record 2: not valid JSON"),
    "data after the list": (raw_records(GOOD) + b" []", "unexpected data after the list"),
    "not UTF-8": (raw_records(b'"\xff\xfe"'), "not UTF-8 text"),
}


@pytest.mark.parametrize("case", list(BAD_DT))
def test_bad_predictions_are_one_line_naming_the_record(tmp_path: Path, case: str) -> None:
    content, needle = BAD_DT[case]
    gt = write(tmp_path / "gt.json", GOOD_GT)
    dt = write(tmp_path / "dt.json", content)
    line = run_evaluate(tmp_path, gt, dt, needle)
    assert "dt.json" in line


def test_short_rle_is_refused_the_same_way_every_run(tmp_path: Path) -> None:
    """pycocotools would decode uninitialised memory (a different mask each run); we refuse first."""
    gt = write(tmp_path / "gt.json", GOOD_GT)
    dt = write(tmp_path / "dt.json", with_segmentation(counts=""))
    lines = {run_evaluate(tmp_path, gt, dt, "record 1: segmentation counts sum to 0") for _ in range(3)}
    assert len(lines) == 1
    for counts in ("", "12", [1, 2]):
        with pytest.raises(DatasetError, match="sum to"):
            decode_segmentation({"size": [64, 64], "counts": counts}, 64, 64)


def test_the_good_files_evaluate(tmp_path: Path) -> None:
    gt = write(tmp_path / "gt.json", GOOD_GT)
    dt = write(tmp_path / "dt.json", [GOOD_RECORD])
    result = run_cli("evaluate", "--gt", gt, "--dt", dt, "--per-class")
    assert result.exit_code == 0, result.stderr
    truth = load_ground_truth(gt)
    assert len(truth.annotations) == 3 and truth.annotations[1]["area"] == 16
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0, "segmentation": a["segmentation"]}
        for a in truth.annotations
    ]
    assert evaluate(truth, check_predictions(perfect, truth, []))["all"]["AP"] == 1.0


def run_with_timeout(fifo: Path, *args: object) -> Any:
    """``run_cli(*args)`` in a thread; fails (after unblocking the reader) if it blocks."""
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(run_cli(*args)), daemon=True)
    worker.start()
    worker.join(timeout=30)
    if worker.is_alive():
        os.close(os.open(fifo, os.O_WRONLY))  # lets a blocked open return so the test run can end
        pytest.fail(f"evaluate blocked: {args}")
    return result[0]


@pytest.mark.parametrize("which", ["gt", "dt"])
def test_a_fifo_device_or_folder_is_refused_without_blocking(tmp_path: Path, which: str) -> None:
    files = {"gt": write(tmp_path / "gt.json", GOOD_GT), "dt": write(tmp_path / "dt.json", [GOOD_RECORD])}
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    for special, needle in (
        (fifo, "is a named pipe (FIFO), not a file"),
        (Path(os.devnull), "is a device, not a file"),
        (tmp_path, "is a folder, not a file"),
    ):
        paths = {**files, which: special}
        result = run_with_timeout(fifo, "evaluate", "--gt", paths["gt"], "--dt", paths["dt"])
        assert str(special) in assert_clean_failure(result, needle)


def test_top_detections_per_image_are_kept_and_metrics_match_cocoeval(tmp_path: Path) -> None:
    """Above KEEP_PER_IMAGE detections per image and category the rest are dropped with a warning,
    exactly as COCOeval itself truncates them (ties go to the earlier record)."""
    truth = load_ground_truth(write(tmp_path / "gt.json", GOOD_GT))
    rng = np.random.default_rng(0)
    masks = [rle(square(int(x), int(y), int(s))) for x, y, s in rng.integers(0, 5, (40, 3)) + [0, 0, 1]]
    records = [
        {
            "image_id": int(rng.integers(1, 3)),
            "category_id": 1,
            "score": float(rng.choice([0.5, 0.25, rng.uniform()])),
            "segmentation": masks[int(rng.integers(len(masks)))],
        }
        for _ in range(2 * KEEP_PER_IMAGE + 300)
    ]
    warnings: list[str] = []
    kept = check_predictions(records, truth, warnings)
    assert len(kept) == 2 * KEEP_PER_IMAGE and "300 detections beyond the 1000 best-scoring" in warnings[0]
    ranked = {
        image: sorted((i for i, r in enumerate(records) if r["image_id"] == image), key=lambda i: -records[i]["score"])
        for image in (1, 2)
    }
    expected = sorted(i for image in (1, 2) for i in ranked[image][:KEEP_PER_IMAGE])  # stable: ties keep file order
    assert kept == [records[i] for i in expected]
    plain = COCOeval(
        _coco(truth.images, truth.annotations, truth.categories),
        _coco(truth.images, _with_boxes(records), truth.categories),  # all records, no cap
        "segm",
    )
    plain.params.useCats, plain.params.maxDets = 0, [1, 10, 100, 1000]
    plain.params.areaRng, plain.params.areaRngLbl = [[0, 1e10]], ["all"]
    with contextlib.redirect_stdout(io.StringIO()):
        plain.evaluate()
        plain.accumulate()
    assert evaluate(truth, kept, bands=False)["all"] == _summary(plain)


KEYS = ["image_id", "category_id", "score", "segmentation", "size", "counts", "id", "height", "width", "name"]
KEYS += ["images", "annotations", "categories", "regions", "is_visible", "pixel_occlude_rate"]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-3, 70)
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6)
    | st.sampled_from(["", "0", "12", "0o", "PP", "~", "R7"])
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(KEYS), children, max_size=5),
    max_leaves=24,
)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def mutate(document: Any, path: list[int], value: Any) -> Any:
    """``document`` with the node that ``path`` picks (indices modulo the children) replaced by ``value``."""
    if not path or not isinstance(document, (dict, list)) or not document:
        return value
    keys = list(document) if isinstance(document, dict) else list(range(len(document)))
    key = keys[path[0] % len(keys)]
    copied = copy.copy(document)
    copied[key] = mutate(document[key], path[1:], value)
    return copied


@SETTINGS
@given(value=json_values | st.lists(json_values, max_size=3), path=st.lists(st.integers(0, 7), max_size=4))
def test_random_json_as_predictions_only_raises_shapesgen_errors(tmp_path: Path, value: Any, path: list[int]) -> None:
    truth = load_ground_truth(write(tmp_path / "gt.json", GOOD_GT))
    for document in (value, mutate([GOOD_RECORD, GOOD_RECORD], path, value)):
        dt = tmp_path / "dt.json"
        dt.write_text(json.dumps(document))
        try:
            checked = load_predictions(dt, truth, [])
        except ShapesgenError as exc:
            assert str(exc) and "\n" not in str(exc)
        else:
            evaluate(truth, checked, bands=False)


@SETTINGS
@given(value=json_values, path=st.lists(st.integers(0, 7), max_size=6))
def test_random_json_as_ground_truth_only_raises_shapesgen_errors(tmp_path: Path, value: Any, path: list[int]) -> None:
    for document in (value, mutate(GOOD_GT, path, value)):
        gt = tmp_path / "gt.json"
        gt.write_text(json.dumps(document))
        try:
            truth = load_ground_truth(gt)
        except ShapesgenError as exc:
            assert str(exc) and "\n" not in str(exc)
        else:
            evaluate(truth, [], bands=False)


RLE_ALPHABET = st.characters(min_codepoint=44, max_codepoint=115)  # '0'..'o' and a few on each side


@settings(max_examples=200, deadline=None)
@given(
    size=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    counts=st.lists(st.integers(-3, 150), max_size=12) | st.text(alphabet=RLE_ALPHABET, max_size=10),
)
def test_rle_is_decoded_exactly_or_refused(size: tuple[int, int], counts: Any) -> None:
    """Valid runs decode as pycocotools decodes them; anything else is refused, never guessed."""
    segmentation = {"size": list(size), "counts": counts}
    try:
        mask = decode_segmentation(segmentation, *size)
    except DatasetError as exc:
        assert "\n" not in str(exc)
        return
    assert mask.shape == size
    _, _, runs = rle_runs(segmentation)
    assert min(runs, default=0) >= 0 and sum(runs) == size[0] * size[1]
    coco = mask_utils.frPyObjects(segmentation, *size) if isinstance(counts, list) else dict(segmentation)
    if isinstance(counts, str):
        coco["counts"] = counts.encode()
    assert (mask_utils.decode(coco).astype(bool) == mask).all()


DAMAGED = [("amodal_masks", None), ("visible_masks", None), ("instances", "class_id"), ("layers", None)]


@pytest.mark.parametrize(("dataset", "column"), DAMAGED)
def test_evaluate_refuses_ground_truth_that_no_longer_matches_its_checksums(
    tiny_dataset: Path, tmp_path: Path, dataset: str, column: str | None
) -> None:
    damaged = tmp_path / "damaged.h5"
    shutil.copyfile(tiny_dataset, damaged)
    with h5py.File(damaged, "a") as f:
        row = 5 if dataset == "layers" else int(f["instance_offsets"][5])
        value = f[dataset][row]
        if dataset == "layers":
            value = value[::-1]  # layers in the wrong order
        elif column is None:
            value = ~value
        else:
            value[column] = value[column] % 3 + 1
        f[dataset][row] = value
    result = run_cli("evaluate", "--gt", damaged, "--oracle-layers", 2)
    assert result.exit_code == 2, result.output
    assert f"dataset {dataset} does not match the checksum" in result.stderr and "Traceback" not in result.stderr
    assert run_cli("evaluate", "--gt", tiny_dataset, "--oracle-layers", 2).exit_code == 0
