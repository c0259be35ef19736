"""Named datasets and splits: registered configs and checksums, split seeds, their record in
files and exports, licences, dataset versions, Croissant metadata and the card's YAML header."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import shlex
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import mlcroissant as mlc
import numpy as np
import pytest
import yaml
from conftest import run_cli
from hypothesis import given
from hypothesis import strategies as st

import shapesgen.datasets
from shapesgen import SceneConfig, StorageConfig, render_scene
from shapesgen.build import RenderInterrupted, render_dataset
from shapesgen.coco import ExportConfig, _card_title, export_coco
from shapesgen.config import MAX_SEED
from shapesgen.datasets import (
    REGISTRY,
    ChecksumMismatchError,
    build_split,
    content_digest,
    dataset_spec,
    parse_reference,
)
from shapesgen.errors import ConfigError, DatasetError
from shapesgen.metadata import LICENSES, size_category
from shapesgen.splits import Split, split_seed
from shapesgen.storage.reader import open_dataset

SMALL = SceneConfig(image_size=64, mask_size=32, instances_per_class=2, layers=2, seed=5)


def digest_of(path: Path) -> str:
    with open_dataset(path) as ds:
        return content_digest(ds.checksums)


def stop_after(scenes: int) -> Any:
    def progress(done: int, total: int) -> None:
        if done >= scenes:
            raise KeyboardInterrupt

    return progress


# Split seeds ---------------------------------------------------------------------------------------------


def test_split_seeds_are_pinned() -> None:
    """The derivation is part of every registered dataset: changing it changes their bytes."""
    assert split_seed(1, "test") == 7589931968749537738
    expected = int.from_bytes(hashlib.sha256(b"shapesgen-split/6/train").digest()[:8], "big") >> 1
    assert split_seed(6, "train") == expected


@given(
    st.integers(0, MAX_SEED),
    st.integers(0, MAX_SEED),
    st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
    st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
)
def test_different_splits_get_different_seeds_in_range(a: int, b: int, name_a: str, name_b: str) -> None:
    seed = split_seed(a, name_a)
    assert 0 <= seed <= MAX_SEED
    if (a, name_a) != (b, name_b):
        assert seed != split_seed(b, name_b)


@pytest.mark.parametrize("name", ["", "Train", "1st", "tr-ain", "a" * 33, "val.x", 3])
def test_bad_split_names_are_refused(name: Any) -> None:
    with pytest.raises(ConfigError, match="split=.* is invalid"):
        Split(name=name)


def test_a_recorded_split_must_carry_its_own_seed() -> None:
    split = Split(name="val", base_seed=9)
    assert Split.from_dict(split.to_dict()) == split
    with pytest.raises(ConfigError, match="is not the seed of split 'val'"):
        Split.from_dict({**split.to_dict(), "seed": 3})
    with pytest.raises(ConfigError, match="together"):
        Split(name="val", dataset="paper-6")


# Splits in HDF5 files ---------------------------------------------------------------------------------


def test_a_split_is_the_config_with_the_split_seed_and_is_recorded(tmp_path: Path) -> None:
    path = render_dataset(SMALL, tmp_path / "val.h5", num_scenes=3, split="val")
    with open_dataset(path) as ds:
        assert ds.split == Split(name="val", base_seed=5)
        assert ds.config == SMALL.replace(seed=split_seed(5, "val")) and ds.seed == split_seed(5, "val")
        for index in range(3):
            assert np.array_equal(ds[index].image, render_scene(ds.config, index).image)
        assert json.loads(ds.file.attrs["split"])["seed"] == ds.seed
    base = render_dataset(SMALL, tmp_path / "base.h5", num_scenes=3)
    test = render_dataset(SMALL, tmp_path / "test.h5", num_scenes=3, split="test")
    with open_dataset(base) as ds:
        assert ds.split is None and ds.file.attrs["split"] == "null"
    shown = json.loads(run_cli("info", path, "--json").stdout)["split"]
    assert shown == {"name": "val", "base_seed": 5, "seed": split_seed(5, "val"), "dataset": None, "version": None}
    images = {}
    for name, file in (("val", path), ("base", base), ("test", test)):
        with h5py.File(file, "r") as f:
            images[name] = f["images"][()]
    for one, other in (("val", "base"), ("val", "test"), ("base", "test")):  # no scene is shared
        assert not any(np.array_equal(a, b) for a in images[one] for b in images[other])


def test_files_without_a_split_attribute_still_read() -> None:
    with open_dataset(Path(__file__).parent / "golden" / "tiny.h5") as ds:
        assert ds.split is None


def test_a_split_record_that_contradicts_the_config_is_corrupt(tmp_path: Path) -> None:
    path = render_dataset(SMALL, tmp_path / "val.h5", num_scenes=2, split="val")
    with h5py.File(path, "a") as f:
        f.attrs["split"] = Split(name="test", base_seed=5).to_json()
    with pytest.raises(DatasetError, match="attribute split has seed"):
        open_dataset(path)
    with h5py.File(path, "a") as f:
        f.attrs["split"] = '{"name": "val"}'
    with pytest.raises(DatasetError, match="attribute split is invalid"):
        open_dataset(path)


def test_a_split_render_resumes_to_the_same_data_and_keeps_its_split(tmp_path: Path) -> None:
    unseeded = SMALL.replace(seed=None)
    out = tmp_path / "cut.h5"
    with pytest.raises(RenderInterrupted):
        render_dataset(unseeded, out, num_scenes=4, split="train", progress=stop_after(1))
    with pytest.raises(ConfigError, match="was started as split 'train'.*not split 'val'"):
        render_dataset(unseeded, out, num_scenes=4, split="val", resume=True)
    with pytest.raises(ConfigError, match="not no split"):
        render_dataset(unseeded, out, num_scenes=4, resume=True)
    render_dataset(unseeded, out, num_scenes=4, split="train", resume=True)  # the drawn base seed is the file's
    with open_dataset(out) as ds:
        drawn = ds.split
        assert drawn is not None and drawn.name == "train" and ds.seed == split_seed(drawn.base_seed or 0, "train")
    assert render_dataset(unseeded, out, num_scenes=4, split="train", resume=True) == out  # complete already
    whole = render_dataset(SMALL.replace(seed=drawn.base_seed), tmp_path / "whole.h5", num_scenes=4, split="train")
    assert digest_of(whole) == digest_of(out)


# The registry ------------------------------------------------------------------------------------------------


def test_the_registry_is_well_formed_and_its_splits_are_disjoint() -> None:
    seeds = []
    for spec in REGISTRY:
        assert re.fullmatch(r"\d+\.\d+\.\d+", spec.version) and spec.config.seed is not None
        assert {split.name for split in spec.splits} == {"train", "val", "test"}
        for split in spec.splits:
            assert re.fullmatch(r"[0-9a-f]{64}", split.digest)
            seeds.append(spec.split_of(split.name).seed)
    assert len(set(seeds)) == len(seeds)
    names = [(spec.name, spec.version) for spec in REGISTRY]
    assert len(set(names)) == len(names)
    paper6 = dataset_spec("paper-6")
    assert paper6.config.instances_per_class == 6 and paper6.config.layers == 2
    assert paper6.split("test").num_scenes == 1000 and dataset_spec("paper-12").split("test").num_scenes == 1000


@pytest.mark.parametrize(
    ("reference", "needle"),
    [
        ("paper-6", "give NAME\\[:VERSION\\]/SPLIT"),
        ("paper-6:1.0.0/", "give NAME"),
        ("paper-7/test", "registered datasets are paper-6, paper-12, tiny"),
        ("paper-6:9.9.9/test", "paper-6 has version\\(s\\) 1.0.0"),
        ("paper-6:1.0.0/dev", "splits are train, val, test"),
    ],
)
def test_bad_references_are_one_clear_error(reference: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_reference(reference)


def test_references_name_a_version_or_the_latest() -> None:
    assert parse_reference("tiny/val") == parse_reference("tiny:1.0.0/val")
    spec, split = parse_reference("paper-12:1.0.0/train")
    assert (spec.name, spec.version, split.name, split.num_scenes) == ("paper-12", "1.0.0", "train", 10_000)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_the_tiny_dataset_reproduces_its_registered_checksums(tmp_path: Path, split: str) -> None:
    path = build_split(f"tiny:1.0.0/{split}", tmp_path / f"{split}.h5")
    with open_dataset(path) as ds:
        assert ds.split == Split(name=split, base_seed=1, dataset="tiny", version="1.0.0")
        assert content_digest(ds.checksums) == dataset_spec("tiny").split(split).digest


def test_a_user_split_of_the_same_config_is_the_same_data(tmp_path: Path) -> None:
    """The named dataset is the same split machinery any config gets: same bytes."""
    spec = dataset_spec("tiny")
    storage = StorageConfig(batch_scenes=1, compression_level=0)  # storage and workers do not change the data
    mine = render_dataset(spec.config, tmp_path / "mine.h5", num_scenes=4, split="test", workers=2, storage=storage)
    assert digest_of(mine) == spec.split("test").digest
    with open_dataset(mine) as ds:
        assert ds.split is not None and ds.split.reference is None


def test_a_render_that_differs_from_the_registry_is_refused_and_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = dataset_spec("tiny")
    wrong = replace(tiny, splits=tuple(replace(s, digest="0" * 64) for s in tiny.splits))
    monkeypatch.setattr(shapesgen.datasets, "REGISTRY", (wrong,))
    with pytest.raises(ChecksumMismatchError, match="differs from the registered data") as caught:
        build_split("tiny:1.0.0/test", tmp_path / "test.h5")
    assert caught.value.exit_code == 1 and "numpy" in str(caught.value)
    assert list(tmp_path.iterdir()) == []
    result = run_cli("render", "--dataset", "tiny/test", "--out", tmp_path / "t.h5", "-q")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "--dataset tiny:1.0.0/test" in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.large
@pytest.mark.parametrize("name", ["paper-6", "paper-12"])
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_the_paper_datasets_reproduce_their_registered_checksums(tmp_path: Path, name: str, split: str) -> None:
    build_split(f"{name}:1.0.0/{split}", tmp_path / "split.h5", workers=2)  # raises on a mismatch


# The command line ---------------------------------------------------------------------------------------------


def test_render_builds_a_named_split_and_refuses_options_that_would_change_it(tmp_path: Path) -> None:
    out = tmp_path / "test.h5"
    result = run_cli("render", "--dataset", "tiny:1.0.0/test", "--out", out, "--compression", 0, "-q")
    assert result.exit_code == 0, result.output
    assert digest_of(out) == dataset_spec("tiny").split("test").digest
    for extra in (["--num", 5], ["--seed", 3], ["--instances", 2], ["--preset", "paper"], ["--split", "val"]):
        bad = run_cli("render", "--dataset", "tiny/test", "--out", tmp_path / "x.h5", *extra)
        assert bad.exit_code == 2 and f"drop {extra[0]}" in bad.output and "Traceback" not in bad.output
    bad = run_cli("render", "--dataset", "tiny/dev", "--out", tmp_path / "x.h5")
    assert bad.exit_code == 2 and "--dataset tiny:1.0.0/dev is invalid: splits are train, val, test" in bad.output
    assert not (tmp_path / "x.h5").exists()


def test_render_split_option_renders_that_split(tmp_path: Path) -> None:
    out = tmp_path / "val.h5"
    result = run_cli("render", "--preset", "paper", "--image-size", 64, "--mask-size", 32, "--instances", 2,
                     "--seed", 5, "--split", "val", "--num", 2, "--out", out, "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    with open_dataset(out) as ds:
        assert ds.split == Split(name="val", base_seed=5)
    bad = run_cli("render", "--split", "Val", "--num", 2, "--out", tmp_path / "x.h5")
    assert bad.exit_code == 2 and "--split 'Val' is invalid" in bad.output


def test_datasets_lists_the_registry() -> None:
    result = run_cli("datasets")
    assert result.exit_code == 0
    for spec in REGISTRY:
        assert f"{spec.name}:{spec.version}" in result.output


# Exports: licence, version, Croissant, card header ---------------------------------------------------------------


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_split("tiny:1.0.0/test", tmp_path_factory.mktemp("named") / "test.h5")


@pytest.fixture(scope="module")
def named_export(named: Path) -> Path:
    return export_coco(named, named.parent / "export", ExportConfig(layers_png=True))


@pytest.fixture(scope="module")
def user_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("user")
    path = render_dataset(SMALL, folder / "train.h5", num_scenes=3, split="train")
    return export_coco(path, folder / "export", ExportConfig(style="kins", license="cc-by-4.0"))


def annotations(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "annotations.json").read_text())


def front_matter(folder: Path) -> dict[str, Any]:
    card = (folder / "README.md").read_text()
    header = re.match(r"---\n(.*?)\n---\n# shapesgen dataset\n", card, re.S)
    assert header, card[:200]
    data: dict[str, Any] = yaml.safe_load(header.group(1))
    return data


def test_a_registered_export_states_its_dataset_version_and_licence(named_export: Path) -> None:
    document = annotations(named_export)
    info = document["info"]
    assert info["version"] == "1.0.0" and info["dataset"] == "tiny:1.0.0/test"
    assert info["split"]["name"] == "test" and info["split"]["dataset"] == "tiny"
    assert info["content_digest"] == dataset_spec("tiny").split("test").digest and info["format_version"] == "1.3"
    assert document["licenses"] == [
        {
            "id": 1,
            "name": "Creative Commons Zero v1.0 Universal",
            "url": "https://creativecommons.org/publicdomain/zero/1.0/",
            "spdx": "CC0-1.0",
        }
    ]
    assert info["license"] == "CC0-1.0" and all(image["license"] == 1 for image in document["images"])
    card = (named_export / "README.md").read_text()
    assert "Creative Commons Zero v1.0 Universal (CC0-1.0" in card and "`tiny:1.0.0/test`" in card


def test_a_user_export_is_versioned_by_its_content_and_licensed_as_asked(user_export: Path) -> None:
    info = annotations(user_export)["info"]
    assert info["dataset"] is None and info["split"]["name"] == "train"
    assert info["version"] == "0.0.0+" + info["content_digest"][:12]
    with open_dataset(user_export.parent / "train.h5") as ds:
        assert info["content_digest"] == content_digest(ds.checksums)
    assert annotations(user_export)["licenses"][0]["spdx"] == "CC-BY-4.0" and info["license"] == "CC-BY-4.0"
    assert info["export"]["license"] == "cc-by-4.0"


def test_a_split_that_claims_a_registered_dataset_it_is_not_gets_no_registered_version(tmp_path: Path) -> None:
    claim = Split(name="test", dataset="tiny", version="1.0.0")
    path = render_dataset(SMALL, tmp_path / "fake.h5", num_scenes=2, split=claim)
    info = annotations(export_coco(path, tmp_path / "export"))["info"]
    assert info["dataset"] is None and info["version"].startswith("0.0.0+")


def test_bad_licences_are_refused() -> None:
    with pytest.raises(ConfigError, match="license='gpl' is invalid: must be one of cc0-1.0, cc-by-4.0"):
        ExportConfig(license="gpl")
    result = run_cli("export", "coco", "x.h5", "--out", "y", "--license", "gpl")
    assert result.exit_code == 2 and "--license 'gpl' is invalid" in result.output


def test_the_card_header_is_hugging_face_yaml(named_export: Path, user_export: Path) -> None:
    header = front_matter(named_export)
    assert header["license"] == "cc0-1.0" and header["pretty_name"] == "shapesgen tiny:1.0.0/test"
    assert header["task_categories"] == ["image-segmentation", "object-detection"]
    assert header["size_categories"] == ["n<1K"] and "amodal-segmentation" in header["tags"]
    assert "layer-maps" in header["tags"] and "coco-layout" in header["tags"]
    configs = {config["config_name"]: config for config in header["configs"]}
    assert configs["annotations"] == {
        "config_name": "annotations",
        "data_files": [{"split": "test", "path": "annotations.json"}],
        "field": "annotations",
        "default": True,
    }
    assert configs["images"]["field"] == "images"
    user = front_matter(user_export)
    assert user["license"] == "cc-by-4.0" and user["configs"][0]["data_files"][0]["split"] == "train"


def test_size_categories_follow_the_hub_buckets() -> None:
    assert [size_category(n) for n in (1, 999, 1000, 9999, 10_000, 100_000, 10**6, 10**7)] == [
        "n<1K",
        "n<1K",
        "1K<n<10K",
        "1K<n<10K",
        "10K<n<100K",
        "100K<n<1M",
        "1M<n<10M",
        "10M<n<100M",
    ]


def test_cards_with_and_without_a_header_are_recognised() -> None:
    assert _card_title(io.StringIO("# shapesgen dataset\n\ntext\n"))
    assert _card_title(io.StringIO("---\nlicense: cc0-1.0\n---\n# shapesgen dataset\n"))
    assert not _card_title(io.StringIO("---\nlicense: cc0-1.0\n---\n# someone's dataset\n"))
    assert not _card_title(io.StringIO("---\n" + "x: 1\n" * 200 + "---\n# shapesgen dataset\n"))


def croissant_of(folder: Path) -> tuple[Any, set[str]]:
    """The export's Croissant metadata as mlcroissant loads it, and its validation warnings."""
    logging.getLogger("absl").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # rdflib's, inside mlcroissant
        dataset = mlc.Dataset(jsonld=folder / "croissant.json")  # raises ValidationError on any error
    return dataset, set(dataset.metadata.ctx.issues.warnings)


def test_croissant_metadata_validates_and_loads_every_record_set(named_export: Path) -> None:
    dataset, issues = croissant_of(named_export)
    assert issues == set()
    metadata = json.loads((named_export / "croissant.json").read_text())
    assert metadata["version"] == "1.0.0" and metadata["license"] == LICENSES["cc0-1.0"].url
    assert metadata["datePublished"] == dataset_spec("tiny").released
    document = annotations(named_export)
    images = list(dataset.records("images"))
    assert [r["images/id"] for r in images] == [image["id"] for image in document["images"]]
    assert [r["images/file_name"].decode() for r in images] == [image["file_name"] for image in document["images"]]
    records = list(dataset.records("annotations"))
    assert [r["annotations/id"] for r in records] == [a["id"] for a in document["annotations"]]
    assert [list(r["annotations/bbox"]) for r in records] == [a["bbox"] for a in document["annotations"]]
    assert [r["categories/name"] for r in dataset.records("categories")] == ["circle", "triangle", "rectangle"]
    files = list(dataset.records("image_files"))
    assert len(files) == len(document["images"]) and files[0]["image_files/image"].size == (64, 64)
    assert len(list(dataset.records("layer_files"))) == 3 * len(document["images"])


def test_croissant_of_every_layout_validates(user_export: Path, tmp_path: Path) -> None:
    dataset, issues = croissant_of(user_export)
    assert len(issues) == 1 and "datePublished" in issues.pop()  # unregistered data records no date
    assert len(list(dataset.records("annotations"))) == len(annotations(user_export)["annotations"])
    source = user_export.parent / "train.h5"
    for style in ("cocoa", "aistron"):  # coco and kins: above
        folder = export_coco(source, tmp_path / style, ExportConfig(style=style))  # type: ignore[arg-type]
        dataset, _ = croissant_of(folder)
        assert len(list(dataset.records("annotations"))) == len(annotations(folder)["annotations"])


def test_croissant_is_listed_and_its_digests_are_the_files(named_export: Path) -> None:
    sums = dict(reversed(line.split("  ")) for line in (named_export / "SHA256SUMS").read_text().splitlines())
    assert "croissant.json" in sums and "croissant.json" in (named_export / "README.md").read_text()
    metadata = json.loads((named_export / "croissant.json").read_text())
    for item in metadata["distribution"]:
        if item["@type"] == "cr:FileObject":
            assert item["sha256"] == sums[item["contentUrl"]]


@pytest.mark.parametrize("which", ["named", "user"])
def test_rebuild_from_the_card_is_byte_identical(
    which: str, named_export: Path, user_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The card's commands rebuild a split's export exactly: by name for a registered split
    (checked against its registered digest), from config.json with its base seed and split."""
    original = named_export if which == "named" else user_export
    card = (original / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", card, re.S)
    assert block
    work = tmp_path / "team" / "here"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    ran = []
    for line in block.group(1).splitlines():
        command = shlex.split(line, comments=True)
        if command[:2] in (["shapesgen", "render"], ["shapesgen", "export"]):
            args = [a.replace("$EXPORT", str(original)) for a in command[1:]]
            result = run_cli(*args, "--quiet")
            assert result.exit_code == 0, (line, result.output)
            ran.append(command[1:3])
    assert ran[0] == (["render", "--dataset"] if which == "named" else ["render", "--config"])
    rebuilt = tmp_path / "team" / "shapesgen-rebuild" / "export"
    names = sorted(p.relative_to(original).as_posix() for p in original.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(rebuilt).as_posix() for p in rebuilt.rglob("*") if p.is_file())
    for name in names:
        assert (original / name).read_bytes() == (rebuilt / name).read_bytes(), name
