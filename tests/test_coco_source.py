"""COCO-amodal exports as training input: the batches of an export equal those of its HDF5 source."""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amodal_model import batching
from amodal_model.coco_source import coco_batches, decode_rles, is_coco_export, open_coco_export, sample_masks
from shapesgen import SceneConfig
from shapesgen.build import render_dataset
from shapesgen.coco import ExportConfig, decode_segmentation, encode_rle, export_coco, layer_file_name
from shapesgen.errors import DatasetError, ShapesgenNote
from shapesgen.raster import layer_maps, rasterize_convex
from shapesgen.storage.reader import open_dataset

data = pytest.importorskip("amodal_model.data", reason="the HDF5 batches to compare with need TensorFlow")

ODD = SceneConfig(image_size=48, mask_size=16, instances_per_class=6, layers=3, seed=7)  # 3 px per mask px
SAME = SceneConfig(image_size=32, mask_size=32, instances_per_class=2, layers=2, seed=3)  # 1 px per mask px
EVEN = SceneConfig(image_size=64, mask_size=32, instances_per_class=3, layers=3, seed=11)  # 2 px per mask px
CONFIGS = {"odd": ODD, "same": SAME, "even": EVEN}
SCENES = 10
KEYS = ("image", "layers", "class_layers", "instance_classes", "index")
Exporter = Callable[..., Path]


@pytest.fixture(scope="session")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("coco_source")
    paths = {name: folder / f"{name}.h5" for name in CONFIGS}
    for name, config in CONFIGS.items():
        render_dataset(config, paths[name], num_scenes=SCENES)
    return paths


@pytest.fixture(scope="session")
def exported(sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Exporter:
    """``exported(name, **options)``: the export of dataset ``name`` with those options (made once)."""
    folder = tmp_path_factory.mktemp("exports")
    made: dict[tuple[str, tuple[tuple[str, Any], ...]], Path] = {}

    def export(name: str, **options: Any) -> Path:
        key = (name, tuple(sorted(options.items())))
        if key not in made:
            made[key] = export_coco(sources[name], folder / f"e{len(made)}", ExportConfig(**options))
        return made[key]

    return export


def stacked(batches: Any) -> dict[str, np.ndarray]:
    batches = list(batches)
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


def same_batches(ours: list[dict[str, np.ndarray]], theirs: list[dict[str, np.ndarray]]) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert sorted(a) == sorted(KEYS)
        for key in KEYS:
            assert a[key].dtype == b[key].dtype, key
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def quietly_open(path: Path) -> tuple[SceneConfig, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShapesgenNote)  # exact exports give no note
        return open_coco_export(path, "train_source")


EXACT = [
    ("odd", dict(include_hidden=True)),
    ("odd", dict(segmentation="polygon", include_hidden=True)),
    ("odd", dict(style="cocoa", include_hidden=True)),
    ("odd", dict(style="cocoa", segmentation="polygon", include_hidden=True)),
    ("odd", dict(style="kins", include_hidden=True)),
    ("odd", dict(style="aistron", segmentation="polygon", include_hidden=True)),
    ("odd", dict(layers_png=True)),  # hidden instances come from the layer PNGs
    ("odd", dict(style="cocoa", segmentation="polygon", layers_png=True)),
    ("same", dict(resolution="mask", layers_png=True)),
    ("same", dict(style="cocoa", resolution="mask", include_hidden=True)),
    ("same", dict(style="kins", segmentation="polygon", include_hidden=True)),
    ("even", dict(segmentation="polygon", include_hidden=True)),  # polygons are re-sampled at mask size
    ("even", dict(style="cocoa", segmentation="polygon", include_hidden=True)),
]


@pytest.mark.parametrize(("name", "options"), EXACT, ids=[f"{n}-{o}" for n, o in EXACT])
def test_an_export_gives_the_batches_of_its_source(
    name: str, options: dict[str, Any], sources: dict[str, Path], exported: Exporter
) -> None:
    export = exported(name, **options)
    assert quietly_open(export) == (CONFIGS[name], SCENES)
    for seed, epoch, shuffle in ((1, 0, True), (1, 3, True), (0, 0, False)):
        ours = list(coco_batches(export, 4, seed, epoch, shuffle))
        same_batches(ours, list(data.hdf5_batches(sources[name], 4, seed, epoch, shuffle)))
    assert [len(b["index"]) for b in ours] == [4, 4, 2]


def test_blocks_shuffle_as_the_hdf5_reader_does(
    sources: dict[str, Path], exported: Exporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batching, "BLOCK", 3)  # one shuffling code for both readers
    export = exported("odd", include_hidden=True)
    for batch_size, limit in ((4, None), (3, 7), (16, None)):
        ours = list(coco_batches(export, batch_size, 5, 2, True, limit))
        same_batches(ours, list(data.hdf5_batches(sources["odd"], batch_size, 5, 2, True, limit)))
    assert sorted(stacked(coco_batches(export, 4, 5, 2, True, 7))["index"].tolist()) == list(range(7))


def test_the_annotations_file_itself_is_an_export(sources: dict[str, Path], exported: Exporter) -> None:
    export = exported("odd", include_hidden=True)
    assert is_coco_export(export) and is_coco_export(export / "annotations.json")
    assert is_coco_export(export / "images") and not is_coco_export(sources["odd"])  # a folder is never HDF5
    same_batches(
        list(coco_batches(export / "annotations.json", 5, 0, 0, False)),
        list(data.hdf5_batches(sources["odd"], 5, 0, 0, False)),
    )


def layers_of_exported(h5: Path, export: Path) -> np.ndarray:
    """The source's layer maps rebuilt from the instances the export holds (those with a
    visible pixel at image size)."""
    exported = np.zeros((SCENES, ODD.num_instances), dtype=bool)
    for annotation in json.loads((export / "annotations.json").read_text())["annotations"]:
        exported[annotation["image_id"] - 1, annotation["instance_id"] - 1] = True
    maps = []
    with open_dataset(h5) as ds:
        for scene in ds:
            amodal = scene.amodal_masks & exported[scene.index][:, None, None]
            maps.append(layer_maps(amodal, scene.instances["depth"].astype(np.int64), ds.config.layers))
    return np.stack(maps).astype(np.int32)


def test_without_hidden_instances_deeper_layers_show_what_is_behind(
    sources: dict[str, Path], exported: Exporter
) -> None:
    export = exported("odd")
    with pytest.warns(ShapesgenNote, match="include_hidden=False"):
        assert open_coco_export(export, "train_source") == (ODD, SCENES)
    ours = stacked(coco_batches(export, 4, 0, 0, False))
    theirs = stacked(data.hdf5_batches(sources["odd"], 4, 0, 0, False))
    for key in ("image", "instance_classes", "index"):
        np.testing.assert_array_equal(ours[key], theirs[key])
    np.testing.assert_array_equal(ours["layers"], layers_of_exported(sources["odd"], export))
    np.testing.assert_array_equal(ours["layers"][:, 0], theirs["layers"][:, 0])  # the visible layer is exact
    assert (ours["layers"] != theirs["layers"]).any()  # the data has hidden instances


def test_even_scale_rle_targets_differ_only_on_boundaries(sources: dict[str, Path], exported: Exporter) -> None:
    export = exported("even", include_hidden=True, layers_png=True)  # PNGs at an even scale are not used
    with pytest.warns(ShapesgenNote, match="boundary pixels are estimated"):
        open_coco_export(export, "train_source")
    ours = stacked(coco_batches(export, 4, 0, 0, False))
    theirs = stacked(data.hdf5_batches(sources["even"], 4, 0, 0, False))
    for key in ("image", "instance_classes", "index"):
        np.testing.assert_array_equal(ours[key], theirs[key])
    truth = theirs["layers"]
    wrong = ours["layers"] != truth
    assert 0 < wrong.sum() <= 0.1 * (truth > 0).sum()  # small shapes: many boundary pixels
    padded = np.pad(truth, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    m = truth.shape[-1]
    varies = np.zeros_like(wrong)
    for dy in range(3):
        for dx in range(3):
            varies |= padded[:, :, dy : dy + m, dx : dx + m] != truth
    assert not (wrong & ~varies.any(axis=1, keepdims=True)).any()  # every difference is next to an edge


def test_a_mask_resolution_export_with_smaller_images_is_refused(exported: Exporter) -> None:
    export = exported("odd", resolution="mask", include_hidden=True)
    with pytest.raises(
        DatasetError, match=r"mask resolution \(`export coco --resolution mask`\) .* `--resolution image`"
    ) as info:
        open_coco_export(export, "train_source")
    assert info.value.param == "train_source"
    assert str(info.value).startswith(f"train_source={str(export)!r}: images[0] is 16x16 px")


def edited(export: Path, tmp_path: Path, change: Callable[[dict[str, Any]], Any]) -> Path:
    """A copy of ``export`` whose annotations.json ``change`` edited in place, without its
    SHA256SUMS (which refuses edited files: a test of its own)."""
    copy = tmp_path / "copy"
    shutil.copytree(export, copy)
    (copy / "SHA256SUMS").unlink()
    document = json.loads((copy / "annotations.json").read_text())
    change(document)
    (copy / "annotations.json").write_text(json.dumps(document))
    return copy


def drop_key(key: str) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        for annotation in document["annotations"]:
            for record in annotation.get("regions", [annotation]):
                record.pop(key, None)

    change.__name__ = f"drop_{key}"
    return change


def no_config(document: dict[str, Any]) -> None:
    del document["info"]["config"]


def wrong_class(document: dict[str, Any]) -> None:
    document["annotations"][0]["category_id"] = document["annotations"][0]["category_id"] % 4 + 1


def foreign_instance(document: dict[str, Any]) -> None:
    document["annotations"][0]["instance_id"] = 99


def unknown_image(document: dict[str, Any]) -> None:
    document["annotations"][0]["image_id"] = 500


def repeated_image(document: dict[str, Any]) -> None:
    document["images"].append(document["images"][0])


def escaping_file(document: dict[str, Any]) -> None:
    document["images"][0]["file_name"] = "../elsewhere.png"


def not_coco(document: dict[str, Any]) -> None:
    document.pop("images")


FILE_ERRORS = [
    ("cocoa", drop_key("order"), r"regions\[\d+\]: no depth order \('depth', or the COCOA 'order'\)"),
    ("coco", drop_key("depth"), r"annotations\[0\]: no depth order"),
    ("coco", no_config, r"records no generator config \(info.config in annotations.json, or config.json"),
    ("coco", wrong_class, r"annotations\[0\]: category_id \d is not \d.*the export is not of this config"),
    ("coco", foreign_instance, r"annotations\[0\]: instance id 99 is not in 1..18"),
    ("coco", unknown_image, r"annotations\[0\]: image_id 500 is not an image id"),
    ("coco", repeated_image, r"images\[10\]: id 1 repeats an earlier image's"),
    ("coco", escaping_file, r"images\[0\]: file_name '../elsewhere.png' must be a path inside the export folder"),
    ("coco", not_coco, r"annotations.json is not a COCO file"),
    ("kins", drop_key("a_segm"), r"annotations\[0\]: no amodal mask"),
]


@pytest.mark.parametrize(("style", "change", "message"), FILE_ERRORS, ids=[e[1].__name__ for e in FILE_ERRORS])
def test_an_unusable_export_is_refused_in_one_line(
    style: str, change: Callable[[dict[str, Any]], Any], message: str, exported: Exporter, tmp_path: Path
) -> None:
    export = exported("odd", style=style, include_hidden=True)
    copy = edited(export, tmp_path, change)
    if change is no_config:
        (copy / "config.json").unlink()
    with pytest.raises(DatasetError, match=message) as info:
        open_coco_export(copy, "train_source")
    text = str(info.value)
    assert text.startswith(f"train_source={str(copy)!r}: ") and "\n" not in text and len(text) < 300
    assert info.value.param == "train_source"


def test_files_that_are_missing_or_not_an_export_are_refused(exported: Exporter, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="a folder without annotations.json: not a COCO export"):
        open_coco_export(tmp_path, "val")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"bad.json is not readable JSON \(Expecting"):
        open_coco_export(tmp_path / "bad.json", "val")
    copy = edited(exported("odd", include_hidden=True), tmp_path, lambda document: None)
    (copy / "config.json").write_text(json.dumps(ODD.replace(seed=8).to_dict()))
    with pytest.raises(DatasetError, match="info.config in annotations.json differs from config.json"):
        open_coco_export(copy, "val")
    (copy / "config.json").unlink()
    (copy / "images" / "000004.png").unlink()
    with pytest.raises(DatasetError, match=r"images\[4\]: image 'images/000004.png' is missing") as info:
        open_coco_export(copy, "val")
    assert info.value.param == "val"
    (copy / "images" / "000004.png").mkdir()
    with pytest.raises(DatasetError, match=r"image 'images/000004.png' is not a file \(a folder"):
        open_coco_export(copy, "val")


def test_damaged_pixels_are_refused_when_read(exported: Exporter, tmp_path: Path) -> None:
    def truncated_counts(document: dict[str, Any]) -> None:
        document["annotations"][3]["segmentation"]["counts"] += "a"  # a group that says more follow

    copy = edited(exported("odd", include_hidden=True), tmp_path / "counts", truncated_counts)
    with pytest.raises(DatasetError, match=r"scene 0: annotations\[3\]: segmentation counts end in the middle"):
        list(coco_batches(copy, 4, 0, 0, False))
    copy = edited(exported("odd", include_hidden=True), tmp_path / "image", lambda document: None)
    image = copy / "images" / "000002.png"
    image.write_bytes(image.read_bytes()[:60])
    with pytest.raises(DatasetError, match=r"scene 2: image 000002.png cannot be decoded") as info:
        list(coco_batches(copy, 4, 0, 0, False, param="val"))
    assert str(info.value).startswith(f"val={str(copy)!r}: ") and info.value.param == "val"
    copy = edited(exported("odd", layers_png=True), tmp_path / "pngs", lambda document: None)
    (copy / layer_file_name(7, 2)).unlink()
    with pytest.raises(DatasetError, match=r"scene 7: layer PNG 000007_L2.png is missing"):
        list(coco_batches(copy, 4, 0, 0, False))


def test_files_changed_after_the_export_are_refused_by_its_sha256sums(exported: Exporter, tmp_path: Path) -> None:
    """A valid PNG with one pixel changed, a layer PNG with a byte added, or an edited
    annotations.json is refused by training and evaluation while SHA256SUMS lists the file;
    without SHA256SUMS the files are read as they are."""
    from PIL import Image

    from shapesgen.evaluate import load_ground_truth

    export = exported("odd", layers_png=True)
    scenes = open_coco_export(export, "val")[1]
    copies = {}
    for name in ("image", "layer", "annotations"):
        copies[name] = tmp_path / name
        shutil.copytree(export, copies[name])
    image = copies["image"] / "images" / "000002.png"
    pixels = np.array(Image.open(image))
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(image)
    layer = copies["layer"] / layer_file_name(5, 1)
    layer.write_bytes(layer.read_bytes() + b"\0")
    annotations = copies["annotations"] / "annotations.json"
    annotations.write_bytes(annotations.read_bytes() + b"\n")  # still the same JSON document
    with pytest.raises(DatasetError, match=r"scene 2: images/000002.png does not match its digest in SHA256SUMS"):
        list(coco_batches(copies["image"], 4, 0, 0, False))
    with pytest.raises(DatasetError, match=rf"scene 5: {layer_file_name(5, 1)} does not match its digest"):
        list(coco_batches(copies["layer"], 4, 0, 0, False))
    for read in (lambda: open_coco_export(copies["annotations"], "val"), lambda: load_ground_truth(annotations)):
        with pytest.raises(DatasetError, match="annotations.json does not match its digest in SHA256SUMS"):
            read()
    for copy in copies.values():
        (copy / "SHA256SUMS").unlink()
    assert open_coco_export(copies["annotations"], "val")[1] == scenes
    assert len(load_ground_truth(annotations).images) == scenes
    assert stacked(coco_batches(copies["image"], 4, 0, 0, False))["image"][2][0, 0, 0] == pixels[0, 0]


@st.composite
def convex_rings(draw: st.DrawFn, size: int) -> np.ndarray:
    """A few random convex polygons ``(k, V, 2)`` in a ``size`` px frame (continuous coordinates)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rings = []
    for _ in range(draw(st.integers(1, 4))):
        centre, radius = rng.uniform(-0.1, 1.1, 2) * size, rng.uniform(0.02, 0.5) * size
        angles = np.sort(rng.uniform(0, 2 * np.pi, draw(st.integers(3, 8))))
        stretch = rng.uniform(0.2, 1.0)
        rings.append(centre + radius * np.stack([np.cos(angles), stretch * np.sin(angles)], axis=1))
    longest = max(len(r) for r in rings)
    return np.stack([np.concatenate([r, np.repeat(r[-1:], longest - len(r), axis=0)]) for r in rings])


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([1, 2, 3, 4, 5]), st.data())
def test_sampling_image_masks_at_mask_size(scale: int, draws: st.DataObject) -> None:
    """Odd scales sample exactly; at even ones every corner that three (or two diagonal)
    image pixels of a convex shape surround is inside, in truth and in the sample."""
    size = 12 * scale
    rings = draws.draw(convex_rings(size))
    fine = rasterize_convex(rings, size, 1.0)
    truth = rasterize_convex(rings, size // scale, float(scale))
    sampled = sample_masks(fine, scale)
    if scale % 2:
        np.testing.assert_array_equal(sampled, truth)
        return
    half = scale // 2
    corners = np.stack([fine[:, half - 1 + dy :: scale, half - 1 + dx :: scale] for dy in (0, 1) for dx in (0, 1)])
    count = corners.sum(axis=0)
    sure = (count >= 3) | (corners[0] & corners[3]) | (corners[1] & corners[2])
    assert truth[sure].all() and sampled[sure].all()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 5), st.integers(1, 40))
def test_decoding_many_rles_at_once_equals_pycocotools(seed: int, count: int, size: int) -> None:
    rng = np.random.default_rng(seed)
    masks = rng.random((count, size, size)) < rng.random((count, 1, 1))
    rles = encode_rle(masks)
    rles[0] = {**rles[0], "counts": rles[0]["counts"].encode()}  # bytes, as pycocotools gives them
    if count > 1:  # an uncompressed RLE among them goes the checked scalar way
        flat = masks[1].T.ravel()
        changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
        runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
        rles[1] = {"size": [size, size], "counts": ([0] if flat[0] else []) + runs}
    decoded = decode_rles(rles, size, [f"r{k}" for k in range(count)])
    np.testing.assert_array_equal(decoded, masks)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="0123456789:;<=>?@ABOPQ\\^_`aeno p", max_size=12), min_size=1, max_size=4))
def test_decoding_refuses_exactly_what_the_scalar_decoder_refuses(counts: list[str]) -> None:
    size = 3
    rles = [{"size": [size, size], "counts": text} for text in counts]
    expected: list[np.ndarray] = []
    first_bad = None
    for k, rle in enumerate(rles):
        try:
            expected.append(decode_segmentation(rle, size, size))
        except DatasetError:
            first_bad = k
            break
    if first_bad is None:
        np.testing.assert_array_equal(decode_rles(rles, size, [f"r{k}" for k in range(len(rles))]), np.stack(expected))
    else:
        with pytest.raises(DatasetError, match=r"^r\d: segmentation counts"):
            decode_rles(rles, size, [f"r{k}" for k in range(len(rles))])
