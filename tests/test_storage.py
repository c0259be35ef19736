"""The schema drives storage: every declared dataset and column is filled by the renderer,
the encoder writes exactly the records the schema declares, and storage renders nothing."""

from __future__ import annotations

import ast
import dataclasses
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shapesgen import SceneConfig, StorageConfig, open_dataset, preset, render_scenes
from shapesgen.build import render_dataset
from shapesgen.storage.encode import deflate, encode_scenes
from shapesgen.storage.layout import DATASETS, INSTANCE_COLUMNS, INSTANCE_DTYPE, PER_SCENE, Scene, instance_table
from shapesgen.storage.writer import DatasetWriter
from shapesgen.validate import validate_file

TINY = SceneConfig(image_size=64, mask_size=32, instances_per_class=3, layers=3, seed=11)
CONFIGS = {"tiny": TINY, "extended": preset("extended").replace(instances_per_class=2, seed=3)}
INDEX_FIELDS = {"index", "vertex_offsets"}  # a scene's position and its vertex index: no dataset of their own


def test_scene_attributes_and_the_schema_agree() -> None:
    """Each dataset names a Scene attribute, and each Scene array is stored by one dataset."""
    attributes = [field.name for field in dataclasses.fields(Scene)]
    declared = [field.attribute for field in DATASETS]
    assert sorted(declared) == sorted(set(attributes) - INDEX_FIELDS)
    assert len(set(declared)) == len(declared) and len({f.name for f in DATASETS}) == len(DATASETS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_declared_dataset_and_column_is_filled_by_the_renderer(name: str) -> None:
    """A dataset or instance column the renderer leaves at its default (zeros) fails here."""
    config = CONFIGS[name]
    scenes = render_scenes(config, range(1, 9))
    for field in DATASETS:
        values = [getattr(scene, field.attribute) for scene in scenes]
        assert all(v.dtype == field.dtype for v in values), field.name
        if field.per_scene:
            rows = () if field.axis == "scene" else (field.scene_rows(config),)
            assert all(v.shape == (*rows, *field.record_shape(config)) for v in values), field.name
        else:
            assert all(v.shape[1:] == field.record_shape(config) for v in values), field.name
        if not field.dtype.names:
            assert any(np.any(v != 0) for v in values), f"dataset {field.name} is all zeros"
    table = np.concatenate([scene.instances for scene in scenes])
    for column in INSTANCE_COLUMNS:
        assert np.any(table[column.name] != 0), f"instances column {column.name} is all zeros"


def test_instance_table_refuses_a_missing_or_undeclared_column() -> None:
    columns = {c.name: 1 for c in INSTANCE_COLUMNS}
    assert instance_table(columns, (2, 3)).dtype == INSTANCE_DTYPE
    with pytest.raises(ValueError, match=r"missing \['truncation'\], undeclared \[\]"):
        instance_table({k: v for k, v in columns.items() if k != "truncation"}, (2, 3))
    with pytest.raises(ValueError, match=r"missing \[\], undeclared \['extra'\]"):
        instance_table(columns | {"extra": 0}, (2, 3))


CONFIG_SPACE = st.builds(
    lambda size, scale, channels, layers, per_class, seed: SceneConfig(
        image_size=size,
        mask_size=size // scale,
        channels=channels,
        layers=layers,
        instances_per_class=per_class,
        seed=seed,
    ),
    st.sampled_from([32, 64]),
    st.sampled_from([1, 2, 4]),
    st.sampled_from([1, 3]),
    st.integers(1, 4),
    st.integers(1, 3),
    st.integers(0, 2**32),
)


@settings(max_examples=20, deadline=None)
@given(config=CONFIG_SPACE, level=st.sampled_from([0, 1, 6]))
def test_the_encoder_writes_the_records_the_schema_declares(config: SceneConfig, level: int) -> None:
    """Each per-scene chunk holds exactly one scene's record of the declared dtype and shape,
    and decodes to the Scene attribute the field names; every dataset is hashed."""
    scenes = render_scenes(config, [0, 5])
    batch = encode_scenes(scenes, level)
    assert list(batch.digests) == [field.name for field in DATASETS]
    assert list(batch.chunks) == [field.name for field in DATASETS if field.per_scene]
    assert list(batch.vertex_rows) == [field.name for field in DATASETS if not field.per_scene]
    for field in DATASETS:
        shape = field.record_shape(config)
        for j, scene in enumerate(scenes):
            stored = getattr(scene, field.attribute)
            if field.per_scene:
                chunk = batch.chunks[field.name][j]
                raw = zlib.decompress(chunk) if level else chunk
                assert len(raw) == field.scene_rows(config) * int(np.prod(shape)) * field.dtype.itemsize
                decoded = np.frombuffer(raw, field.dtype).reshape(-1, *shape)
                assert np.array_equal(decoded.reshape(stored.shape), stored), field.name
        if not field.per_scene:
            rows = batch.vertex_rows[field.name]
            assert rows.dtype == field.dtype and rows.shape[1:] == shape
            assert len(rows) == int(batch.vertex_counts.sum())


def test_the_encoder_refuses_a_record_of_another_dtype() -> None:
    scene = render_scenes(TINY, [0])[0]
    wrong = dataclasses.replace(scene, layers=scene.layers.astype(np.int64))
    with pytest.raises(TypeError, match="Scene.layers is int64, dataset layers stores uint16"):
        encode_scenes([wrong], 1)


RENDERING = ("shapesgen.renderer", "shapesgen.build", "shapesgen.visibility", "shapesgen.raster", "shapesgen.geometry")


def test_storage_imports_no_rendering() -> None:
    """Storage moves bytes: checking a killed render's scenes goes through ``verify``."""
    package = Path(__file__).parent.parent / "shapesgen" / "storage"
    for module in sorted(package.glob("*.py")):
        tree = ast.parse(module.read_text())
        imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not [name for name in imported if name.startswith(RENDERING)], module.name


def test_resume_keeps_the_prefix_that_verify_confirms(tmp_path: Path) -> None:
    """A file killed hard is cut where its scenes stop matching ``verify(start, stop)``, which
    is asked for dataset-wide scene indices (a shard's ``first_scene`` onwards). Whole batches
    are kept (here of one scene: the file's storage settings, not the resuming caller's)."""
    path, first = tmp_path / "shard.h5", 10
    scenes = render_scenes(TINY, range(first, first + 5))
    storage = StorageConfig(batch_scenes=1)
    writer = DatasetWriter(path, TINY, storage, 5, first_scene=first, verify=lambda a, b: {})
    writer.append(encode_scenes(scenes, 1))
    writer.file.close()  # killed hard: clean_stop stays false
    with h5py.File(path, "r+") as f:
        assert not f.attrs["clean_stop"]
        f["images"][3] = 255 - f["images"][3]  # scene first + 3 torn
    asked: list[tuple[int, int]] = []

    def verify(start: int, stop: int) -> dict[str, list[bytes]]:
        asked.append((start, stop))
        return encode_scenes(render_scenes(TINY, range(start, stop)), 0).digests

    resumed = DatasetWriter(path, TINY, StorageConfig(), 5, verify=verify)
    assert asked == [(first, first + 5)] and resumed.scenes_written == 3 and resumed.first_scene == first
    resumed.append(encode_scenes(scenes[3:], 1))
    resumed.finish()
    resumed.close()
    with open_dataset(path) as ds:
        assert len(ds) == 5 and np.array_equal(ds[3].image, scenes[3].image)


def test_compressed_chunks_are_the_same_in_any_thread() -> None:
    """A chunk's compressed bytes depend on its data only, not on the thread compressing it:
    Dask runs tasks in worker threads, and shard files must be a local render's bytes.
    (ISA-L's level 1, used before, gave other bytes for a few chunks in 2 of 6 runs of this
    loop as a script; under pytest it passed 6 runs: its failures depend on the process.)"""
    scenes = render_scenes(TINY, range(60))
    chunks = [np.ascontiguousarray(getattr(s, f.attribute)).tobytes() for s in scenes for f in PER_SCENE]
    serial = [deflate(chunk, 1) for chunk in chunks]

    def differing(_: int) -> int:
        pairs = list(zip(chunks, serial, strict=True))
        return sum(deflate(chunk, 1) != expected for _ in range(20) for chunk, expected in pairs)

    with ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(differing, range(4))) == 0


def test_file_bytes_do_not_depend_on_when_dataset_objects_are_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk written through HDF5's chunk cache got its file space when the dataset object
    was closed, a moment garbage collection decides in each process: one shard's bytes differed
    between a local pool worker and a Dask worker. Every dataset object kept alive until the
    file closes (as a reference cycle would) must give the same bytes."""
    from shapesgen.build import render_dataset

    config = SceneConfig(image_size=64, mask_size=32, instances_per_class=3, layers=3, seed=11)
    storage = StorageConfig(batch_scenes=2)
    created = "2023-11-14T22:13:20+00:00"  # both files record the same start time
    render_dataset(config, tmp_path / "closed.h5", num_scenes=5, storage=storage, created=created)
    kept: list[object] = []
    create, get = h5py.Group.create_dataset, h5py.Group.__getitem__

    def create_kept(self: h5py.Group, *args: object, **kwargs: object) -> object:
        kept.append(create(self, *args, **kwargs))  # type: ignore[arg-type]
        return kept[-1]

    def get_kept(self: h5py.Group, name: object) -> object:
        kept.append(get(self, name))  # type: ignore[arg-type]
        return kept[-1]

    monkeypatch.setattr(h5py.Group, "create_dataset", create_kept)
    monkeypatch.setattr(h5py.Group, "__getitem__", get_kept)
    render_dataset(config, tmp_path / "kept.h5", num_scenes=5, storage=storage, created=created)
    kept.clear()
    assert (tmp_path / "closed.h5").read_bytes() == (tmp_path / "kept.h5").read_bytes()


@pytest.mark.parametrize(("block", "cap"), [(64, 64 << 20), (4, 64 << 20), (1, 64 << 20), (64, 1)])
def test_block_read_digests_equal_one_scene_at_a_time(
    tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch, block: int, cap: int
) -> None:
    """Scenes read back several at a time (capped in scenes and in bytes) hash as each
    scene's own slice does, whatever the block and wherever a range starts."""
    from shapesgen.storage import digests

    monkeypatch.setattr(digests, "DIGEST_BLOCK", block)
    monkeypatch.setattr(digests, "DIGEST_BLOCK_BYTES", cap)
    with h5py.File(tiny_dataset, "r") as f:
        offsets, vertex_offsets = f["instance_offsets"][:], f["vertex_offsets"][:]
        for scenes in (range(12), range(5, 11)):
            expected = []
            for i in scenes:
                rows = slice(int(offsets[i]), int(offsets[i + 1]))
                where = {"scene": i, "instance": rows, "vertex": slice(*vertex_offsets[[rows.start, rows.stop]])}
                expected.append({d.name: digests.digest(f[d.name][where[d.axis]]) for d in DATASETS})
            assert list(digests.scene_digests(f, offsets, vertex_offsets, scenes)) == expected


def _shapesgen_file(path: Path) -> None:
    from shapesgen.build import render_dataset

    render_dataset(SceneConfig(image_size=32, mask_size=16, instances_per_class=1, seed=1), path, num_scenes=2)


def _foreign_hdf5(path: Path) -> None:
    with h5py.File(path, "w") as file:
        file["data"] = np.arange(3)


def _damaged_shapesgen_file(path: Path) -> None:
    _shapesgen_file(path)
    path.write_bytes(path.read_bytes()[:1000])  # cut short, as a killed render leaves it


@pytest.mark.parametrize(
    ("make", "empty_is_ours", "reason"),
    [
        (_shapesgen_file, False, None),
        (_damaged_shapesgen_file, False, None),
        (lambda p: p.write_bytes(b""), True, None),
        (lambda p: p.write_bytes(b""), False, "is not an HDF5 file"),
        (lambda p: p.write_text("notes"), True, "is not an HDF5 file"),
        (_foreign_hdf5, True, "is an HDF5 file that shapesgen did not write"),
        (lambda p: p.mkdir(), True, "is not a plain file"),
        (lambda p: p.symlink_to(p.with_name("elsewhere.h5")), True, "is not a plain file"),
    ],
)
def test_not_ours_tells_a_file_shapesgen_may_have_written_from_a_users(
    tmp_path: Path, make: Any, empty_is_ours: bool, reason: str | None
) -> None:
    from shapesgen.storage.reader import not_ours

    (tmp_path / "elsewhere.h5").write_text("the link's target")
    path = tmp_path / "data.h5"
    make(path)
    assert not_ours(path, empty_is_ours=empty_is_ours) == reason


def test_an_hdf5_file_another_program_holds_open_is_not_ours(tmp_path: Path) -> None:
    """HDF5's file lock makes a file open for writing elsewhere unreadable, as damage would:
    it must not pass for a render cut short (which a render may delete)."""
    import subprocess
    import sys

    from shapesgen.storage.reader import not_ours

    path = tmp_path / "theirs.h5"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import h5py, sys; f = h5py.File({str(path)!r}, 'w'); print('open', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        assert not_ours(path) == "is an HDF5 file another program has open"
    finally:
        holder.communicate("")
    assert not_ours(path) == "is an HDF5 file that shapesgen did not write"


@pytest.mark.parametrize(("batch", "level"), [(7, 2), (64, 2), (5, 0)])
def test_vertex_rows_written_chunk_by_chunk_read_back_exactly(tmp_path: Path, batch: int, level: int) -> None:
    """Vertex rows go to the file as whole chunks (compressed by the writer, as HDF5's gzip
    filter reads them), the chunk being filled written again by each batch: whatever the
    batch size, every row reads back and each chunk is stored once."""
    config = preset("paper").replace(instances_per_class=2, seed=5)
    path = tmp_path / "v.h5"
    render_dataset(config, path, num_scenes=90, storage=StorageConfig(batch_scenes=batch, compression_level=level))
    expected = np.concatenate([scene.vertices for scene in render_scenes(config, range(90))])
    with h5py.File(path, "r") as f:
        vertices = f["vertices"]
        assert len(expected) > 2 * vertices.chunks[0], "the rows span several chunks"
        assert np.array_equal(vertices[:], expected)
        assert vertices.id.get_num_chunks() == -(-len(expected) // vertices.chunks[0])
        assert (vertices.compression == "gzip") == bool(level)
        if level:
            stored = vertices.id.read_direct_chunk((0, 0))[1]
            assert zlib.decompress(stored) == np.ascontiguousarray(expected[: vertices.chunks[0]]).tobytes()
    assert validate_file(path, regenerate=-1) == 90


def test_a_batch_ending_on_a_vertex_chunk_boundary_leaves_no_chunk_to_rewrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With chunks exactly as long as the first batch's rows, that batch fills its chunks
    and keeps no rows back; the next batch starts a new chunk, and everything reads back."""
    import shapesgen.storage.writer as writer

    config = preset("paper").replace(instances_per_class=2, seed=5)
    scenes = render_scenes(config, range(12))
    expected = np.concatenate([scene.vertices for scene in scenes])
    first_batch_rows = sum(len(scene.vertices) for scene in scenes[:3])
    monkeypatch.setattr(writer, "VERTEX_CHUNK", first_batch_rows)
    path = tmp_path / "b.h5"
    kept_back: list[int] = []
    real_append_rows = writer.DatasetWriter._append_rows

    def append_rows(self: writer.DatasetWriter, name: str, rows: np.ndarray) -> None:
        real_append_rows(self, name, rows)
        kept_back.append(len(self.vertex_tails[name]))

    monkeypatch.setattr(writer.DatasetWriter, "_append_rows", append_rows)
    render_dataset(config, path, num_scenes=12, storage=StorageConfig(batch_scenes=3))
    assert kept_back[0] == 0, "the first batch ends on a chunk boundary"
    with h5py.File(path, "r") as f:
        vertices = f["vertices"]
        assert vertices.chunks[0] == first_batch_rows
        assert np.array_equal(vertices[:], expected)
        assert vertices.id.get_num_chunks() == -(-len(expected) // vertices.chunks[0])
    assert validate_file(path, regenerate=-1) == 12
