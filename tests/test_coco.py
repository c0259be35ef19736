"""COCO exports: pycocotools round trips, polygon/RLE agreement, COCOA layout, layer PNGs, determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from conftest import damaged_copy, run_cli
from PIL import Image
from pycocotools.coco import COCO

from shapesgen import ConfigError, DatasetError, SceneConfig, coco
from shapesgen.coco import ExportConfig, decode_segmentation, export_coco, masks_at
from shapesgen.raster import layer_maps
from shapesgen.shards import render_sharded
from shapesgen.storage.reader import open_dataset


@pytest.fixture(scope="module")
def exports(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    variants = {
        "rle-mask": ExportConfig(segmentation="rle", resolution="mask"),
        "rle-image": ExportConfig(segmentation="rle", resolution="image"),
        "polygon-image": ExportConfig(segmentation="polygon", resolution="image"),
        "cocoa": ExportConfig(style="cocoa", resolution="mask"),
        "layers-mask": ExportConfig(style="kins", segmentation="polygon", resolution="mask", layers_png=True),
        "layers-image": ExportConfig(style="aistron", resolution="image", layers_png=True),
    }
    return {name: export_coco(tiny_dataset, root / name, cfg) for name, cfg in variants.items()}


def load(folder: Path) -> COCO:
    return COCO(str(folder / "annotations.json"))


def test_pycocotools_decodes_every_mask_to_the_hdf5_mask(exports: dict[str, Path], tiny_dataset: Path) -> None:
    coco = load(exports["rle-mask"])
    with open_dataset(tiny_dataset) as ds:
        assert sorted(coco.getImgIds()) == list(range(1, len(ds) + 1))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ds.class_names
        total = 0
        for scene in ds:
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[scene.index + 1]))
            visible_rows = np.flatnonzero(scene.instances["is_visible"])
            assert [a["instance_id"] for a in anns] == (visible_rows + 1).tolist()
            for ann, row in zip(anns, visible_rows, strict=True):
                assert np.array_equal(coco.annToMask(ann).astype(bool), scene.amodal_masks[row])
                visible = decode_segmentation(ann["visible_mask"], 32, 32)
                assert np.array_equal(visible, scene.visible_masks[row])
                invisible = decode_segmentation(ann["invisible_mask"], 32, 32)
                assert np.array_equal(invisible, scene.amodal_masks[row] & ~scene.visible_masks[row])
                assert ann["category_id"] == scene.instances["class_id"][row]
                assert ann["depth"] == scene.instances["depth"][row]
                total += 1
        assert total == int(ds.instances["is_visible"].sum())


def test_image_resolution_masks_match_the_geometry(exports: dict[str, Path], tiny_dataset: Path) -> None:
    coco = load(exports["rle-image"])
    with open_dataset(tiny_dataset) as ds:
        scene = ds[2]
        amodal, visible = masks_at(scene, "image", 64)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[3])):
            j = ann["instance_id"] - 1
            mask = coco.annToMask(ann).astype(bool)
            assert mask.shape == (64, 64) and np.array_equal(mask, amodal[j])
            assert abs(mask.sum() - ann["area"]) <= 0.15 * ann["area"] + 8  # pixel count vs exact area
            assert not np.any(visible[j] & ~amodal[j])


def test_polygon_and_rle_exports_agree_to_rasterisation_error(exports: dict[str, Path]) -> None:
    rle, poly = load(exports["rle-image"]), load(exports["polygon-image"])
    assert rle.getAnnIds() == poly.getAnnIds()
    for ann_id in rle.getAnnIds():
        a, b = rle.annToMask(rle.anns[ann_id]).astype(bool), poly.annToMask(poly.anns[ann_id]).astype(bool)
        assert isinstance(poly.anns[ann_id]["segmentation"], list)
        iou = (a & b).sum() / max((a | b).sum(), 1)
        assert iou > 0.85, (ann_id, iou)
        perimeter_band = np.abs(a.astype(int) - b.astype(int)).sum()
        assert perimeter_band <= 2 * (a.sum() ** 0.5) * 4 + 8


def test_cocoa_layout_follows_the_amodal_api(exports: dict[str, Path]) -> None:
    document = json.loads((exports["cocoa"] / "annotations.json").read_text())
    assert {"images", "annotations"} <= set(document)
    for ann in document["annotations"]:
        regions = ann["regions"]
        assert ann["size"] == len(regions) and ann["image_id"] == ann["id"]
        assert [r["order"] for r in regions] == list(range(1, len(regions) + 1))
        for region in regions:
            assert {"segmentation", "name", "area", "isStuff", "occlude_rate", "order", "visible_mask"} <= set(region)
            assert region["isStuff"] == 0 and 0 <= region["occlude_rate"] <= 1
        pairs = [tuple(int(v) for v in p.split("-")) for p in ann["depth_constraint"].split(",") if p]
        assert all(1 <= front < back <= len(regions) for front, back in pairs)
        assert isinstance(ann["depth_constraint"], str)


def test_occluders_are_in_front(exports: dict[str, Path]) -> None:
    coco = load(exports["rle-mask"])
    depth = {a["id"]: a["depth"] for a in coco.anns.values()}
    some = 0
    for ann in coco.anns.values():
        for other in ann["occluder_ids"]:
            some += 1
            if other in depth:
                assert depth[other] < ann["depth"]
        if ann["occlude_rate"] > 0:
            assert ann["occluder_ids"], "an occluded instance names its occluders"
    assert some > 0


def test_exports_are_deterministic_and_carry_provenance(tiny_dataset: Path, tmp_path: Path) -> None:
    a = export_coco(tiny_dataset, tmp_path / "a")
    b = export_coco(tiny_dataset, tmp_path / "b")
    assert (a / "SHA256SUMS").read_text() == (b / "SHA256SUMS").read_text()
    for line in (a / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256((a / name).read_bytes()).hexdigest() == digest
    info = json.loads((a / "annotations.json").read_text())["info"]
    with open_dataset(tiny_dataset) as ds:
        assert info["config"] == ds.config.to_dict() and info["seed"] == ds.seed
        assert info["source_checksums"] == ds.checksums
        assert info["shapesgen_version"] == ds.attrs["package_version"] and "date_created" not in info
    card = (a / "README.md").read_text()
    assert 'shapesgen render --config "$EXPORT/config.json" --num 12' in card and "## SHA-256 manifest" in card
    assert tiny_dataset.name not in card + json.dumps(info)  # no file name: a rebuild elsewhere is identical


def test_export_is_atomic_and_needs_force(tiny_dataset: Path, tmp_path: Path) -> None:
    out = export_coco(tiny_dataset, tmp_path / "e")
    with pytest.raises(DatasetError, match="force=True"):
        export_coco(tiny_dataset, out)
    export_coco(tiny_dataset, out, ExportConfig(resolution="mask"), force=True)
    assert json.loads((out / "annotations.json").read_text())["images"][0]["height"] == 32
    assert not (tmp_path / "e.partial").exists() and not (tmp_path / "e.old").exists()

    def boom(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_coco(tiny_dataset, tmp_path / "cut", progress=boom)
    assert not (tmp_path / "cut").exists() and not (tmp_path / "cut.partial").exists()


def read_layers(folder: Path, scene: int, layers: int) -> np.ndarray:
    pngs = [Image.open(folder / "layers" / f"{scene:06d}_L{k}.png") for k in range(1, layers + 1)]
    assert all(png.format == "PNG" and png.mode == "I;16" for png in pngs)  # 16-bit grey
    return np.stack([np.asarray(png) for png in pngs])


def test_layer_pngs_at_mask_resolution_are_the_hdf5_layer_maps(exports: dict[str, Path], tiny_dataset: Path) -> None:
    folder = exports["layers-mask"]  # polygon masks: the maps still follow the pixel-centre (HDF5) rule
    listed = {line.split("  ")[1] for line in (folder / "SHA256SUMS").read_text().splitlines()}
    with open_dataset(tiny_dataset) as ds:
        layers = ds.config.layers
        assert sorted(p.name for p in (folder / "layers").iterdir()) == sorted(
            f"{s:06d}_L{k}.png" for s in range(len(ds)) for k in range(1, layers + 1)
        )
        for scene in ds:
            assert np.array_equal(read_layers(folder, scene.index, layers), scene.layers)
            assert {f"layers/{scene.index:06d}_L{k}.png" for k in range(1, layers + 1)} <= listed
    assert "`layers/NNNNNN_Lk.png`" in (folder / "README.md").read_text()
    assert "--layers-png" in (folder / "README.md").read_text()  # the rebuild command asks for them


def test_layer_pngs_at_image_resolution_follow_the_rle_masks(exports: dict[str, Path], tiny_dataset: Path) -> None:
    folder = exports["layers-image"]
    coco = load(folder)
    with open_dataset(tiny_dataset) as ds:
        for scene in ds:
            maps = read_layers(folder, scene.index, ds.config.layers)
            amodal, _ = masks_at(scene, "image", 64)
            assert maps.shape == (ds.config.layers, 64, 64)
            assert np.array_equal(maps, layer_maps(amodal, scene.instances["depth"], ds.config.layers))
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=[scene.index + 1])):
                visible = decode_segmentation(ann["visible_segm"], 64, 64)
                assert np.array_equal(maps[0] == ann["instance_id"], visible)


def test_an_export_with_layers_is_replaced_and_its_options_are_checked(tiny_dataset: Path, tmp_path: Path) -> None:
    out = export_coco(tiny_dataset, tmp_path / "e", ExportConfig(layers_png=True))
    export_coco(tiny_dataset, out, ExportConfig(style="kins"), force=True)  # a layers/ folder is the export's own
    assert not (out / "layers").exists()
    for bad in ({"style": "kitti"}, {"layers_png": "yes"}, {"include_hidden": 1}):
        with pytest.raises(ConfigError, match=f"{next(iter(bad))}="):
            ExportConfig(**bad)  # type: ignore[arg-type]
    result = run_cli("export", "coco", tiny_dataset, "--out", tmp_path / "cli", "--style", "aistron", "--layers-png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli" / "layers" / "000011_L3.png").is_file()
    result = run_cli("export", "coco", tiny_dataset, "--out", tmp_path / "bad", "--style", "kitti")
    assert result.exit_code == 2 and "Traceback" not in result.stderr and not (tmp_path / "bad").exists()


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_parallel_and_sharded_exports_are_byte_identical(
    tiny_dataset: Path, tiny_config: SceneConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file (annotations.json, images, layer PNGs, card, sums) is the same for 1 or 2
    worker processes, tasks of any size, and a single-file or sharded source of the same scenes."""
    import shapesgen.coco
    from shapesgen.shards import render_sharded

    export = ExportConfig(style="kins", resolution="mask", layers_png=True)
    serial = files_of(export_coco(tiny_dataset, tmp_path / "serial", export))
    document = json.loads(serial["annotations.json"])
    assert serial["annotations.json"] == (json.dumps(document, separators=(",", ":")) + "\n").encode()
    assert [a["id"] for a in document["annotations"]] == sorted(a["id"] for a in document["annotations"])
    monkeypatch.setattr(shapesgen.coco, "PART_SCENES", 5)  # uneven tasks: 5, 5 and 2 scenes
    seen: list[int] = []
    parallel = export_coco(tiny_dataset, tmp_path / "parallel", export, workers=2, progress=lambda n, t: seen.append(n))
    assert files_of(parallel) == serial and seen[-1] == 12 and seen == sorted(seen)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    sharded = render_sharded(tiny_config, tmp_path / "ds", num_scenes=12, shard_size=5)
    for workers in (1, 2):
        out = export_coco(sharded, tmp_path / f"sharded-{workers}", export, workers=workers)
        assert files_of(out) == serial, workers
    assert not any(p.name.endswith(".partial") or p.name == ".parts" for p in tmp_path.rglob("*"))


def test_export_engine_options_are_checked(tiny_dataset: Path, tmp_path: Path) -> None:
    for kwargs, match in (
        ({"workers": 0}, "workers=0 is invalid"),
        ({"engine": "spark"}, "engine='spark' is invalid"),
        ({"scheduler": "tcp://x:1"}, "needs engine='dask'"),
    ):
        with pytest.raises(ConfigError, match=match):
            export_coco(tiny_dataset, tmp_path / "x", **kwargs)  # type: ignore[arg-type]
    result = run_cli("export", "coco", tiny_dataset, "--out", tmp_path / "x", "--scheduler", "tcp://x:1")
    assert result.exit_code == 2 and "--scheduler" in result.stderr and "--engine" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    result = run_cli("export", "coco", tiny_dataset, "--out", tmp_path / "y", "--workers", 2, "-q")
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_export_refuses_a_source_whose_data_no_longer_matches_its_checksums(
    tiny_dataset: Path, tmp_path: Path, workers: int
) -> None:
    with h5py.File(tiny_dataset, "r") as f:
        row = int(f["instance_offsets"][7])  # scene 7's first instance: decodable, but not what was written
    damaged = damaged_copy(tiny_dataset, tmp_path / "damaged.h5", "visible_masks", row)
    out = tmp_path / "export"
    result = run_cli("export", "coco", damaged, "--out", out, "--workers", workers)
    assert result.exit_code == 2, result.output
    assert "visible_masks does not match the checksum" in result.stderr and "shapesgen validate" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.h5"]


def test_export_of_a_sharded_source_checks_its_checksums(tiny_config: SceneConfig, tmp_path: Path) -> None:
    folder = render_sharded(tiny_config, tmp_path / "big", num_scenes=8, shard_size=3)
    export_coco(folder / "dataset.h5", tmp_path / "good")
    with h5py.File(folder / "shard-00001.h5", "a") as f:
        f["vertices"][0] += 1.0
    with pytest.raises(DatasetError, match="vertices does not match the checksum"):
        export_coco(folder / "dataset.h5", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_export_into_an_existing_empty_folder_needs_no_force(tiny_dataset: Path, tmp_path: Path) -> None:
    for name, force in (("plain", []), ("forced", ["--force"])):
        (tmp_path / name).mkdir(mode=0o750)
        inode = (tmp_path / name).stat().st_ino
        result = run_cli("export", "coco", tiny_dataset, "--out", tmp_path / name, *force)
        assert result.exit_code == 0, result.output
        assert (tmp_path / name / "annotations.json").is_file() and coco.is_export_folder(tmp_path / name)
        assert (tmp_path / name).stat().st_ino == inode  # the folder itself kept (its owner, mode, a mount)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forced", "plain"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    result = run_cli("export", "coco", tiny_dataset, "--out", tmp_path / "mine", "--force")
    assert result.exit_code == 2 and "not a shapesgen export" in result.stderr
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_export_chains_parts_in_scene_order_whatever_order_they_finish(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts that finish last-first still hash to the source's checksums (and write the
    same files as parts that finish in order)."""
    in_order = export_coco(tiny_dataset, tmp_path / "in_order", workers=2)

    def reversed_here(tasks: list[Any], accept: Any, progress: Any) -> None:
        assert len(tasks) > 1
        for task in reversed(tasks):
            accept(task, task.function(*task.args, report=lambda done: None))

    monkeypatch.setattr(
        coco, "run_in_pool", lambda tasks, accept, progress, workers, what: reversed_here(tasks, accept, progress)
    )
    reverse = export_coco(tiny_dataset, tmp_path / "reversed", workers=2)
    assert (reverse / "SHA256SUMS").read_text() == (in_order / "SHA256SUMS").read_text()
