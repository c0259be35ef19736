"""``shapesgen preview --results``: ground truth next to predicted instances from a COCO results file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from shapesgen.coco import encode_rle
from shapesgen.preview import GAP, HEADER, Prediction, _palette, comparison_tiles, match_predictions, write_comparison
from shapesgen.storage.reader import open_dataset

SIZE = 64  # the tiny dataset's image size: one tile a side


def gt_results(dataset: Path, scale: int = 1) -> list[dict[str, Any]]:
    """The ground truth as COCO results: every visible instance's amodal mask, distinct scores."""
    records = []
    with open_dataset(dataset) as ds:
        for index in range(len(ds)):
            scene = ds[index]
            visible = np.flatnonzero(scene.instances["is_visible"])
            masks = scene.amodal_masks[visible]
            if scale > 1:
                masks = np.stack([np.kron(m, np.ones((scale, scale), dtype=bool)) for m in masks])
            for k, (row, rle) in enumerate(zip(visible.tolist(), encode_rle(masks), strict=True)):
                score = round(0.9 - 0.05 * k, 2)
                records.append(
                    {"image_id": index + 1, "category_id": int(scene.instances["class_id"][row]), "segmentation": rle}
                    | {"score": score}
                )
    return records


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def tile(png: Path, row: int, column: int) -> np.ndarray:
    with Image.open(png) as image:
        grid = np.asarray(image.convert("RGB"))
    y, x = HEADER + row * (SIZE + GAP), GAP + column * (SIZE + GAP)
    return grid[y : y + SIZE, x : x + SIZE]


def colours_in(pixels: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in p) for p in pixels.reshape(-1, 3)}


def ink(pixels: np.ndarray) -> int:
    """How many pixels are as dark as text: no fill or outline colour is."""
    return int((pixels.astype(int).sum(axis=-1) < 120).sum())


def test_gt_as_results_renders_each_instance_in_its_colour(tiny_dataset: Path, tmp_path: Path) -> None:
    results = write_json(tmp_path / "results.json", gt_results(tiny_dataset))
    out = tmp_path / "compare.png"
    shown = run_cli("preview", tiny_dataset, "--results", results, "--out", out, "--count", 2, "--start", 1)
    assert shown.exit_code == 0, shown.output
    assert "warning" not in shown.stderr
    with Image.open(out) as image:
        assert image.size == (3 * SIZE + 4 * GAP, HEADER + 2 * (SIZE + GAP) + GAP)
    with open_dataset(tiny_dataset) as ds:
        for row, index in enumerate((1, 2)):
            scene = ds[index]
            palette = np.round(_palette(len(scene.instances)) * 255).astype(int)
            visible = np.flatnonzero(scene.instances["is_visible"])
            expected = {tuple(int(v) for v in palette[i]) for i in visible.tolist()}
            truth, predicted = colours_in(tile(out, row, 1)), colours_in(tile(out, row, 2))
            assert expected <= predicted  # each prediction matched its instance and took its colour
            assert expected <= truth
            invisible = {tuple(int(v) for v in palette[i]) for i in np.flatnonzero(~scene.instances["is_visible"])}
            assert not (invisible - expected) & (truth | predicted)


def test_unmatched_prediction_gets_a_colour_of_its_own(tiny_dataset: Path) -> None:
    with open_dataset(tiny_dataset) as ds:
        scene = ds[0]
    n, m = len(scene.instances), scene.amodal_masks.shape[1]
    stray = np.zeros((m, m), dtype=bool)
    stray[:4, :4] = True  # matches nothing at IoU 0.5
    first = int(np.flatnonzero(scene.instances["is_visible"])[0])
    tiles = comparison_tiles(scene, [Prediction(scene.amodal_masks[first], 0.9), Prediction(stray, 0.8)], SIZE)
    assert [t.shape for t in tiles] == [(SIZE, SIZE, 3)] * 3
    palette = np.round(_palette(n + 1) * 255).astype(int)
    predicted = colours_in(tiles[2])
    assert tuple(int(v) for v in palette[first]) in predicted
    assert tuple(int(v) for v in palette[n]) in predicted
    assert colours_in(comparison_tiles(scene, [], SIZE)[2]) == {(255, 255, 255)}
    assert ink(tiles[1]) == ink(tiles[2]) == 0  # scores and IoUs are written on tiles of 128 px and more only
    centre = np.zeros((m, m), dtype=bool)
    centre[12:20, 12:20] = True
    assert all(ink(t) > 10 for t in comparison_tiles(scene, [Prediction(centre, 0.8)], 128)[1:])


def test_matching_is_greedy_by_score_at_iou_half() -> None:
    a = np.zeros((8, 8), dtype=bool)
    a[:4] = True
    b = np.zeros((8, 8), dtype=bool)
    b[4:] = True
    half = np.zeros((8, 8), dtype=bool)
    half[:2] = True  # IoU 0.5 with a
    gt = np.stack([a, b])
    matched, ious = match_predictions(gt, [Prediction(a, 0.2), Prediction(a | b, 0.9), Prediction(half, 0.5)])
    # a | b (best score) takes a first (IoU 0.5 with both: the first wins); the exact a comes too late
    assert matched.tolist() == [1, -1] and ious.tolist() == [0.5, 0.0]
    matched, ious = match_predictions(gt, [Prediction(a, 0.9), Prediction(b, 0.1)])
    assert matched.tolist() == [0, 1] and ious.tolist() == [1.0, 1.0]
    assert match_predictions(gt, [])[0].tolist() == [-1, -1]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(st.booleans(), min_size=16, max_size=16), min_size=1, max_size=5),
    st.lists(st.tuples(st.lists(st.booleans(), min_size=16, max_size=16), st.floats(0, 1)), max_size=5),
)
def test_matching_is_one_to_one_above_half(gt_bits: list[list[bool]], preds: list[tuple[list[bool], float]]) -> None:
    gt = np.array(gt_bits).reshape(-1, 4, 4)
    predictions = [Prediction(np.array(bits).reshape(4, 4), score) for bits, score in preds]
    matched, ious = match_predictions(gt, predictions)
    taken = matched[matched >= 0].tolist()
    assert len(taken) == len(set(taken))
    for g, d in enumerate(matched.tolist()):
        if d >= 0:
            inter = (gt[g] & predictions[d].mask).sum()
            union = (gt[g] | predictions[d].mask).sum()
            assert ious[g] == pytest.approx(inter / union) and ious[g] >= 0.5
        else:
            assert ious[g] == 0.0


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"image_id": 1}', "must be a JSON list of COCO results"),
        ('[{"image_id": 1, "score": 1}]', "record 0: missing field(s) ['segmentation']"),
        ('[{"image_id": 999, "score": 1, "segmentation": {"size": [32, 32], "counts": "0"}}]', "image_id 999"),
        ('[{"image_id": 1, "score": 1, "segmentation": {"size": [32, 32], "counts": [5]}}]', "record 0"),
        ("[1, 2", "record 0"),
    ],
)
def test_bad_results_file_is_evaluates_one_line_error(
    tiny_dataset: Path, tmp_path: Path, content: str, needle: str
) -> None:
    results = tmp_path / "bad.json"
    results.write_text(content)
    out = tmp_path / "compare.png"
    shown = run_cli("preview", tiny_dataset, "--results", results, "--out", out)
    scored = run_cli("evaluate", "--gt", tiny_dataset, "--dt", results)
    assert shown.exit_code == scored.exit_code == 2
    lines = [line for line in shown.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in shown.output
    assert lines[0] == scored.stderr.strip()  # the same line evaluate gives
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


def test_same_inputs_give_the_same_png_bytes(tiny_dataset: Path, tmp_path: Path) -> None:
    results = write_json(tmp_path / "results.json", gt_results(tiny_dataset))
    first, _ = write_comparison(tiny_dataset, results, tmp_path / "a.png", count=3, start=2)
    second = run_cli(
        "preview", tiny_dataset, "--results", results, "--out", tmp_path / "b.png", "--count", 3, "--start", 2
    )
    assert second.exit_code == 0, second.output
    assert first.read_bytes() == (tmp_path / "b.png").read_bytes()


def test_masks_at_image_resolution_are_resized(tiny_dataset: Path, tmp_path: Path) -> None:
    at_mask = write_json(tmp_path / "mask.json", gt_results(tiny_dataset))
    at_image = write_json(tmp_path / "image.json", gt_results(tiny_dataset, scale=2))  # 64 px: the image size
    a, warnings_a = write_comparison(tiny_dataset, at_mask, tmp_path / "a.png", count=2)
    b, warnings_b = write_comparison(tiny_dataset, at_image, tmp_path / "b.png", count=2)
    assert a.read_bytes() == b.read_bytes()
    assert warnings_a == [] and len(warnings_b) == 1 and "resized (nearest)" in warnings_b[0]


def test_results_for_other_scenes_only_warn(tiny_dataset: Path, tmp_path: Path) -> None:
    records = [r for r in gt_results(tiny_dataset) if r["image_id"] > 6]
    results = write_json(tmp_path / "results.json", records)
    out = tmp_path / "compare.png"
    shown = run_cli("preview", tiny_dataset, "--results", results, "--out", out, "--count", 2, "--start", 1)
    assert shown.exit_code == 0, shown.output
    warning = next(line for line in shown.stderr.splitlines() if "warning" in line)
    assert "scenes 1..2 (image ids 2..3)" in warning and "image ids 7..12" in warning
    assert colours_in(tile(out, 0, 2)) == {(255, 255, 255)}  # nothing predicted is drawn


def test_score_threshold_hides_low_scores(tiny_dataset: Path, tmp_path: Path) -> None:
    records = gt_results(tiny_dataset)
    results = write_json(tmp_path / "results.json", records)
    kept, warnings = write_comparison(tiny_dataset, results, tmp_path / "a.png", count=1, score_threshold=0.95)
    assert colours_in(tile(kept, 0, 2)) == {(255, 255, 255)} and "below the threshold 0.95" in warnings[0]
    some, warnings = write_comparison(tiny_dataset, results, tmp_path / "b.png", count=1, score_threshold=0.85)
    assert warnings == [] and len(colours_in(tile(some, 0, 2))) > 1
    alone = run_cli("preview", tiny_dataset, "--out", tmp_path / "c.png", "--score-threshold", 0.5)
    assert alone.exit_code == 2 and "--score-threshold needs --results" in alone.stderr
    nan = run_cli(
        "preview", tiny_dataset, "--results", results, "--out", tmp_path / "d.png", "--score-threshold", "nan"
    )
    assert nan.exit_code == 2 and "--score-threshold nan is invalid" in nan.stderr


def test_existing_output_needs_force_and_inputs_are_never_replaced(tiny_dataset: Path, tmp_path: Path) -> None:
    results = write_json(tmp_path / "results.json", gt_results(tiny_dataset))
    out = tmp_path / "compare.png"
    earlier = b"\x89PNG\r\n\x1a\nan earlier preview"
    out.write_bytes(earlier)
    refused = run_cli("preview", tiny_dataset, "--results", results, "--out", out)
    assert refused.exit_code == 2 and "--force" in refused.stderr and out.read_bytes() == earlier
    replaced = run_cli("preview", tiny_dataset, "--results", results, "--out", out, "--force")
    assert replaced.exit_code == 0 and out.read_bytes().startswith(b"\x89PNG")
    onto = run_cli("preview", tiny_dataset, "--results", results, "--out", results, "--force")
    assert onto.exit_code == 2 and "would overwrite the input --results" in onto.stderr
    assert json.loads(results.read_text())


def test_a_grid_cut_short_by_the_end_of_the_dataset_says_so(tiny_dataset: Path, tmp_path: Path) -> None:
    result = run_cli("preview", tiny_dataset, "--out", tmp_path / "p.png", "--start", 10, "--count", 4)
    assert result.exit_code == 0, result.output
    assert "note: --count 4 from scene 10: the dataset ends at scene 11, so 2 shown" in result.stderr
    result = run_cli("preview", tiny_dataset, "--out", tmp_path / "q.png", "--start", 8, "--count", 4)
    assert result.exit_code == 0 and "note:" not in result.stderr
    result = run_cli("preview", tiny_dataset, "--out", tmp_path / "r.png", "--count", 20)  # all of it: no surprise
    assert result.exit_code == 0 and "note:" not in result.stderr
