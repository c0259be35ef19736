"""Damaged and tampered HDF5 files: ``validate`` names the problem, every reader fails with one line.

Each case copies the session's tiny dataset, breaks one thing, then checks the library
(``validate_file`` raises :class:`ValidationError`, ``open_dataset`` a :class:`DatasetError`)
and the CLI (one stderr line, no traceback, the right exit code, nothing left behind).
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shapesgen import DatasetError, ShapesgenError, ValidationError
from shapesgen.stats import summarize
from shapesgen.storage.reader import CorruptDatasetError, open_dataset
from shapesgen.validate import validate_file

Edit = Callable[[h5py.File], None]


def set_attr(name: str, value: object) -> Edit:
    def edit(f: h5py.File) -> None:
        f.attrs[name] = value

    return edit


def del_attr(name: str) -> Edit:
    def edit(f: h5py.File) -> None:
        del f.attrs[name]

    return edit


def set_config(**changes: object) -> Edit:
    def edit(f: h5py.File) -> None:
        f.attrs["config"] = json.dumps({**json.loads(f.attrs["config"]), **changes})

    return edit


def replace(name: str, make: Callable[[np.ndarray], object]) -> Edit:
    """Replace dataset ``name`` by ``make(its data)``: an array, or a group for ``None``."""

    def edit(f: h5py.File) -> None:
        data = f[name][()]
        del f[name]
        value = make(data)
        if value is None:
            f.create_group(name)
        else:
            f.create_dataset(name, data=value)

    return edit


def delete(name: str) -> Edit:
    def edit(f: h5py.File) -> None:
        del f[name]

    return edit


def both(*edits: Edit) -> Edit:
    def edit(f: h5py.File) -> None:
        for one in edits:
            one(f)

    return edit


def claim_scenes(count: int) -> Edit:
    """Counts and dataset lengths for ``count`` scenes over the 12 stored: h5py fills the rest, sparsely."""

    def edit(f: h5py.File) -> None:
        f.attrs["scenes_written"] = f.attrs["num_scenes"] = count
        for name in ("images", "layers", "class_layers", "instance_offsets", "amodal_masks", "visible_masks"):
            rows = {"images": count, "layers": count, "class_layers": count, "instance_offsets": count + 1}
            f[name].resize(rows.get(name, count * 9), axis=0)
        f["instances"].resize(count * 9, axis=0)
        f["vertex_offsets"].resize(count * 9 + 1, axis=0)

    return edit


def shifted(values: np.ndarray, at: int, by: int) -> np.ndarray:
    values = values.copy()
    values[at] += by
    return values


# (case id, edit, what the validate message must mention)
HEADER_CASES: list[tuple[str, Edit, str]] = [
    ("class_names-not-json", set_attr("class_names", "circle,triangle,rectangle"), "class_names is not JSON"),
    ("class_names-not-strings", set_attr("class_names", "[1, 2, 3]"), "class_names=.* not a JSON list of strings"),
    ("class_names-object", set_attr("class_names", '{"a": 1}'), "not a JSON list of strings"),
    ("class_names-too-few", set_attr("class_names", '["circle", "triangle"]'), "lists 2 names.* 3 classes"),
    ("class_names-differ", set_attr("class_names", '["circle", "triangle", "square"]'), "differs from the config"),
    ("class_names-integer", set_attr("class_names", 3), "class_names must be a string, not int64"),
    ("class_names-deep", set_attr("class_names", "[" * 100_000), "class_names is not JSON"),
    ("checksums-not-json", set_attr("checksums", "{"), "checksums is not JSON"),
    ("checksums-list", set_attr("checksums", "[]"), "checksums is not a JSON object of hex"),
    ("checksums-not-hex", set_attr("checksums", '{"images": "xyz"}'), "checksums is not a JSON object of hex"),
    ("offsets-short", replace("instance_offsets", lambda v: v[:-1]), "instance_offsets has 12 rows, expected 13"),
    ("offsets-long", replace("instance_offsets", lambda v: np.append(v, v[-1])), "instance_offsets has 14 rows"),
    ("offsets-decreasing", replace("instance_offsets", lambda v: shifted(v, 4, -20)), "gives scene 3 -11 instance"),
    ("offsets-start", replace("instance_offsets", lambda v: v + 9), "instance_offsets starts at 9"),
    ("offsets-beyond", replace("instance_offsets", lambda v: shifted(v, 12, 10**9)), "gives scene 11 1000000009"),
    (
        "offsets-float",
        replace("instance_offsets", lambda v: v.astype(np.float64)),
        "instance_offsets has dtype float64",
    ),
    ("offsets-2d", replace("instance_offsets", lambda v: v[:, None]), "instance_offsets has dtype int64 and shape"),
    ("vertex-offsets-end", replace("vertex_offsets", lambda v: shifted(v, -1, 5)), "vertex_offsets runs from 0 to"),
    ("vertex-offsets-int32", replace("vertex_offsets", lambda v: v.astype(np.int32)), "vertex_offsets has dtype int32"),
    ("scenes_written-negative", set_attr("scenes_written", -1), "scenes_written=-1 is invalid"),
    ("scenes_written-float", set_attr("scenes_written", 12.0), "scenes_written=12.0 is invalid"),
    ("scenes_written-text", set_attr("scenes_written", "12"), "scenes_written='12' is invalid"),
    ("scenes_written-bool", set_attr("scenes_written", True), "scenes_written=.*True.* is invalid"),
    ("scenes_written-over", set_attr("scenes_written", 13), "scenes_written=13 exceeds num_scenes=12"),
    ("num_scenes-negative", set_attr("num_scenes", -5), "num_scenes=-5 is invalid"),
    (
        "counts-beyond-data",
        both(set_attr("scenes_written", 40), set_attr("num_scenes", 40)),
        "instance_offsets has 13 rows, expected 41",
    ),
    ("counts-sparse-10**11", claim_scenes(10**11), "gives scene 12 -108 instance rows"),
    ("complete-text", set_attr("complete", "yes"), "complete='yes' is not a boolean"),
    ("complete-too-early", set_attr("num_scenes", 20), "complete is true but scenes_written=12 != num_scenes=20"),
    ("images-shape", replace("images", lambda v: v[:, :32, :32]), r"images has shape \(12, 32, 32, 1\)"),
    ("images-2d", replace("images", lambda v: v.reshape(12, -1)), "images has shape"),
    ("images-short", replace("images", lambda v: v[:5]), "images has 5 rows, expected 12"),
    ("layers-dtype", replace("layers", lambda v: v.astype(np.uint8)), "layers has dtype uint8, expected uint16"),
    ("masks-scalar", replace("amodal_masks", lambda v: np.True_), "amodal_masks has shape"),
    ("instances-plain", replace("instances", lambda v: v["area"]), "instances has dtype float64"),
    ("vertices-missing", delete("vertices"), r"dataset\(s\) \['vertices'\] missing"),
    ("layers-group", replace("layers", lambda v: None), "layers is a Group, not a dataset"),
    ("image_size-absurd", set_config(image_size=200000), "config is not a valid SceneConfig.*image_size=200000"),
    ("image_size-large", set_config(image_size=32768), r"images has shape .* \(scenes, 32768, 32768, 1\)"),
    ("config-not-json", set_attr("config", "{"), "config is not a valid SceneConfig"),
    ("config-shapes-text", set_config(shapes="circle"), "config is not a valid SceneConfig"),
    ("config-no-seed", set_config(seed=None), "config has seed=None"),
    ("config-other-classes", set_config(instances_per_class=2), "gives scene 0 9 instance rows, every scene has 6"),
    ("format_version-missing", del_attr("format_version"), r"attribute\(s\) \['format_version'\] missing"),
    ("seed-missing", del_attr("seed"), r"attribute\(s\) \['seed'\] missing"),
    ("seed-text", set_attr("seed", "11"), "seed='11' is invalid"),
    ("seed-other", set_attr("seed", 12), "seed=12 differs from the config's seed=11"),
    ("storage-not-json", set_attr("storage", "gzip"), "storage is not JSON"),
    ("storage-list", set_attr("storage", "[1]"), "storage=.* is not a JSON object"),
    ("created-missing", del_attr("created"), "created"),
    ("config-compound", set_attr("config", np.zeros(1, dtype=[("a", "<i4")])), "config has an HDF5 datatype"),
]


def tamper(source: Path, folder: Path, edit: Edit) -> Path:
    path = folder / "bad.h5"
    shutil.copy(source, path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def assert_one_line_failure(result: object, codes: tuple[int, ...]) -> str:
    exit_code, stderr = result.exit_code, result.stderr  # type: ignore[attr-defined]
    assert exit_code in codes, (exit_code, stderr, result.stdout)  # type: ignore[attr-defined]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def files_in(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


@pytest.mark.parametrize(("edit", "match"), [c[1:] for c in HEADER_CASES], ids=[c[0] for c in HEADER_CASES])
def test_tampered_header_is_caught(tiny_dataset: Path, tmp_path: Path, edit: Edit, match: str) -> None:
    path = tamper(tiny_dataset, tmp_path, edit)
    with pytest.raises(ValidationError, match=match):
        validate_file(path)
    with pytest.raises(CorruptDatasetError, match=match):
        open_dataset(path, allow_incomplete=True)


# one case of each kind through the CLI (each run costs Typer ~0.15 s)
CLI_CASES = [
    "class_names-differ",
    "checksums-not-json",
    "offsets-decreasing",
    "scenes_written-negative",
    "images-shape",
    "vertices-missing",
    "image_size-absurd",
    "seed-text",
]


@pytest.mark.parametrize("case", CLI_CASES)
def test_tampered_header_through_the_cli(tiny_dataset: Path, tmp_path: Path, case: str) -> None:
    """validate exits 1, the readers exit 2; each prints one line naming the file and writes nothing."""
    edit, match = next((c[1], c[2]) for c in HEADER_CASES if c[0] == case)
    path = tamper(tiny_dataset, tmp_path, edit)
    before = files_in(tmp_path)
    assert re.search(match, assert_one_line_failure(run_cli("validate", path), (1,)))
    for args in (
        ("info", path),
        ("preview", path, "--out", tmp_path / "p.png"),
        ("export", "coco", path, "--out", tmp_path / "exp"),
    ):
        line = assert_one_line_failure(run_cli(*args), (2,))
        assert str(path) in line and "corrupt file" in line and re.search(match, line), (args[0], line)
    assert files_in(tmp_path) == before


def flip_chunk_byte(path: Path, dataset: str, row: int) -> None:
    """Invert one byte in the middle of the stored (compressed) chunk holding ``row``."""
    with h5py.File(path, "r") as f:
        data = f[dataset]
        chunk = data.id.get_chunk_info_by_coord((row // data.chunks[0] * data.chunks[0],) + (0,) * (data.ndim - 1))
    with path.open("r+b") as file:
        file.seek(chunk.byte_offset + chunk.size // 2)
        byte = file.read(1)[0]
        file.seek(chunk.byte_offset + chunk.size // 2)
        file.write(bytes([byte ^ 0xFF]))


# (dataset, a row in scene 2, does `info` read it)
FLIPS = [("images", 2, False), ("layers", 2, False), ("amodal_masks", 18, True), ("instances", 18, True)]


@pytest.mark.parametrize(("dataset", "row", "info_reads_it"), FLIPS, ids=[f[0] for f in FLIPS])
def test_a_flipped_byte_in_a_compressed_chunk(
    tiny_dataset: Path, tmp_path: Path, dataset: str, row: int, info_reads_it: bool
) -> None:
    path = tmp_path / "flipped.h5"
    shutil.copy(tiny_dataset, path)
    flip_chunk_byte(path, dataset, row)
    with pytest.raises(ValidationError, match=f"^scene 2: dataset {dataset} cannot be read"):
        validate_file(path)
    with open_dataset(path) as ds:  # the header is intact: opening works, reading scene 2 does not
        ds[1]
        with pytest.raises(CorruptDatasetError, match=f"scene 2: dataset {dataset} cannot be read") as caught:
            ds[2]
        assert caught.value.scene == 2 and caught.value.dataset == dataset
        assert f"shapesgen validate {path}" in str(caught.value)
        view = getattr(ds, dataset)
        with pytest.raises(CorruptDatasetError, match=f"scene 2: dataset {dataset}"):
            view[:]  # direct slices of the exposed datasets, as the evaluator and the trainer read them
        with pytest.raises(CorruptDatasetError, match=f"scene 2: dataset {dataset}"):
            view[row - 1 : row + 5]
        assert view[0].shape == view.shape[1:] and view.dtype == view[0:1].dtype and len(view) == view.shape[0]
    before = files_in(tmp_path)
    line = assert_one_line_failure(run_cli("validate", path), (1,))
    assert f"scene 2: dataset {dataset} cannot be read" in line
    if info_reads_it:  # info summarises the instance table and the amodal masks, nothing else
        assert f"scene 2: dataset {dataset}" in assert_one_line_failure(run_cli("info", path), (2,))
    else:
        assert run_cli("info", path).exit_code == 0
    readers: list[tuple[object, ...]] = [
        ("preview", path, "--out", tmp_path / "p.png"),
        ("export", "coco", path, "--out", tmp_path / "e", "-q"),
    ]
    for args in readers:
        line = assert_one_line_failure(run_cli(*args), (2,))
        assert str(path) in line and f"scene 2: dataset {dataset}" in line and "shapesgen validate" in line
    assert files_in(tmp_path) == before


def test_a_flipped_byte_in_the_vertices(tiny_dataset: Path, tmp_path: Path) -> None:
    """One chunk holds many scenes' vertices: the first scene read from it is the one named."""
    path = tmp_path / "flipped.h5"
    shutil.copy(tiny_dataset, path)
    flip_chunk_byte(path, "vertices", 0)
    with pytest.raises(ValidationError, match="^scene 0: dataset vertices cannot be read"):
        validate_file(path)
    with open_dataset(path) as ds, pytest.raises(CorruptDatasetError, match="scene 5: dataset vertices"):
        ds[5]


def test_scrambled_vertex_offsets_are_caught_per_scene(tiny_dataset: Path, tmp_path: Path) -> None:
    """Opening reads only the ends of vertex_offsets; a scene whose own offsets are broken fails when read."""
    path = tamper(tiny_dataset, tmp_path, replace("vertex_offsets", lambda v: shifted(v, 20, -(10**6))))
    with pytest.raises(ValidationError, match="scene 2: vertex_offsets decrease at instance row 19"):
        validate_file(path)
    with open_dataset(path) as ds:
        ds[1]
        with pytest.raises(CorruptDatasetError, match="scene 2: dataset vertex_offsets is not non-decreasing"):
            ds[2]
    assert "scene 2" in assert_one_line_failure(run_cli("export", "coco", path, "--out", tmp_path / "e", "-q"), (2,))
    assert not (tmp_path / "e").exists() and not (tmp_path / "e.partial").exists()


def test_checksum_bookkeeping_is_validated(tiny_dataset: Path, tmp_path: Path) -> None:
    """Readers never use the checksums: a wrong set of them fails validation only."""
    incomplete = set_attr("checksums", json.dumps({"images": "0" * 64}))
    path = tamper(tiny_dataset, tmp_path, incomplete)
    with pytest.raises(ValidationError, match="checksums attribute lists"):
        validate_file(path)
    assert run_cli("info", path).exit_code == 0


def test_files_that_are_not_hdf5(tiny_dataset: Path, tmp_path: Path) -> None:
    data = tiny_dataset.read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValidationError, match="damaged or truncated HDF5"):
        validate_file(truncated)
    line = assert_one_line_failure(run_cli("validate", truncated), (1,))
    assert f"{truncated}: damaged or truncated" in line  # the file is named, as info names it
    assert "damaged or truncated" in assert_one_line_failure(run_cli("info", truncated), (2,))
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        validate_file(garbage)
    assert "not a readable HDF5" in assert_one_line_failure(run_cli("validate", garbage), (2,))
    with pytest.raises(DatasetError, match="is a folder, not a shapesgen dataset"):
        validate_file(tmp_path)
    (tmp_path / "annotations.json").write_text("{}")
    line = assert_one_line_failure(run_cli("preview", tmp_path, "--out", tmp_path.parent / "p.png"), (2,))
    assert "is a COCO export, not a shapesgen dataset" in line and "the one it was exported from" in line


def test_a_file_another_process_writes_is_not_called_corrupt(tiny_dataset: Path, tmp_path: Path) -> None:
    """HDF5's lock on a file being written is an OS error, not damage: DatasetError, exit 2."""
    path = tmp_path / "busy.h5"
    shutil.copy(tiny_dataset, path)
    code = "import sys, h5py\nf = h5py.File(sys.argv[1], 'a')\nprint('ready', flush=True)\nsys.stdin.read()\n"
    with subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as writer:
        assert writer.stdout is not None and writer.stdout.readline().strip() == b"ready"
        try:
            with pytest.raises(DatasetError, match="cannot open for reading .*lock") as caught:
                validate_file(path)
            assert not isinstance(caught.value, CorruptDatasetError)
        finally:
            writer.communicate(b"")


def test_a_damaged_string_datatype_is_refused_before_h5py_reads_it(tiny_dataset: Path, tmp_path: Path) -> None:
    """h5py dies with a segmentation fault reading a variable-length string whose datatype bits are
    damaged (one flipped byte found by fuzzing); the reader checks the type first. In a child
    process, so that a regression fails this test instead of killing the test run."""
    data = bytearray(tiny_dataset.read_bytes())
    pattern = b"config\x00\x00\x19\x01\x01\x00"  # the config attribute's name, then its datatype message
    assert pattern in data, "h5py lays out attributes differently now: find the string-type byte again"
    at = data.index(pattern) + 9  # the string-type bits
    data[at] = 0x43
    path = tmp_path / "bad_type.h5"
    path.write_bytes(bytes(data))
    code = (
        "import sys\nfrom shapesgen.validate import validate_file\nfrom shapesgen import ValidationError\n"
        "try:\n    validate_file(sys.argv[1])\nexcept ValidationError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "attribute config has an HDF5 datatype" in done.stdout, done


@functools.cache
def chunk_spans(path: Path) -> list[tuple[int, int]]:
    """(byte offset, size) of every stored chunk: compressed data and the raw offset arrays."""
    spans = []
    with h5py.File(path, "r") as f:
        for name in f:
            store = f[name].id
            spans += [(c.byte_offset, c.size) for c in map(store.get_chunk_info, range(store.get_num_chunks()))]
    return spans


DAMAGE = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 0.999)),
    st.tuples(st.just("garbage"), st.binary(max_size=64)),
    st.tuples(
        st.just("chunks"),
        st.lists(st.tuples(st.floats(0, 0.999), st.floats(0, 0.999), st.integers(0, 255)), min_size=1, max_size=4),
    ),
)
COUNTER = itertools.count()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=DAMAGE)
def test_random_damage_raises_only_library_errors(tiny_dataset: Path, tmp_path: Path, damage: tuple) -> None:
    """Truncations, garbage and bytes changed anywhere in the stored chunks: opening, reading every
    scene, summarising and validating raise ShapesgenError or succeed, nothing else.

    Metadata bytes are left alone: h5py can crash the interpreter on damaged object headers
    (file format without metadata checksums), which no Python code can catch."""
    data = bytearray(tiny_dataset.read_bytes())
    kind, detail = damage
    if kind == "truncate":
        data = data[: int(detail * len(data))]
    elif kind == "garbage":
        data = bytearray(detail)
    else:
        spans = chunk_spans(tiny_dataset)
        for which, where, value in detail:
            offset, size = spans[int(which * len(spans))]
            data[offset + int(where * size)] = value
    path = tmp_path / f"damaged{next(COUNTER)}.h5"  # a new name: HDF5 shares open files by identity
    path.write_bytes(bytes(data))
    try:
        with open_dataset(path, allow_incomplete=True) as ds:
            for index in range(len(ds)):
                ds[index]
            summarize(ds)
    except ShapesgenError:
        pass
    try:
        validate_file(path, regenerate=0)
    except ShapesgenError:
        pass
