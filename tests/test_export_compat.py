"""Exports as a receiving team uses them: the COCO-Amodal API's, KINS 2020 and aistron layouts,
identical evaluation numbers from every file of one dataset, consistent masks, verifiable
rebuilds, stand-alone docs."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shlex
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import run_cli
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from shapesgen import SceneConfig, __version__
from shapesgen.build import render_dataset
from shapesgen.coco import ExportConfig, encode_rle, export_coco, masks_at, scene_rings
from shapesgen.evaluate import evaluate_files, load_ground_truth, oracle_predictions
from shapesgen.storage.reader import open_dataset

# Crowded enough to have instances hidden at mask resolution, some of them visible at image resolution.
CROWDED = SceneConfig(image_size=64, mask_size=16, instances_per_class=5, layers=2, seed=4)
OPTIONS = {
    f"{style}-{segmentation}-{resolution}{'-hidden' if hidden else ''}": ExportConfig(
        style=style, segmentation=segmentation, resolution=resolution, include_hidden=hidden
    )
    for style, segmentation, resolution, hidden in itertools.product(
        ("coco", "cocoa", "kins", "aistron"), ("rle", "polygon"), ("mask", "image"), (False, True)
    )
}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "export.md"


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("crowded") / "crowded.h5"
    render_dataset(CROWDED, path, num_scenes=6)
    return path


@pytest.fixture(scope="module")
def exports(crowded: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    return {name: export_coco(crowded, root / name, export) for name, export in OPTIONS.items()}


def document(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "annotations.json").read_text())


def records(folder: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(image_id, record)`` of every flat annotation or COCOA region."""
    out = []
    for annotation in document(folder)["annotations"]:
        for record in annotation.get("regions", [annotation]):
            out.append((annotation["image_id"], record))
    return out


# Each layout's keys for the amodal, visible and invisible masks (KINS has no invisible mask).
MASK_KEYS = {
    "coco": ("segmentation", "visible_mask", "invisible_mask"),
    "cocoa": ("segmentation", "visible_mask", "invisible_mask"),
    "kins": ("a_segm", "i_segm", None),
    "aistron": ("amodal_segm", "visible_segm", "occluded_segm"),
}


def record_masks(record: dict[str, Any], style: str, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Amodal, visible and invisible masks of a record of any layout, as pycocotools decodes them."""
    amodal_key, visible_key, invisible_key = MASK_KEYS[style]
    amodal, visible = decode(record[amodal_key], size), decode(record[visible_key], size)
    invisible = decode(record[invisible_key], size) if invisible_key else amodal & ~visible
    return amodal, visible, invisible


def decode(segmentation: Any, size: int) -> np.ndarray:
    """A mask as pycocotools decodes it; a flat polygon is wrapped, as the COCO-Amodal API does."""
    if isinstance(segmentation, list):
        polygons = segmentation if isinstance(segmentation[0], list) else [segmentation]
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, size, size))).astype(bool)
    assert isinstance(segmentation["counts"], str)  # compressed RLE, as the API's modal path reads it
    return mask_utils.decode({"size": segmentation["size"], "counts": segmentation["counts"].encode()}).astype(bool)


def results_file(path: Path, detections: list[dict[str, Any]]) -> Path:
    path.write_text(
        json.dumps([{k: d[k] for k in ("image_id", "category_id", "segmentation", "score")} for d in detections])
    )
    return path


def guesses(gt: Path, out: Path) -> Path:
    """A results file from the ground truth of ``gt``: every amodal mask, every second one
    shifted by a pixel, with distinct scores (no tie decides a match)."""
    annotations = load_ground_truth(gt).annotations
    detections = []
    for k, annotation in enumerate(annotations):
        mask = decode(annotation["segmentation"], annotation["segmentation"]["size"][0])
        shifted = np.roll(mask, k % 2, axis=1)
        detections.append(dict(annotation, segmentation=encode_rle(shifted[None])[0], score=1.0 - k / len(annotations)))
    return results_file(out, detections)


def metrics_of(gt: Path, dt: Path) -> dict[str, Any]:
    metrics, _ = evaluate_files(gt, dt=dt, per_class=True)
    return {k: v for k, v in metrics.items() if k not in ("ground_truth_path", "predictions")}


# 1. COCO-Amodal API layout ------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in OPTIONS if n.startswith("cocoa")])
def test_every_cocoa_export_loads_as_the_amodal_api_reads_it(exports: dict[str, Path], name: str) -> None:
    folder = exports[name]
    data = document(folder)
    size = {image["id"]: image["height"] for image in data["images"]}
    assert sorted(a["image_id"] for a in data["annotations"]) == sorted(size)  # one annotation per image
    polygon = OPTIONS[name].segmentation == "polygon"
    for annotation in data["annotations"]:
        regions = annotation["regions"]
        assert annotation["size"] == len(regions) and isinstance(annotation["depth_constraint"], str)
        assert [r["order"] for r in regions] == list(range(1, len(regions) + 1))  # >= 1, unique
        rles = []
        for region in regions:
            segmentation = region["segmentation"]
            if polygon:  # one flat list: the API calls frPyObjects([segmentation], h, w) itself
                assert isinstance(segmentation, list) and all(isinstance(v, float) for v in segmentation)
                (rle,) = mask_utils.frPyObjects(
                    [segmentation], size[annotation["image_id"]], size[annotation["image_id"]]
                )
            else:
                assert isinstance(segmentation, dict) and isinstance(segmentation["counts"], str)
                rle = segmentation
            rles.append(rle)
            for key in ("visible_mask", "invisible_mask"):  # RLE only: the API's modal path rejects polygons
                assert isinstance(region[key], dict) and isinstance(region[key]["counts"], str)
            assert region["isStuff"] == 0 and 0.0 <= region["occlude_rate"] <= 1.0
            assert isinstance(region["is_visible"], bool) and 0.0 <= region["pixel_occlude_rate"] <= 1.0
        if regions:  # its IoU call, amodal (segmentation) and modal (visible_mask) ground truth
            ious = mask_utils.iou(rles, rles, [0] * len(rles))
            assert np.allclose(np.diag(ious), 1.0)
            modal = [r["visible_mask"] for r in regions]
            assert mask_utils.iou(modal, modal, [0] * len(modal)).shape == (len(modal), len(modal))


# 2. The same numbers from every file of one dataset -------------------------------------------


def test_every_export_evaluates_like_the_others_of_its_resolution_and_the_hdf5_file(
    crowded: Path, exports: dict[str, Path], tmp_path: Path
) -> None:
    truths: dict[str, list[dict[str, int]]] = {}
    for resolution, segmentation in itertools.product(("mask", "image"), ("rle", "polygon")):
        group = [n for n, e in OPTIONS.items() if (e.resolution, e.segmentation) == (resolution, segmentation)]
        reference = exports[f"coco-{segmentation}-{resolution}"] / "annotations.json"
        predictions = guesses(reference, tmp_path / f"{resolution}-{segmentation}.json")
        sources = [exports[name] / "annotations.json" for name in group]
        if (resolution, segmentation) == ("mask", "rle"):
            sources.append(crowded)  # the same masks as the HDF5 file
        results = [metrics_of(source, predictions) for source in sources]
        assert 0 < results[0]["all"]["AP"] < 1
        for source, metrics in zip(sources, results, strict=True):
            assert metrics == results[0], source
        truths.setdefault(resolution, []).append(results[0]["ground_truth"])
    # the same instances and bands whatever the segmentation (polygon masks differ on boundary pixels only) ...
    assert truths["mask"][0] == truths["mask"][1] and truths["image"][0] == truths["image"][1]
    # ... and the image resolution keeps instances that only show at 64 px (item 5): a different, consistent truth
    assert truths["image"][0]["instances"] > truths["mask"][0]["instances"]


def test_a_model_scores_the_same_on_the_hdf5_file_and_every_mask_resolution_rle_export(
    crowded: Path, exports: dict[str, Path], tmp_path: Path
) -> None:
    truth = load_ground_truth(crowded, keep_layers=True)
    predictions = results_file(tmp_path / "oracle.json", oracle_predictions(truth, 1))  # visible masks as amodal
    expected = metrics_of(crowded, predictions)
    assert 0 < expected["all"]["AP"] < 1 and expected["bands"]["heavy"]["AR100"] < 1
    for name in ("coco-rle-mask", "coco-rle-mask-hidden", "cocoa-rle-mask", "cocoa-rle-mask-hidden"):
        assert metrics_of(exports[name] / "annotations.json", predictions) == expected, name


def test_ground_truth_bands_and_hidden_instances_agree_across_sources(crowded: Path, exports: dict[str, Path]) -> None:
    def truth(path: Path) -> list[tuple[int, int, float]]:
        return sorted(
            (a["image_id"], a["category_id"], a["occlusion_rate"]) for a in load_ground_truth(path).annotations
        )

    with open_dataset(crowded) as ds:
        assert not ds.instances["is_visible"][:].all()  # hidden instances exist, and must not become ground truth
    h5 = truth(crowded)
    image = truth(exports["coco-rle-image"] / "annotations.json")
    for name, folder in exports.items():
        assert truth(folder / "annotations.json") == (h5 if OPTIONS[name].resolution == "mask" else image), name
    hidden = [r for _, r in records(exports["cocoa-rle-mask-hidden"]) if not r["is_visible"]]
    assert hidden and all(r["pixel_occlude_rate"] == 1.0 for r in hidden)


# 4. Polygons: exact unique vertices; amodal = visible + invisible in every mode ----------------


def test_polygons_are_the_stored_vertices_without_padding(crowded: Path, exports: dict[str, Path]) -> None:
    with open_dataset(crowded) as ds:
        rings = {ds.instance_offsets[s.index] + j + 1: ring for s in ds for j, ring in enumerate(scene_rings(s))}
    for name in ("coco-polygon-image", "cocoa-polygon-mask", "kins-polygon-mask", "aistron-polygon-image"):
        scale = 1 if OPTIONS[name].resolution == "image" else CROWDED.mask_scale
        for _, record in records(exports[name]):
            segmentation = record[MASK_KEYS[OPTIONS[name].style][0]]
            flat = segmentation[0] if isinstance(segmentation[0], list) else segmentation
            xy = np.array(flat).reshape(-1, 2)
            ring = rings[record["id"]]
            assert len(xy) == len(ring) and len(np.unique(xy, axis=0)) == len(xy)  # a triangle has 3 points
            assert np.allclose(xy, ring / scale, atol=1e-4)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_amodal_is_visible_plus_invisible_in_every_mode(exports: dict[str, Path], name: str) -> None:
    folder = exports[name]
    size = document(folder)["images"][0]["height"]
    per_image: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for image_id, record in records(folder):
        amodal, visible, invisible = record_masks(record, OPTIONS[name].style, size)
        assert not (visible & ~amodal).any()
        assert np.array_equal(amodal, visible | invisible) and not (visible & invisible).any(), record["id"]
        assert visible.any() == record["is_visible"] or OPTIONS[name].segmentation == "polygon"
        depth = record.get("depth", record.get("order"))
        per_image.setdefault(image_id, []).append((depth, amodal, visible))
    for stack in per_image.values():  # visible = where the instance is the front-most one
        stack.sort(key=lambda item: item[0])
        covered = np.zeros((size, size), bool)
        for _, amodal, visible in stack:
            assert np.array_equal(visible, amodal & ~covered)
            covered |= amodal


def test_rle_masks_are_the_pixel_centre_masks(crowded: Path, exports: dict[str, Path]) -> None:
    with open_dataset(crowded) as ds:
        expected = {}
        for scene in ds:
            amodal, visible = masks_at(scene, "image", CROWDED.image_size)
            for j in range(len(amodal)):
                expected[int(ds.instance_offsets[scene.index]) + j + 1] = (amodal[j], visible[j])
    for name in ("cocoa-rle-image-hidden", "kins-rle-image-hidden", "aistron-rle-image-hidden"):
        for _, record in records(exports[name]):
            amodal, visible = expected[record["id"]]
            written = record_masks(record, OPTIONS[name].style, 64)
            assert np.array_equal(written[0], amodal) and np.array_equal(written[1], visible)


# 5. Visibility at the export's resolution ------------------------------------------------------


def test_image_resolution_keeps_instances_visible_only_at_image_resolution(
    crowded: Path, exports: dict[str, Path]
) -> None:
    with open_dataset(crowded) as ds:
        table = ds.instances[:]
    hidden_at_mask = {int(row) + 1 for row in np.flatnonzero(~table["is_visible"])}
    exported = {r["id"]: r for _, r in records(exports["coco-rle-image"])}
    rescued = hidden_at_mask & set(exported)
    assert rescued, "some instance has no visible pixel at 16 px but has some at 64 px"
    for ann_id in rescued:
        record = exported[ann_id]
        assert record["is_visible"] and decode(record["visible_mask"], 64).any()
        assert record["pixel_occlude_rate"] < 1.0
    at_mask = {r["id"] for _, r in records(exports["coco-rle-mask"])}
    assert at_mask == {int(row) + 1 for row in np.flatnonzero(table["is_visible"])}


# 3. Bytes depend only on the config and the export options; the card rebuilds and verifies ---


def test_rebuild_from_the_card_is_byte_identical_and_verifies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shapesgen.storage.writer

    class Clock:
        now_is = datetime(2020, 1, 1, tzinfo=UTC)

        @classmethod
        def now(cls, tz: Any = None) -> datetime:
            return cls.now_is

    monkeypatch.setattr(shapesgen.storage.writer, "datetime", Clock)
    config = SceneConfig(image_size=64, mask_size=32, instances_per_class=2, layers=2, seed=5)
    render_dataset(config, tmp_path / "original.h5", num_scenes=3, workers=1)
    options = ExportConfig(style="cocoa", segmentation="polygon", include_hidden=True)
    original = export_coco(tmp_path / "original.h5", tmp_path / "team" / "shared-export", options)
    card = (original / "README.md").read_text()
    assert "pip install shapesgen==" not in card and "pip install -e" in card  # the version is not on PyPI
    assert f"# must print shapesgen {__version__}" in card

    Clock.now_is = datetime(2031, 6, 6, tzinfo=UTC)  # a rebuild, years later, from the card alone
    block = re.search(r"```bash\n(.*?)```", card, re.S)
    assert block
    monkeypatch.chdir(original)
    for line in block.group(1).splitlines():
        command = shlex.split(line, comments=True)
        if command[:2] in (["shapesgen", "render"], ["shapesgen", "export"]):
            args = [a.replace("$EXPORT", str(original)) for a in command[1:]]
            result = run_cli(*args, "--quiet")
            assert result.exit_code == 0, (line, result.output)
    rebuilt = tmp_path / "team" / "shapesgen-rebuild" / "export"
    with open_dataset(tmp_path / "team" / "shapesgen-rebuild" / "dataset.h5") as ds:
        assert str(ds.attrs["created"]).startswith("2031")  # the source files differ in time and name ...
    names = sorted(p.relative_to(original).as_posix() for p in original.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(rebuilt).as_posix() for p in rebuilt.rglob("*") if p.is_file())
    for name in names:  # ... the exports do not
        assert (original / name).read_bytes() == (rebuilt / name).read_bytes(), name
    for line in (original / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256((rebuilt / name).read_bytes()).hexdigest() == digest
    if shutil.which("sha256sum"):
        check = subprocess.run(
            ["sha256sum", "-c", str(original / "SHA256SUMS")], cwd=rebuilt, capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
    info = document(original)["info"]
    assert "date_created" not in info and "original" not in json.dumps(info)


# 6. docs/export.md stands alone ------------------------------------------------------------------


def test_export_docs_stand_alone_and_name_every_field(exports: dict[str, Path]) -> None:
    text = DOCS.read_text()
    assert "FORMATS.md" not in text
    for target in re.findall(r"\]\(([^)#]+)", text):  # relative links point at files of the repository
        if not target.startswith("http"):
            assert (DOCS.parent / target).exists(), target
    fields = set()
    for name in ("coco-polygon-image-hidden", "cocoa-rle-mask", "kins-polygon-mask-hidden", "aistron-rle-image"):
        data = document(exports[name])
        fields |= set(data["info"]) | set(data["images"][0])
        for annotation in data["annotations"]:
            fields |= set(annotation)
            for region in annotation.get("regions", []):
                fields |= set(region)
    missing = sorted(f for f in fields if f"`{f}`" not in text)
    assert not missing, f"docs/export.md does not describe {missing}"


# 7. KINS 2020 and aistron layouts ------------------------------------------------------------------


def flat_records(folder: Path) -> dict[int, dict[str, Any]]:
    return {record["id"]: record for _, record in records(folder)}


@pytest.mark.parametrize("name", [n for n in OPTIONS if n.startswith("kins")])
def test_kins_export_has_the_2020_keys_and_occlusion_clusters(exports: dict[str, Path], name: str) -> None:
    folder = exports[name]
    coco = COCO(str(folder / "annotations.json"))  # pycocotools indexes it as any COCO file
    flat = flat_records(exports[name.replace("kins", "coco", 1)])
    assert sorted(coco.anns) == sorted(flat)
    size = coco.imgs[1]["height"]
    for ann_id, record in coco.anns.items():
        assert "segmentation" not in record and record["category_id"] == flat[ann_id]["category_id"]
        pairs = {"a_segm": "segmentation", "i_segm": "visible_mask", "a_bbox": "bbox", "i_bbox": "visible_bbox"}
        pairs |= {"a_area": "area", "i_area": "visible_area"}
        for kins_key, flat_key in pairs.items():
            assert record[kins_key] == flat[ann_id][flat_key], kins_key
        assert isinstance(record["i_segm"]["counts"], str)
        if OPTIONS[name].segmentation == "polygon":  # a COCO polygon list, as KINS files hold
            assert isinstance(record["a_segm"], list) and isinstance(record["a_segm"][0], list)
        assert decode(record["a_segm"], size).shape == (size, size)

    # oco_id / ico_id from the overlap graph of every instance (the hidden export has them all)
    everyone = flat_records(exports[f"coco-{OPTIONS[name].segmentation}-{OPTIONS[name].resolution}-hidden"])
    by_image: dict[int, list[dict[str, Any]]] = {}
    for record in everyone.values():
        by_image.setdefault(record["image_id"], []).append(record)
    expected: dict[int, tuple[int, int]] = {}
    for group in by_image.values():
        linked = {r["id"]: set(r["occluder_ids"]) for r in group}
        for r in group:
            for o in r["occluder_ids"]:
                linked[o].add(r["id"])
        seen: set[int] = set()
        clusters = []
        for start in sorted(group, key=lambda r: r["depth"]):  # clusters in order of their front-most member
            if start["id"] in seen or not linked[start["id"]]:
                continue
            cluster: set[int] = set()
            todo = [start["id"]]
            while todo:
                j = todo.pop()
                if j not in cluster:
                    cluster.add(j)
                    todo.extend(linked[j])
            seen |= cluster
            clusters.append(sorted(cluster, key=lambda j: everyone[j]["depth"]))
        expected |= {r["id"]: (0, 0) for r in group}
        for number, members in enumerate(clusters, start=1):
            expected |= {j: (number, rank) for rank, j in enumerate(members, start=1)}
    assert any(oco > 1 for oco, _ in expected.values()) and any(oco == 0 for oco, _ in expected.values())
    for ann_id, record in coco.anns.items():
        assert (record["oco_id"], record["ico_id"]) == expected[ann_id], ann_id


def aistron_segm_ok(segm: Any) -> bool:
    """What aistron's loader accepts as a valid mask: an RLE dict, or polygons of >= 3 points."""
    if isinstance(segm, dict):
        return isinstance(segm["counts"], str) and len(segm["size"]) == 2
    return bool(segm) and all(isinstance(p, list) and len(p) % 2 == 0 and len(p) >= 6 for p in segm)


@pytest.mark.parametrize("name", [n for n in OPTIONS if n.startswith("aistron")])
def test_aistron_export_loads_as_its_loader_reads_it_with_an_exact_occluder_mask(
    exports: dict[str, Path], name: str
) -> None:
    folder = exports[name]
    coco = COCO(str(folder / "annotations.json"))
    flat = flat_records(exports[name.replace("aistron", "coco", 1)])
    assert sorted(coco.anns) == sorted(flat)
    size = coco.imgs[1]["height"]
    per_image: dict[int, list[tuple[dict[str, Any], np.ndarray, np.ndarray]]] = {}
    for ann_id, record in coco.anns.items():
        # the keys its loader and mapper read unconditionally, every one a mask it accepts
        for key in ("amodal_segm", "visible_segm", "occluder_segm", "background_objs_segm"):
            assert aistron_segm_ok(record[key]), key
        assert record["occluder_segm"] == record["background_objs_segm"]
        assert len(record["amodal_bbox"]) == 4 and len(record["visible_bbox"]) == 4
        assert record["amodal_segm"] == record["segmentation"] == flat[ann_id]["segmentation"]
        assert record["visible_segm"] == flat[ann_id]["visible_mask"]
        assert record["occluded_segm"] == flat[ann_id]["invisible_mask"]
        assert (record["amodal_bbox"], record["amodal_area"]) == (flat[ann_id]["bbox"], flat[ann_id]["area"])
        amodal = coco.annToMask(record).astype(bool)  # stock pycocotools reads the amodal mask
        assert np.array_equal(amodal, decode(record["amodal_segm"], size))
        per_image.setdefault(record["image_id"], []).append((record, amodal, decode(record["visible_segm"], size)))
    occluded = 0
    for group in per_image.values():  # occluder = visible masks of overlapping instances in front, in the box
        for record, amodal, visible in group:
            expected = np.zeros_like(amodal)
            for other, other_amodal, other_visible in group:
                if other["depth"] < record["depth"] and (other_amodal & amodal).any():
                    expected |= other_visible
            box = np.zeros_like(amodal)
            if amodal.any():
                r, c = np.flatnonzero(amodal.any(axis=1)), np.flatnonzero(amodal.any(axis=0))
                box[r[0] : r[-1] + 1, c[0] : c[-1] + 1] = True
            occluder = decode(record["occluder_segm"], size)
            assert np.array_equal(occluder, expected & box), record["id"]
            assert np.array_equal(occluder & amodal, amodal & ~visible)  # inside the amodal mask: the invisible part
            occluded += bool(occluder.any())
    assert occluded


def test_kins_renamed_as_aistron_converts_it_gives_the_aistron_export(exports: dict[str, Path]) -> None:
    kins, aistron = flat_records(exports["kins-polygon-image"]), flat_records(exports["aistron-polygon-image"])
    renamed = {"a_segm": "amodal_segm", "a_bbox": "amodal_bbox", "i_segm": "visible_segm", "i_bbox": "visible_bbox"}
    for ann_id, record in kins.items():
        for kins_key, aistron_key in renamed.items():
            assert record[kins_key] == aistron[ann_id][aistron_key]
