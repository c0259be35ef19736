"""HDF5 round trips, determinism across workers, resume, atomicity and the schema."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from shapesgen import ConfigError, DatasetError, SceneConfig, render_scene
from shapesgen.build import RenderInterrupted, partial_path, render_dataset
from shapesgen.config import StorageConfig
from shapesgen.errors import FailedWrite, ResourceError, ShapesgenError
from shapesgen.storage.layout import DATASETS, FORMAT_NAME, FORMAT_VERSION, OFFSETS, format_markdown
from shapesgen.storage.reader import open_dataset
from shapesgen.storage.writer import DatasetWriter
from shapesgen.validate import validate_dataset

GOLDEN = Path(__file__).parent / "golden"
ROOT = Path(__file__).parent.parent


def data_bytes(path: Path) -> dict[str, bytes]:
    with h5py.File(path, "r") as f:
        return {name: f[name][()].tobytes() for name in [d.name for d in DATASETS] + list(OFFSETS)}


def test_reader_returns_exactly_what_render_scene_makes(tiny_dataset: Path, tiny_config: SceneConfig) -> None:
    with open_dataset(tiny_dataset) as ds:
        assert len(ds) == 12 and ds.config == tiny_config and ds.seed == 11
        assert ds.class_names == ["circle", "triangle", "rectangle"]
        for index in (0, 7, 11, -1):
            stored, fresh = ds[index], render_scene(tiny_config, index % 12)
            for name in ("image", "layers", "class_layers", "amodal_masks", "visible_masks", "instances", "vertices"):
                assert np.array_equal(getattr(stored, name), getattr(fresh, name)), name
            assert np.array_equal(stored.vertex_offsets, fresh.vertex_offsets)
        with pytest.raises(IndexError):
            ds[12]


def test_same_bytes_for_any_worker_count(tmp_path: Path, tiny_config: SceneConfig) -> None:
    storage = StorageConfig(batch_scenes=3)
    one = render_dataset(tiny_config, tmp_path / "w1.h5", num_scenes=10, workers=1, storage=storage)
    two = render_dataset(tiny_config, tmp_path / "w2.h5", num_scenes=10, workers=2, storage=storage)
    assert data_bytes(one) == data_bytes(two)
    with h5py.File(one, "r") as a, h5py.File(two, "r") as b:
        assert a.attrs["checksums"] == b.attrs["checksums"]


def test_batch_size_does_not_change_the_data(tmp_path: Path, tiny_config: SceneConfig) -> None:
    a = render_dataset(tiny_config, tmp_path / "a.h5", num_scenes=7, storage=StorageConfig(batch_scenes=2))
    b = render_dataset(tiny_config, tmp_path / "b.h5", num_scenes=7, storage=StorageConfig(batch_scenes=64))
    assert data_bytes(a) == data_bytes(b)


def interrupt_after(scenes: int):
    def progress(done: int, total: int) -> None:
        if done >= scenes:
            raise KeyboardInterrupt

    return progress


def test_interrupted_render_leaves_no_output_and_resumes_to_the_same_data(
    tmp_path: Path, tiny_config: SceneConfig
) -> None:
    storage = StorageConfig(batch_scenes=2)
    whole = render_dataset(tiny_config, tmp_path / "whole.h5", num_scenes=9, storage=storage)
    out = tmp_path / "cut.h5"
    with pytest.raises(RenderInterrupted, match="resume=True"):
        render_dataset(tiny_config, out, num_scenes=9, storage=storage, progress=interrupt_after(4))
    assert not out.exists() and partial_path(out).exists()
    with h5py.File(partial_path(out), "r") as f:
        assert int(f.attrs["scenes_written"]) == 4 and not f.attrs["complete"]
    with pytest.raises(DatasetError, match="resume=True"):
        render_dataset(tiny_config, out, num_scenes=9, storage=storage)
    with pytest.raises(ConfigError, match="instances_per_class"):
        render_dataset(tiny_config.replace(instances_per_class=2), out, num_scenes=9, resume=True)
    with pytest.raises(ConfigError, match="num_scenes"):
        render_dataset(tiny_config, out, num_scenes=10, resume=True)
    render_dataset(tiny_config, out, num_scenes=9, storage=storage, resume=True)
    assert out.exists() and not partial_path(out).exists()
    assert data_bytes(out) == data_bytes(whole)
    with h5py.File(out, "r") as a, h5py.File(whole, "r") as b:
        assert a.attrs["checksums"] == b.attrs["checksums"]


def test_an_unfinished_file_says_how_to_finish_it_under_either_name(tmp_path: Path, tiny_config: SceneConfig) -> None:
    """A copy of a partial under another name was told to resume, which the render then
    refused (its output exists): it must be renamed to ``<out>.partial`` first."""
    storage = StorageConfig(batch_scenes=2)
    out = tmp_path / "cut.h5"
    with pytest.raises(RenderInterrupted):
        render_dataset(tiny_config, out, num_scenes=7, storage=storage, progress=interrupt_after(2))
    with pytest.raises(DatasetError, match=rf"2 of 7 scenes\); finish it by rerunning .* --resume --out {out}$"):
        open_dataset(partial_path(out))
    shard = tmp_path / "shards" / "shard-00003.h5.partial"  # a sharded render's unfinished shard
    shard.parent.mkdir()
    shutil.copyfile(partial_path(out), shard)
    with pytest.raises(DatasetError, match=rf"rerunning the sharded render command \(--out {shard.parent}\)$"):
        open_dataset(shard)
    copy = tmp_path / "copy.h5"
    partial_path(out).rename(copy)
    with pytest.raises(DatasetError, match=rf"renaming it to copy.h5.partial and .* --resume --out {copy}$"):
        open_dataset(copy)
    copy.rename(partial_path(copy))  # as the message says
    render_dataset(tiny_config, copy, num_scenes=7, storage=storage, resume=True)
    whole = render_dataset(tiny_config, tmp_path / "whole.h5", num_scenes=7, storage=storage)
    assert data_bytes(copy) == data_bytes(whole)


def test_resume_after_a_hard_kill_keeps_only_the_intact_prefix(tmp_path: Path, tiny_config: SceneConfig) -> None:
    """A file not closed cleanly is checked scene by scene against fresh renders."""
    storage = StorageConfig(batch_scenes=2)
    whole = render_dataset(tiny_config, tmp_path / "whole.h5", num_scenes=9, storage=storage)
    out = tmp_path / "killed.h5"
    with pytest.raises(RenderInterrupted):
        render_dataset(tiny_config, out, num_scenes=9, storage=storage, progress=interrupt_after(6))
    with h5py.File(partial_path(out), "a") as f:  # what a kill between flushes can leave behind
        assert f.attrs["clean_stop"]
        f.attrs["clean_stop"] = False
        f["images"][3] = 0  # scene 3 torn: it and everything after it must be rendered again
    render_dataset(tiny_config, out, num_scenes=9, storage=storage, resume=True)
    assert data_bytes(out) == data_bytes(whole)
    with h5py.File(out, "r") as a, h5py.File(whole, "r") as b:
        assert a.attrs["checksums"] == b.attrs["checksums"] and a.attrs["clean_stop"]


PAIR = StorageConfig(batch_scenes=2)  # two scenes a batch: a 9-scene render stopped after 6 holds 3 batches


def stopped_after_six(tmp_path: Path, config: SceneConfig, name: str) -> tuple[Path, Path]:
    """An uninterrupted 9-scene render, and the output of one stopped cleanly after 6 scenes
    (its ``.partial`` file kept)."""
    whole = render_dataset(config, tmp_path / "whole.h5", num_scenes=9, storage=PAIR)
    out = tmp_path / name
    with pytest.raises(RenderInterrupted):
        render_dataset(config, out, num_scenes=9, storage=PAIR, progress=interrupt_after(6))
    return whole, out


@pytest.mark.parametrize("dataset", ["images", "layers", "instances", "vertices"])
def test_resume_rerenders_scenes_changed_after_a_clean_stop(
    tmp_path: Path, tiny_config: SceneConfig, dataset: str
) -> None:
    """A cleanly stopped file records its scenes' checksums; a scene changed since then (a
    flipped bit, a stray write) is found on resume and rendered again, not carried over."""
    whole, out = stopped_after_six(tmp_path, tiny_config, "changed.h5")
    with h5py.File(partial_path(out), "a") as f:
        assert f.attrs["clean_stop"] and "stopped_checksums" in f.attrs
        row = int(f["instance_offsets"][3]) if dataset == "instances" else 3
        if dataset == "vertices":
            row = int(f["vertex_offsets"][int(f["instance_offsets"][3])])
        value = f[dataset][row]
        if dataset == "instances":
            value["angle"] += 0.5
        else:
            value = value + 1
        f[dataset][row] = value
    render_dataset(tiny_config, out, num_scenes=9, storage=PAIR, resume=True)
    assert data_bytes(out) == data_bytes(whole)
    with h5py.File(out, "r") as a, h5py.File(whole, "r") as b:
        assert a.attrs["checksums"] == b.attrs["checksums"]
        assert "stopped_checksums" not in a.attrs


def test_resume_rerenders_from_a_chunk_that_no_longer_decodes(tmp_path: Path, tiny_config: SceneConfig) -> None:
    whole, out = stopped_after_six(tmp_path, tiny_config, "garbled.h5")
    with h5py.File(partial_path(out), "r") as f:
        chunk = f["images"].id.get_chunk_info(4)  # scene 4's gzip stream
    with partial_path(out).open("r+b") as raw:
        raw.seek(chunk.byte_offset + chunk.size // 2)
        raw.write(b"\xff" * 8)
    render_dataset(tiny_config, out, num_scenes=9, storage=PAIR, resume=True)
    assert data_bytes(out) == data_bytes(whole)


def test_resume_of_an_unchanged_clean_stop_renders_only_the_rest(tmp_path: Path, tiny_config: SceneConfig) -> None:
    whole, out = stopped_after_six(tmp_path, tiny_config, "kept.h5")
    checked: list[int] = []
    render_dataset(
        tiny_config, out, num_scenes=9, storage=PAIR, resume=True, progress=lambda done, total: checked.append(done)
    )
    assert checked[0] >= 6  # the six stored scenes were trusted, not rendered again
    assert data_bytes(out) == data_bytes(whole)


def test_a_full_disk_while_resuming_is_not_taken_for_damage(
    tmp_path: Path, tiny_config: SceneConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails while the partial file is rebuilt fails the resume as itself; the
    partial file stays trusted (no scene-by-scene check next time) and resumes afterwards."""
    whole, out = stopped_after_six(tmp_path, tiny_config, "full.h5")

    def no_space(self: Any, batch: Any) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(DatasetWriter, "append", no_space)
        with pytest.raises((OSError, ShapesgenError)):
            render_dataset(tiny_config, out, num_scenes=9, storage=PAIR, resume=True)
    with h5py.File(partial_path(out), "r") as f:
        assert f.attrs["clean_stop"] and int(f.attrs["scenes_written"]) == 6
    checked: list[int] = []
    render_dataset(
        tiny_config, out, num_scenes=9, storage=PAIR, resume=True, progress=lambda done, total: checked.append(done)
    )
    assert checked[0] >= 6 and data_bytes(out) == data_bytes(whole)


def test_a_disk_that_cannot_hold_the_next_batch_stops_before_writing_it(
    tmp_path: Path, tiny_config: SceneConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer measures the free space before each batch: a disk that fills up stops the
    render with the scenes written kept, never with a write HDF5 began and could not end."""
    import shapesgen.storage.writer as writer

    whole = render_dataset(tiny_config, tmp_path / "whole.h5", num_scenes=6, storage=PAIR)
    out = tmp_path / "full.h5"
    calls: list[Path] = []

    def filling(folder: Path) -> int:
        calls.append(folder)
        return 10**12 if len(calls) <= 2 else 1000  # room for two batches, then 1,000 bytes

    with monkeypatch.context() as patched:
        patched.setattr(writer, "free_bytes", filling)
        with pytest.raises(ResourceError) as caught:
            render_dataset(tiny_config, out, num_scenes=6, storage=PAIR)
    assert type(caught.value) is ResourceError  # refused before HDF5 began the write: not a FailedWrite
    message = str(caught.value)
    assert "No space left on device:" in message and "KiB to write, 1000 bytes free" in message
    assert "kept with 4 of 6 scenes" in message, message
    assert calls[0] == tmp_path
    render_dataset(tiny_config, out, num_scenes=6, storage=PAIR, resume=True)
    assert data_bytes(out) == data_bytes(whole)


def test_resume_without_room_for_the_rebuild_leaves_the_partial_file_as_it_was(
    tmp_path: Path, tiny_config: SceneConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resuming rebuilds the partial file beside itself: where the disk cannot hold the copy,
    the resume is refused before the file is opened (a rebuild cut short by a full disk
    could leave it unreadable)."""
    import shapesgen.storage.writer as writer

    whole, out = stopped_after_six(tmp_path, tiny_config, "tight.h5")
    partial = partial_path(out)
    kept = partial.read_bytes()
    with monkeypatch.context() as patched:
        patched.setattr(writer, "free_bytes", lambda folder: len(kept))  # the copy fits, its headroom does not
        with pytest.raises(ResourceError) as caught:
            render_dataset(tiny_config, out, num_scenes=9, storage=PAIR, resume=True)
    assert type(caught.value) is ResourceError
    assert str(caught.value).startswith("resuming tight.h5.partial failed (No space left on device: resuming rebuilds")
    assert str(caught.value).endswith("; it is kept: rerun with resume=True")
    assert partial.read_bytes() == kept and not out.exists()
    render_dataset(tiny_config, out, num_scenes=9, storage=PAIR, resume=True)
    assert data_bytes(out) == data_bytes(whole)


def test_a_write_hdf5_began_and_could_not_end_is_a_failed_write(
    tmp_path: Path, tiny_config: SceneConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """h5py names the system error only in a RuntimeError's text: the message gives its words;
    the file this render began and the write broke is removed (nothing in it can be resumed)."""

    def broken(self: Any, batch: Any) -> None:
        self.file.close()
        self.path.write_bytes(b"not HDF5 any more")  # what the failed write left: a file that no longer opens
        raise RuntimeError(
            "Unable to flush dataset (file write failed: time = ..., filename = 'x', file descriptor = 4, "
            "errno = 28, error message = 'No space left on device', buf = 0x1, total write size = 2374)"
        )

    out = tmp_path / "broken.h5"
    with monkeypatch.context() as patched:
        patched.setattr(DatasetWriter, "append", broken)
        with pytest.raises(FailedWrite) as caught:
            render_dataset(tiny_config, out, num_scenes=6, storage=PAIR)
    assert (
        str(caught.value) == "writing broken.h5.partial failed (No space left on device); the file it broke was removed"
    )
    assert sorted(tmp_path.iterdir()) == []


def test_resume_keeps_the_files_storage_settings(tmp_path: Path, tiny_config: SceneConfig) -> None:
    out = tmp_path / "raw.h5"
    with pytest.raises(RenderInterrupted):
        render_dataset(
            tiny_config,
            out,
            num_scenes=6,
            storage=StorageConfig(compression_level=0, batch_scenes=2),
            progress=interrupt_after(2),
        )
    render_dataset(tiny_config, out, num_scenes=6, resume=True)  # default storage asks for gzip 1
    with open_dataset(out) as ds:
        assert ds.images.compression is None
        assert np.array_equal(ds[5].image, render_scene(tiny_config, 5).image)
        assert np.array_equal(ds[5].amodal_masks, render_scene(tiny_config, 5).amodal_masks)


def test_resume_with_a_drawn_seed_keeps_that_seed(tmp_path: Path, tiny_config: SceneConfig) -> None:
    unseeded = tiny_config.replace(seed=None)
    out = tmp_path / "drawn.h5"
    with pytest.raises(RenderInterrupted):
        render_dataset(unseeded, out, num_scenes=4, storage=StorageConfig(batch_scenes=1), progress=interrupt_after(2))
    render_dataset(unseeded, out, num_scenes=4, resume=True)
    with open_dataset(out) as ds:
        seed = ds.seed
        assert np.array_equal(ds[3].image, render_scene(tiny_config.replace(seed=seed), 3).image)


def test_existing_output_needs_force(tmp_path: Path, tiny_config: SceneConfig) -> None:
    out = render_dataset(tiny_config, tmp_path / "x.h5", num_scenes=2)
    with pytest.raises(DatasetError, match="force=True"):
        render_dataset(tiny_config, out, num_scenes=2)
    assert render_dataset(tiny_config, out, num_scenes=2, resume=True) == out  # complete: nothing to do
    render_dataset(tiny_config.replace(seed=12), out, num_scenes=3, force=True)
    with open_dataset(out) as ds:
        assert len(ds) == 3 and ds.seed == 12


def test_unseeded_config_records_the_drawn_seed(tmp_path: Path, tiny_config: SceneConfig) -> None:
    out = render_dataset(tiny_config.replace(seed=None), tmp_path / "s.h5", num_scenes=2)
    with open_dataset(out) as ds:
        assert ds.config.seed == ds.seed >= 0
        assert np.array_equal(ds[1].layers, render_scene(ds.config, 1).layers)


def test_bad_files_get_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        open_dataset(tmp_path / "text.h5")
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = [1, 2]
    with pytest.raises(DatasetError, match="not a shapesgen dataset"):
        open_dataset(tmp_path / "foreign.h5")
    with pytest.raises(DatasetError, match="no such file"):
        open_dataset(tmp_path / "missing.h5")


def test_file_matches_the_golden_schema(tiny_dataset: Path) -> None:
    golden = json.loads((GOLDEN / "schema_tiny.json").read_text())
    with h5py.File(tiny_dataset, "r") as f:
        assert f.attrs["format"] == FORMAT_NAME and f.attrs["format_version"] == FORMAT_VERSION
        assert sorted(f.attrs) == golden["attributes"]
        layout = {
            name: {
                "shape": list(f[name].shape),
                "dtype": f[name].dtype.descr if f[name].dtype.names else str(f[name].dtype),
            }
            for name in sorted(f)
        }
        assert json.loads(json.dumps(layout)) == golden["datasets"]
        assert f["images"].chunks[0] == 1 and f["images"].compression == "gzip"


def test_golden_data_regenerates_exactly() -> None:
    """The checked-in tiny file pins the generator: any change to scene content shows here."""
    with open_dataset(GOLDEN / "tiny.h5") as ds:
        for index in range(len(ds)):
            stored, fresh = ds[index], render_scene(ds.config, index)
            for name in ("image", "layers", "class_layers", "amodal_masks", "visible_masks"):
                assert np.array_equal(getattr(stored, name), getattr(fresh, name)), (index, name)
            for column in ("area", "visible_area", "occlusion_rate", "anchor_x", "angle"):
                assert np.allclose(stored.instances[column], fresh.instances[column], rtol=0, atol=1e-9)


def test_files_of_the_previous_release_still_validate() -> None:
    """tiny.h5 was written when visible areas came from GEOS overlays (format 1.0)."""
    with open_dataset(GOLDEN / "tiny.h5") as ds:
        assert ds.file.attrs["format_version"] == "1.0"
        assert validate_dataset(ds, regenerate=-1) == len(ds)


def test_format_doc_is_generated_from_the_schema() -> None:
    assert (ROOT / "docs" / "format.md").read_text() == format_markdown()


def test_a_worker_death_or_full_disk_keeps_the_written_scenes_for_resume(
    tmp_path: Path, tiny_config: SceneConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure the system causes after scenes were written keeps them (resume finishes
    to the same bytes); it never deletes a partial file that is being resumed."""
    from concurrent.futures.process import BrokenProcessPool

    import shapesgen.build
    from shapesgen.errors import ResourceError

    storage = StorageConfig(batch_scenes=2)
    whole = render_dataset(tiny_config, tmp_path / "whole.h5", num_scenes=9, storage=storage)
    out = tmp_path / "cut.h5"
    with pytest.raises(RenderInterrupted):
        render_dataset(tiny_config, out, num_scenes=9, storage=storage, progress=interrupt_after(4))
    real_batches = shapesgen.build._batches

    def dies_after_one(*args: object, **kwargs: object) -> Any:
        batches = real_batches(*args, **kwargs)  # type: ignore[arg-type]
        yield next(batches)
        raise BrokenProcessPool("A child process terminated abruptly")

    monkeypatch.setattr(shapesgen.build, "_batches", dies_after_one)
    with pytest.raises(ResourceError, match="worker died.*kept with 6 of 9 scenes"):
        render_dataset(tiny_config, out, num_scenes=9, storage=storage, resume=True)
    monkeypatch.setattr(shapesgen.build, "_batches", real_batches)
    render_dataset(tiny_config, out, num_scenes=9, storage=storage, resume=True)
    assert data_bytes(out) == data_bytes(whole)


def test_fresh_renders_are_byte_identical_to_the_pinned_checksums(tmp_path: Path) -> None:
    """Every byte of three configs, pinned (tests/golden/checksums.json): a change to any
    dataset of any scene, the exact-geometry columns included, fails here."""
    pinned = json.loads((GOLDEN / "checksums.json").read_text())
    for name, case in pinned.items():
        config = SceneConfig.from_dict(case["config"])
        path = render_dataset(config, tmp_path / f"{name}.h5", num_scenes=case["num_scenes"])
        with h5py.File(path, "r") as f:
            assert json.loads(f.attrs["checksums"]) == case["checksums"], name


def test_a_json_file_given_as_a_dataset_is_named_as_one(tmp_path: Path) -> None:
    """A COCO export's annotations.json was 'not a readable HDF5 file (...)'."""
    annotations = tmp_path / "annotations.json"
    annotations.write_text('\n  {"images": [], "annotations": []}')
    with pytest.raises(DatasetError, match=r"annotations.json is a JSON file \(a COCO export's annotations\?\)"):
        open_dataset(annotations)
    notes = tmp_path / "notes.txt"
    notes.write_text("images: none\n")
    with pytest.raises(DatasetError, match="notes.txt: not a readable HDF5 file"):
        open_dataset(notes)
