"""Sharded datasets: same scenes and checksums as one file, resume by shard, engines, readers."""

from __future__ import annotations

import filecmp
import json
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from conftest import run_cli

from shapesgen import SceneConfig, engines
from shapesgen.build import render_dataset
from shapesgen.config import StorageConfig
from shapesgen.errors import ConfigError, DatasetError, FailedWrite, ValidationError
from shapesgen.shards import MissingExtra, render_sharded, validate_sharded
from shapesgen.storage.manifest import plan_shards
from shapesgen.storage.reader import open_dataset, open_sharded
from shapesgen.validate import validate_file

NUM = 13
SIZE = 5  # shards of 5, 5 and 3 scenes


@pytest.fixture(autouse=True)
def pinned_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pin the recorded start time (SOURCE_DATE_EPOCH), so two renders give the same file bytes."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, tiny_config: SceneConfig) -> Path:
    path = tmp_path_factory.mktemp("single") / "one.h5"
    render_dataset(tiny_config, path, num_scenes=NUM)
    return path


def _checksums(path: Path) -> dict[str, str]:
    with h5py.File(path, "r") as file:
        sums: dict[str, str] = json.loads(file.attrs["checksums"])
    return sums


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_plan_covers_every_scene_once() -> None:
    shards = plan_shards(13, 5)
    assert [(s.start, s.stop) for s in shards] == [(0, 5), (5, 10), (10, 13)]
    assert [s.file for s in shards] == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]


@pytest.mark.parametrize("shard_size", [1, SIZE, NUM + 4])
def test_sharded_scenes_and_checksums_equal_the_single_file(
    tmp_path: Path, tiny_config: SceneConfig, single: Path, shard_size: int
) -> None:
    folder = render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=shard_size)
    manifest = _manifest(folder)
    assert manifest["checksums"] == _checksums(single)
    assert [s["file"] for s in manifest["shards"]] == [s.file for s in plan_shards(NUM, shard_size)]
    for entry in manifest["shards"]:
        assert entry["checksums"] == _checksums(folder / entry["file"])
    with open_sharded(folder) as sharded, open_dataset(single) as one:
        assert len(sharded) == NUM and sharded.config == one.config
        for index in range(NUM):
            ours, theirs = sharded[index], one[index]
            assert ours.index == theirs.index == index
            for name in ("image", "layers", "class_layers", "amodal_masks", "visible_masks", "vertices"):
                assert np.array_equal(getattr(ours, name), getattr(theirs, name)), (index, name)
            assert ours.instances.tobytes() == theirs.instances.tobytes()
    assert validate_file(folder, regenerate=1) == NUM


def test_a_shard_is_a_valid_file_of_its_scenes(tmp_path: Path, tiny_config: SceneConfig) -> None:
    folder = render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE)
    with open_dataset(folder / "shard-00001.h5") as ds:
        assert ds.first_scene == SIZE and len(ds) == SIZE
        assert set(ds.instances[:]["scene"]) == set(range(SIZE, 2 * SIZE))
    assert validate_file(folder / "shard-00001.h5", regenerate=-1) == SIZE
    exported = run_cli("export", "coco", folder / "shard-00001.h5", "--out", tmp_path / "coco", "-q")
    assert exported.exit_code == 0, exported.stderr


def test_rerun_keeps_verified_shards_and_redoes_damaged_or_missing_ones(
    tmp_path: Path, tiny_config: SceneConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE)
    manifest = (folder / "manifest.json").read_bytes()
    inodes = {p.name: p.stat().st_ino for p in folder.glob("shard-*.h5")}
    (folder / "manifest.json").unlink()  # as if the render had stopped before its end
    (folder / "shard-00002.h5").unlink()
    with h5py.File(folder / "shard-00001.h5", "a") as file:
        file["images"][0] = 0  # damaged after its checksums were recorded

    import shapesgen.build

    rendered: list[int] = []
    original = shapesgen.build.render_dataset

    def counting(*args: object, first_scene: int = 0, **kwargs: object) -> Path:
        rendered.append(first_scene)
        return original(*args, first_scene=first_scene, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(shapesgen.build, "render_dataset", counting)
    render_sharded(tiny_config, folder, num_scenes=NUM, shard_size=SIZE)
    assert sorted(rendered) == [SIZE, 2 * SIZE]
    assert (folder / "shard-00000.h5").stat().st_ino == inodes["shard-00000.h5"]
    assert (folder / "manifest.json").read_bytes() == manifest
    rendered.clear()
    render_sharded(tiny_config, folder, num_scenes=NUM, shard_size=SIZE)  # complete: nothing to render
    assert rendered == [] and (folder / "manifest.json").read_bytes() == manifest


def test_rerun_continues_or_replaces_a_shard_left_partial(
    tmp_path: Path, tiny_config: SceneConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task killed mid-shard leaves ``shard-N.h5.partial``: the next run renders that shard
    again from its first scene, torn or not. That run starts later, yet its shards record the
    start time the kept ones do: the folder is the uninterrupted render's, byte for byte
    (before, the shards rendered again recorded the second run's time)."""
    folder = render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE)
    uninterrupted = tmp_path / "uninterrupted"
    shutil.copytree(folder, uninterrupted)
    (folder / "manifest.json").unlink()
    (folder / "shard-00001.h5").rename(folder / "shard-00001.h5.partial")
    with h5py.File(folder / "shard-00001.h5.partial", "a") as file:
        file.attrs["complete"], file.attrs["clean_stop"] = False, False  # as a hard kill leaves it
    (folder / "shard-00002.h5").unlink()
    (folder / "shard-00002.h5.partial").write_bytes(b"\x89HDF\r\n\x1a\n torn")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1800000000")
    render_sharded(tiny_config, folder, num_scenes=NUM, shard_size=SIZE)
    same_files(folder, uninterrupted)


def test_the_local_pool_writes_the_same_folder_and_reports_scene_by_scene(
    tmp_path: Path, tiny_config: SceneConfig
) -> None:
    """With at least as many shards as workers, the local engine runs one task per shard on a
    pool (each process renders and writes its shard alone): the folder is the one-process
    render's, byte for byte, and the bar reaches the total without going back."""
    one = render_sharded(tiny_config, tmp_path / "one", num_scenes=NUM, shard_size=SIZE)
    shown: list[int] = []
    pooled = render_sharded(
        tiny_config,
        tmp_path / "pooled",
        num_scenes=NUM,
        shard_size=SIZE,
        workers=2,
        progress=lambda done, total: shown.append(done),
    )
    same_files(pooled, one)
    assert shown[-1] == NUM and shown == sorted(shown)


def test_the_local_pool_never_starts_more_processes_than_usable_cores(
    tmp_path: Path, tiny_config: SceneConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shapesgen.build

    monkeypatch.setattr(shapesgen.build, "usable_cores", lambda: 2)
    with pytest.warns(shapesgen.build.RenderNote, match=r"workers=4 lowered to 2 \(2 usable core\(s\)\)"):
        render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE, workers=4)
    assert validate_file(tmp_path / "ds") == NUM


def test_ctrl_c_stops_the_local_pool_mid_shard_and_the_rerun_finishes(tmp_path: Path) -> None:
    """Ctrl-C while the pool's processes are inside their shards (a terminal's SIGINT, to the
    whole process group): the render stops at once, not when the running shards end, in one
    line; only resumable ``.partial`` shards are left, and the same command finishes the
    folder as an uninterrupted render writes it."""
    import subprocess
    import time

    num, size = 3000, 1500  # 2 shards of about 2 s each on one core
    small = ["--image-size", "64", "--mask-size", "32", "--instances", "2", "--layers", "2", "--seed", "5"]
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}

    def command(out: Path) -> list[str]:
        args = ["render", "--out", str(out), "--num", str(num), "--shard-size", str(size), "--workers", "2", "-q"]
        return [sys.executable, "-m", "shapesgen", *args, *small]

    out = tmp_path / "ds"
    proc = subprocess.Popen(command(out), stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out.is_dir() and len(list(out.glob("*.partial"))) == 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.startswith("error: interrupted;") and "kept with 0 of 2 shards written" in stderr, stderr
    assert len(stderr.splitlines()) == 1, stderr
    assert not list(out.glob("*.h5")), sorted(p.name for p in out.iterdir())
    rerun = subprocess.run(command(out), capture_output=True, text=True, env=env, timeout=300, check=False)
    assert rerun.returncode == 0 and rerun.stderr == "", rerun.stderr
    whole = subprocess.run(command(tmp_path / "whole"), capture_output=True, text=True, env=env, timeout=300)
    assert whole.returncode == 0, whole.stderr
    same_files(out, tmp_path / "whole")


def test_a_folder_of_another_render_is_refused(tmp_path: Path, tiny_config: SceneConfig) -> None:
    folder = render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE)
    other = tiny_config.replace(instances_per_class=2)
    with pytest.raises(ConfigError, match="another sharded render .*instances_per_class"):
        render_sharded(other, folder, num_scenes=NUM, shard_size=SIZE)
    with pytest.raises(ConfigError, match="another sharded render .*shard_size"):
        render_sharded(tiny_config, folder, num_scenes=NUM, shard_size=SIZE + 1)
    (folder / "manifest.json").unlink()
    with pytest.raises(ConfigError, match="unfinished render of another config"):
        render_sharded(other, folder, num_scenes=NUM, shard_size=SIZE)
    result = run_cli("render", "--image-size", 64, "--mask-size", 32, "--instances", 2, "--seed", 11,
                     "--num", NUM, "--shard-size", SIZE, "--out", folder, "-q")  # fmt: skip
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "--out" in result.stderr and "another config" in result.stderr


@pytest.mark.parametrize("partial", [False, True])
def test_an_unfinished_render_of_more_scenes_is_not_finished_as_a_smaller_one(
    tmp_path: Path, tiny_config: SceneConfig, partial: bool
) -> None:
    """Finishing it with a smaller num_scenes was accepted and left its later shards behind."""
    folder = render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE)
    (folder / "manifest.json").unlink()  # as a render stopped after its last shard
    (folder / "dataset.h5").unlink()
    if partial:
        (folder / "shard-00002.h5").rename(folder / "shard-00002.h5.partial")
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(
        ConfigError,
        match=r"shards past the 2 that num_scenes=10 and shard_size=5 make \(shard-00002\.h5.*more scenes or smaller",
    ):
        render_sharded(tiny_config, folder, num_scenes=10, shard_size=SIZE)
    assert sorted(p.name for p in folder.iterdir()) == before
    result = run_cli("render", "--image-size", 64, "--mask-size", 32, "--instances", 3, "--seed", 11,
                     "--layers", 3, "--num", 10, "--shard-size", SIZE, "--out", folder, "-q")  # fmt: skip
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "--out" in result.stderr and "--num 10 and --shard-size 5 make" in result.stderr
    render_sharded(tiny_config, folder, num_scenes=NUM, shard_size=SIZE)
    assert validate_sharded(folder) == NUM


def test_a_folder_of_other_files_is_refused(tmp_path: Path, tiny_config: SceneConfig) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="holds other files"):
        render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE)
    assert (tmp_path / "ds" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("name", ["shard-00000.h5", "shard-notes.txt", "shard-00001.h5.partial"])
def test_a_users_file_named_like_a_shard_is_never_rendered_over(
    tmp_path: Path, tiny_config: SceneConfig, name: str
) -> None:
    """A shard's name is not enough to be ours: a shard is an HDF5 file (a ``.partial`` may
    also be empty, its task killed as it began); a user's file so named is refused, kept."""
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / name).write_text("mine")
    with pytest.raises(DatasetError, match=rf"holds other files \({name}\)"):
        render_sharded(tiny_config, folder, num_scenes=NUM, shard_size=SIZE)
    assert (folder / name).read_text() == "mine"


@pytest.mark.parametrize("name", ["dataset.h5", "dataset.h5.partial"])
def test_a_users_file_named_like_the_single_file_view_is_kept(
    tmp_path: Path, tiny_config: SceneConfig, name: str
) -> None:
    """``dataset.h5`` (and its ``.partial``) were taken for ours by name and replaced: a text
    file, and a user's own complete dataset (not a view of shards), are refused and kept."""
    own = render_dataset(tiny_config, tmp_path / "mine.h5", num_scenes=2)
    for content in (b"mine", own.read_bytes()):
        folder = tmp_path / f"ds-{len(content)}"
        folder.mkdir()
        (folder / name).write_bytes(content)
        with pytest.raises(DatasetError, match=rf"holds other files \({name}\)"):
            render_sharded(tiny_config, folder, num_scenes=NUM, shard_size=SIZE)
        assert (folder / name).read_bytes() == content


@pytest.mark.parametrize("name", ["dataset.h5", "dataset.h5.partial"])
def test_a_link_at_the_single_file_views_name_never_reaches_its_target(
    tmp_path: Path, tiny_config: SceneConfig, name: str
) -> None:
    """A link at ``dataset.h5.partial`` made the render truncate and overwrite a file outside the folder."""
    victim = tmp_path / "victim.txt"
    victim.write_text("victim data")
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / name).symlink_to(victim)
    with pytest.raises(DatasetError, match=rf"holds other files \({name}\)"):
        render_sharded(tiny_config, folder, num_scenes=NUM, shard_size=SIZE)
    assert victim.read_text() == "victim data" and (folder / name).is_symlink()


def test_a_rerun_replaces_its_own_single_file_view(tmp_path: Path, tiny_config: SceneConfig) -> None:
    """The checks above still let a render finish a folder whose view it wrote (a rerun of a finished
    render, whose manifest is then removed, rebuilds both)."""
    folder = render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE)
    view = (folder / "dataset.h5").read_bytes()
    (folder / "manifest.json").unlink()
    render_sharded(tiny_config, folder, num_scenes=NUM, shard_size=SIZE)
    assert (folder / "dataset.h5").read_bytes() == view and (folder / "manifest.json").is_file()


def test_a_render_stopped_while_writing_the_single_file_view_finishes_on_a_rerun(
    tmp_path: Path, tiny_config: SceneConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop inside write_virtual left a valid HDF5 dataset.h5.partial without shapesgen's format
    attribute, which the rerun the message asks for refused as another program's file."""
    from shapesgen.storage import manifest

    original, calls = manifest._virtual_dataset, []

    def stopped(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        original(*args, **kwargs)

    monkeypatch.setattr(manifest, "_virtual_dataset", stopped)
    with pytest.raises(Exception, match="rerun the same command to finish it"):
        render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE)
    assert not (tmp_path / "ds" / "dataset.h5.partial").exists()
    monkeypatch.undo()
    render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE)
    assert validate_sharded(tmp_path / "ds", regenerate=0) == NUM


def test_a_users_manifest_is_not_to_be_deleted(tmp_path: Path, tiny_config: SceneConfig) -> None:
    """The advice for a manifest that is not ours was to delete it."""
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"my": "manifest"}')
    with pytest.raises(DatasetError, match="not a shapesgen shard manifest.*give a new folder") as caught:
        render_sharded(tiny_config, folder, num_scenes=NUM, shard_size=SIZE)
    assert "delete" not in str(caught.value)


def test_a_render_of_a_folder_being_rendered_is_told_so(tmp_path: Path, tiny_config: SceneConfig) -> None:
    """A second render of the same folder was told the folder "holds other files" (the first's
    shard being written), exit 2, instead of the lock's "being written by another process"."""
    from shapesgen.errors import ResourceError
    from shapesgen.files import exclusive_lock

    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "shard-00001.h5.partial").write_text("being written")
    with exclusive_lock(folder, "out"), pytest.raises(ResourceError, match="being written by another process"):
        render_sharded(tiny_config, folder, num_scenes=NUM, shard_size=SIZE)


def test_a_write_hdf5_could_not_end_in_a_shard_stays_a_failed_write(
    tmp_path: Path, tiny_config: SceneConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI ends the process at once on a FailedWrite (HDF5's exit handler crashes after
    one): the sharded render's own message, which adds what it kept, must keep that class."""
    from shapesgen.storage.writer import DatasetWriter

    append, calls = DatasetWriter.append, []

    def failing_in_the_second_shard(self: Any, batch: Any) -> None:
        calls.append(self.path.name)
        if self.path.name.startswith("shard-00001"):
            raise RuntimeError("Unable to flush dataset (errno = 28, error message = 'No space left on device')")
        append(self, batch)

    monkeypatch.setattr(DatasetWriter, "append", failing_in_the_second_shard)
    with pytest.raises(FailedWrite) as caught:
        render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE, workers=1)
    assert "No space left on device" in str(caught.value) and "kept with 1 of 3 shards" in str(caught.value)
    monkeypatch.undo()
    render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE, workers=1)
    assert validate_sharded(tmp_path / "ds", regenerate=0) == NUM


def test_an_export_may_go_inside_a_sharded_folder(tmp_path: Path, tiny_config: SceneConfig) -> None:
    folder = render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE)
    result = run_cli("export", "coco", folder, "--out", folder / "coco", "-q")
    assert result.exit_code == 0, result.stderr
    assert (folder / "coco" / "annotations.json").is_file() and validate_sharded(folder, regenerate=0) == NUM


def test_no_sharded_render_or_export_goes_inside_an_export_or_a_sharded_folder(
    tmp_path: Path, tiny_config: SceneConfig
) -> None:
    """A file added to an export breaks its checksums (a later --force over it is refused), one
    added to a sharded folder its next render: both were written there without a word."""
    folder = render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE)
    assert run_cli("export", "coco", folder, "--out", tmp_path / "ex", "-q").exit_code == 0
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    attempts = [
        ("render", "--num", 4, "--shard-size", 2, "--out", tmp_path / "ex" / "shards", "-q"),
        ("render", "--num", 4, "--shard-size", 2, "--out", tmp_path / "ex" / "images" / "shards", "-q"),
        ("render", "--num", 4, "--shard-size", 2, "--out", folder / "inner", "-q"),
        ("export", "coco", folder, "--out", tmp_path / "ex" / "images" / "sub", "-q"),
        ("export", "coco", folder, "--out", tmp_path / "ex" / "sub", "-q"),
    ]
    for args in attempts:
        result = run_cli(*args)
        assert result.exit_code == 2 and "is inside the" in result.stderr, (args, result.output)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_a_finished_folder_keeps_a_users_file_put_in_a_shards_place(tmp_path: Path, tiny_config: SceneConfig) -> None:
    folder = render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE)
    (folder / "shard-00001.h5").write_text("mine")
    with pytest.raises(DatasetError, match="shard-00001.h5 is not an HDF5 file, not a shard: move it out"):
        render_sharded(tiny_config, folder, num_scenes=NUM, shard_size=SIZE)
    assert (folder / "shard-00001.h5").read_text() == "mine"
    (folder / "shard-00001.h5").unlink()
    with h5py.File(folder / "shard-00001.h5", "w") as theirs:  # another program's HDF5 file
        theirs["measurements"] = np.arange(5)
    with pytest.raises(DatasetError, match="shard-00001.h5 is an HDF5 file that shapesgen did not write, not a shard"):
        render_sharded(tiny_config, folder, num_scenes=NUM, shard_size=SIZE)
    with h5py.File(folder / "shard-00001.h5", "r") as theirs:
        assert theirs["measurements"][:].tolist() == [0, 1, 2, 3, 4]
    (folder / "shard-00001.h5").unlink()
    (folder / "shard-00002.h5.partial").write_bytes(b"")  # a task killed as it created its file
    render_sharded(tiny_config, folder, num_scenes=NUM, shard_size=SIZE)
    assert validate_sharded(folder, regenerate=0) == NUM


def test_validate_finds_a_manifest_that_does_not_match(tmp_path: Path, tiny_config: SceneConfig) -> None:
    folder = render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE)
    manifest = _manifest(folder)
    manifest["checksums"]["images"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for workers in (1, 2):
        with pytest.raises(ValidationError, match="whole-dataset checksums"):
            validate_sharded(folder, regenerate=0, workers=workers)
    result = run_cli("validate", folder, "-q", "--workers", 2)
    assert result.exit_code == 1 and "whole-dataset checksums" in result.stderr
    with h5py.File(folder / "shard-00001.h5", "a") as file:
        file["layers"][1] = 0
    with pytest.raises(ValidationError, match="shard shard-00001.h5: .*layers"):
        validate_sharded(folder, regenerate=0, workers=2)


def test_validate_finds_the_single_file_view_missing_and_a_rerun_writes_it(
    tmp_path: Path, tiny_config: SceneConfig
) -> None:
    """validate said OK without it, while export refused the folder."""
    folder = render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE)
    (folder / "dataset.h5").unlink()
    with pytest.raises(ValidationError, match=r"dataset\.h5, the single-file view .* is missing: rerun"):
        validate_sharded(folder, regenerate=0)
    result = run_cli("validate", folder, "-q")
    assert result.exit_code == 1 and "is missing" in result.stderr, result.output
    render_sharded(tiny_config, folder, num_scenes=NUM, shard_size=SIZE)
    assert validate_sharded(folder, regenerate=0) == NUM


def test_a_view_that_is_not_the_shards_fails_validate_and_a_rerun_keeps_it(
    tmp_path: Path, tiny_config: SceneConfig
) -> None:
    """validate checked only the shards; a rerun then replaced a user's file at dataset.h5."""
    folder = render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE)
    other = render_sharded(tiny_config.replace(seed=12), tmp_path / "other", num_scenes=NUM, shard_size=SIZE)
    shutil.copyfile(other / "dataset.h5", folder / "dataset.h5")  # another render's view, same shard names
    with pytest.raises(ValidationError, match="is not the single-file view of these shards"):
        validate_sharded(folder, regenerate=0)
    (folder / "dataset.h5").unlink()
    with h5py.File(folder / "dataset.h5", "w") as file:
        file.create_dataset("mine", data=[1, 2, 3])
    before = (folder / "dataset.h5").read_bytes()
    with pytest.raises(ValidationError, match="is not the single-file view of these shards"):
        validate_sharded(folder, regenerate=0)
    with pytest.raises(DatasetError, match="dataset.h5 is not a file a sharded render wrote .* move it out"):
        render_sharded(tiny_config, folder, num_scenes=NUM, shard_size=SIZE)
    assert (folder / "dataset.h5").read_bytes() == before


def test_a_plain_file_in_the_views_place_is_refused_by_readers_as_by_validate(
    tmp_path: Path, tiny_config: SceneConfig, single: Path
) -> None:
    """Another render's single file copied over dataset.h5 was exported, scored and trained
    on as the folder's data (only a virtual view was checked against the manifest)."""
    folder = render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE)
    render_dataset(tiny_config.replace(seed=12), tmp_path / "other.h5", num_scenes=NUM)
    shutil.copyfile(tmp_path / "other.h5", folder / "dataset.h5")
    with pytest.raises(DatasetError, match="dataset.h5 is not the single-file view of the shards manifest.json"):
        open_dataset(folder)
    for args in (
        ["export", "coco", folder, "--out", tmp_path / "coco"],
        ["evaluate", "--gt", folder, "--oracle-layers", 1],
    ):
        result = run_cli(*args, "-q") if args[0] == "export" else run_cli(*args)
        assert result.exit_code == 2 and "move it out of the folder" in result.stderr, result.output
        assert result.stderr.count("\n") == 1 and not (tmp_path / "coco").exists()
    shutil.copyfile(single, folder / "dataset.h5")  # the same scenes, but not a view: validate refuses it too
    with pytest.raises(DatasetError, match="is not the single-file view"):
        open_dataset(folder)
    with pytest.raises(ValidationError, match="is not the single-file view of these shards"):
        validate_sharded(folder, regenerate=0)
    (folder / "manifest.json").write_text('{"format": "another tool"}')
    with open_dataset(folder / "dataset.h5") as ds:  # beside another program's manifest.json: a plain file
        assert len(ds) == NUM


def test_an_unfinished_sharded_folder_is_named_as_one(tmp_path: Path, tiny_config: SceneConfig) -> None:
    """A killed sharded render's folder (shards, no manifest yet) was called 'a folder, not a
    shapesgen dataset'; a folder of other files still is."""
    folder = render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE)
    (folder / "manifest.json").unlink()
    (folder / "dataset.h5").unlink()
    (folder / "shard-00002.h5").rename(folder / "shard-00002.h5.partial")
    commands = [["info", folder], ["validate", folder], ["export", "coco", folder, "--out", tmp_path / "x"]]
    commands += [["predict", "--model", "paper6-2layers", "--data", folder, "--out", tmp_path / "p.json"]]
    commands += [["train", "--train", folder, "--out", tmp_path / "run", "--preset", "tiny"]]
    for command in commands:
        result = run_cli(*command)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
        assert "is an unfinished sharded render" in result.stderr and "rerun its render command" in result.stderr
    for name in ("shard-00000.h5", "shard-00001.h5"):
        (folder / name).unlink()
    with pytest.raises(DatasetError, match="is an unfinished sharded render"):
        open_dataset(folder)
    (folder / "shard-00002.h5.partial").rename(folder / "shard-notes.h5")
    with pytest.raises(DatasetError, match="is a folder, not a shapesgen dataset"):
        open_dataset(folder)


def test_no_sharded_render_or_export_goes_into_a_training_runs_entries(
    tmp_path: Path, run_dir: Path, tiny_dataset: Path
) -> None:
    before = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    for entry in ("checkpoints", "tensorboard"):
        result = run_cli("render", "--num", 2, "--shard-size", 1, "--out", run_dir / entry / "shards", "-q")
        assert result.exit_code == 2 and "--out" in result.stderr, result.output
        result = run_cli("export", "coco", tiny_dataset, "--out", run_dir / entry / "coco", "-q")
        assert result.exit_code == 2 and "--out" in result.stderr, result.output
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == before


def test_the_virtual_file_reads_as_the_single_file(tmp_path: Path, tiny_config: SceneConfig, single: Path) -> None:
    """dataset.h5 maps the shards' rows end to end: plain h5py sees the single file's arrays."""
    folder = render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE)
    assert _manifest(folder)["virtual"] == "dataset.h5"
    with h5py.File(folder / "dataset.h5", "r") as ours, h5py.File(single, "r") as theirs:
        assert sorted(ours) == sorted(theirs)
        for name in theirs:
            assert ours[name][()].tobytes() == theirs[name][()].tobytes(), name
        assert json.loads(ours.attrs["checksums"]) == _checksums(single) and "first_scene" not in ours.attrs
    with open_dataset(folder) as ds:  # a sharded folder opens as its virtual file
        assert ds.path == folder / "dataset.h5" and len(ds) == NUM and ds[NUM - 1].index == NUM - 1
    assert validate_file(folder / "dataset.h5", regenerate=1) == NUM
    exported = run_cli("export", "coco", folder, "--out", tmp_path / "coco", "-q")
    assert exported.exit_code == 0, exported.stderr


def test_the_virtual_file_refuses_a_missing_shard(tmp_path: Path, tiny_config: SceneConfig) -> None:
    folder = render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE)
    (folder / "shard-00001.h5").unlink()  # HDF5 alone would read its rows as zeros
    with pytest.raises(DatasetError, match="maps shard-00001.h5, which is missing"):
        open_dataset(folder)
    result = run_cli("evaluate", "--gt", folder, "--oracle-layers", 1)
    assert result.exit_code == 2 and "maps shard-00001.h5, which is missing" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_renders_shows_and_validates_a_sharded_folder(tmp_path: Path, single: Path) -> None:
    out = tmp_path / "ds"
    result = run_cli("render", "--image-size", 64, "--mask-size", 32, "--instances", 3, "--layers", 3,
                     "--seed", 11, "--num", NUM, "--shard-size", SIZE, "--out", out, "-q")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert _manifest(out)["checksums"] == _checksums(single)
    info = run_cli("info", out, "--json")
    assert info.exit_code == 0, info.stderr
    summary, one = json.loads(info.stdout), json.loads(run_cli("info", single, "--json").stdout)
    for key in ("scenes", "instances", "visible_instances", "per_class", "occlusion_bands", "stack_depth_pixels"):
        assert summary[key] == one[key], key
    assert summary["shards"] == 3 and summary["mean_occlusion_rate"] == pytest.approx(one["mean_occlusion_rate"])
    checked = run_cli("validate", out, "-q")
    assert checked.exit_code == 0 and f"({NUM} scenes" in " ".join(checked.stdout.split())


def test_cli_refuses_engine_options_without_shards(tmp_path: Path) -> None:
    result = run_cli("render", "--num", 3, "--engine", "dask", "--out", tmp_path / "x.h5")
    assert result.exit_code == 2 and "--engine needs --shard-size" in result.stderr
    result = run_cli("render", "--num", 3, "--shard-size", 2, "--split", "val", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "--split" in result.stderr
    result = run_cli("render", "--num", 3, "--shard-size", 2, "--coco", tmp_path / "c", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "does not take --coco yet (export the folder afterwards" in result.stderr
    result = run_cli(
        "render", "--num", 3, "--shard-size", 2, "--scheduler", "tcp://127.0.0.1:1", "--out", tmp_path / "x"
    )
    assert result.exit_code == 2 and "--scheduler 'tcp://127.0.0.1:1' needs --engine 'dask'" in result.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.h5").exists()


def test_missing_dask_says_how_to_install_it(
    tmp_path: Path, tiny_config: SceneConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # import fails as if it were not installed
    with pytest.raises(MissingExtra, match=r"pip install 'shapesgen\[dask\]'"):
        render_sharded(tiny_config, tmp_path / "ds", num_scenes=3, shard_size=2, engine="dask")
    result = run_cli("render", "--num", 3, "--shard-size", 2, "--engine", "dask", "--out", tmp_path / "ds")
    assert result.exit_code == 1 and "pip install 'shapesgen[dask]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "ds").exists()


def same_files(a: Path, b: Path) -> None:
    """Two folders hold the same file names, each byte for byte (an HDF5 pair that differs is
    described: which datasets' data, chunk sizes or attributes)."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert filecmp.cmp(a / name, b / name, shallow=False), (name, hdf5_difference(a / name, b / name))


def hdf5_difference(a: Path, b: Path) -> list[str]:
    """Where two HDF5 files differ: dataset data, per-chunk stored sizes, attributes; and the
    first differing byte offsets of the files themselves."""
    first, second = a.read_bytes(), b.read_bytes()
    found = [f"sizes {len(first)} {len(second)}"]
    found.append(f"bytes differ at {[i for i, (x, y) in enumerate(zip(first, second, strict=False)) if x != y][:8]}")
    if not a.name.endswith(".h5"):
        return found
    with h5py.File(a, "r") as x, h5py.File(b, "r") as y:
        found += [f"attr {k}" for k in x.attrs if str(x.attrs[k]) != str(y.attrs.get(k))]
        for key in x:
            if x[key][()].tobytes() != y[key][()].tobytes():
                found.append(f"data {key}")
            if x[key].chunks and not x[key].is_virtual:
                for i in range(x[key].id.get_num_chunks()):
                    cx, cy = x[key].id.get_chunk_info(i), y[key].id.get_chunk_info(i)
                    if (cx.size, cx.byte_offset) != (cy.size, cy.byte_offset):
                        found.append(f"chunk {key}[{i}] {cx.size}@{cx.byte_offset} vs {cy.size}@{cy.byte_offset}")
    return found


def test_dask_cluster_writes_the_same_data_and_fails_cleanly(
    tmp_path: Path, tiny_config: SceneConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real dask.distributed LocalCluster with 2 worker processes: the shard files and the
    manifest are the local engine's, byte for byte; a shard that is bad input fails the run."""
    distributed = pytest.importorskip("dask.distributed")
    # Every count published (workers get the period from the client): a tiny shard renders
    # faster than the 0.25 s default, which would make the scene-by-scene check depend on timing.
    monkeypatch.setattr(engines, "REPORT_EVERY_S", 0.0)
    storage = StorageConfig(batch_scenes=2)  # 3 batches a shard; 3 shards: the local engine runs a pool of 2
    local = render_sharded(tiny_config, tmp_path / "local", num_scenes=NUM, shard_size=SIZE, workers=2, storage=storage)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.CRITICAL
    ) as cluster:
        address = cluster.scheduler_address
        done: list[int] = []
        on_dask = render_sharded(
            tiny_config,
            tmp_path / "dask",
            num_scenes=NUM,
            shard_size=SIZE,
            engine="dask",
            scheduler=address,
            storage=storage,
            progress=lambda n, total: done.append(n),
        )
        same_files(local, on_dask)
        assert done[-1] == NUM and done == sorted(done)
        # the bar moves scene by scene: a count that no set of whole shards (5, 5, 3) adds up to
        assert set(done) - {0, 3, 5, 8, 10, 13}, done
        # export on Dask, one task per shard: the local single-process export, byte for byte
        from shapesgen.coco import ExportConfig, export_coco

        export = ExportConfig(style="aistron", layers_png=True)
        exported: list[int] = []
        ours = export_coco(
            on_dask,
            tmp_path / "e-dask",
            export,
            engine="dask",
            scheduler=address,
            progress=lambda n, t: exported.append(n),
        )
        theirs = export_coco(local, tmp_path / "e-local", export)
        assert exported[-1] == NUM
        assert sorted(p.relative_to(ours) for p in ours.rglob("*")) == sorted(
            p.relative_to(theirs) for p in theirs.rglob("*")
        )
        assert all(filecmp.cmp(p, theirs / p.relative_to(ours), shallow=False) for p in ours.rglob("*") if p.is_file())
        # a worker killed mid-render: Dask runs its shard again elsewhere; nothing is lost or duplicated
        client = distributed.Client(address)
        pids = client.run(os.getpid)
        killed: list[int] = []

        def kill_one(n: int, total: int) -> None:
            busy = [worker for worker, keys in client.processing().items() if keys]
            if n and not killed and busy:
                killed.append(pids[busy[0]])
                os.kill(pids[busy[0]], signal.SIGKILL)

        many = 8 * SIZE
        survived = render_sharded(
            tiny_config, tmp_path / "killed", num_scenes=many, shard_size=SIZE, engine="dask",
            scheduler=address, progress=kill_one,
        )  # fmt: skip
        client.close()
        assert killed
        reference = render_sharded(tiny_config, tmp_path / "reference", num_scenes=many, shard_size=SIZE)
        same_files(survived, reference)  # the killed worker's shard rendered again, to the same bytes
        # a folder whose shard 0 holds another scene range: the task refuses it, the run ends with that line
        bad = render_sharded(tiny_config, tmp_path / "bad", num_scenes=NUM, shard_size=2)
        (bad / "manifest.json").unlink()
        for past_the_plan in range(len(plan_shards(NUM, SIZE)), len(plan_shards(NUM, 2))):
            (bad / f"shard-{past_the_plan:05d}.h5").unlink()  # else refused before any task starts
        with pytest.raises(ConfigError, match=r"shard-0000\d.h5 holds scenes \d+\.\.\d+, the plan asks"):
            render_sharded(tiny_config, bad, num_scenes=NUM, shard_size=SIZE, engine="dask", scheduler=address)


def test_a_shard_of_another_render_copied_in_is_never_read_as_ours(tmp_path: Path, tiny_config: SceneConfig) -> None:
    """dataset.h5 maps shards by name: a shard of another seed copied over one of ours has the
    same shapes, and HDF5 alone reads its scenes as this dataset's. Opening checks every shard's
    checksums against the manifest; the render refuses to delete it, saying what to do."""
    folder = render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE)
    other = render_sharded(tiny_config.replace(seed=12), tmp_path / "other", num_scenes=NUM, shard_size=SIZE)
    (folder / "shard-00001.h5").write_bytes((other / "shard-00001.h5").read_bytes())
    with pytest.raises(DatasetError, match="shard shard-00001.h5 is not the one manifest.json lists"):
        open_dataset(folder)
    result = run_cli("preview", folder, "--start", SIZE, "--out", tmp_path / "p.png")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "p.png").exists()
    with pytest.raises(ConfigError, match="seed: 12 there vs 11.*move it out of .* to render this shard again"):
        render_sharded(tiny_config, folder, num_scenes=NUM, shard_size=SIZE)
    (folder / "shard-00001.h5").write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    with pytest.raises(DatasetError, match="shard shard-00001.h5 cannot be read"):
        open_dataset(folder)


def test_an_unfinished_render_is_not_finished_with_another_storage(tmp_path: Path, tiny_config: SceneConfig) -> None:
    """Finishing it with another --compression wrote the rest at that level, and a manifest
    saying every shard was; validate, the readers and info check each shard's storage too."""
    folder = render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE)
    for name in ("manifest.json", "dataset.h5", "shard-00002.h5"):
        (folder / name).unlink()  # as a render stopped after two shards
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(
        ConfigError,
        match=r"unfinished render with another storage \(compression_level: 2 there vs 9 asked, in shard-00000",
    ):
        render_sharded(tiny_config, folder, num_scenes=NUM, shard_size=SIZE, storage=StorageConfig(compression_level=9))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    result = run_cli("render", "--image-size", 64, "--mask-size", 32, "--instances", 3, "--seed", 11, "--layers", 3,
                     "--num", NUM, "--shard-size", SIZE, "--compression", 9, "--out", folder, "-q")  # fmt: skip
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "--out" in result.stderr and "another storage" in result.stderr
    render_sharded(tiny_config, folder, num_scenes=NUM, shard_size=SIZE)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["storage"]["compression_level"] = 9  # a manifest that lies about its shards
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValidationError, match="shard shard-00000.h5: .* another storage"):
        validate_sharded(folder)
    with pytest.raises(ConfigError, match="another storage"):
        with open_sharded(folder) as ds:
            ds.shard(0)
    for storage in (None, "x", {"compression_level": 99}):
        if storage is None:
            del manifest["storage"]
        else:
            manifest["storage"] = storage
        (folder / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(DatasetError, match=r"manifest.json: damaged manifest \(.*(storage|compression_level)"):
            validate_sharded(folder)


def test_a_damaged_manifest_says_how_to_rebuild_it(tmp_path: Path, tiny_config: SceneConfig) -> None:
    folder = render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE)
    expected = (folder / "manifest.json").read_bytes()
    (folder / "manifest.json").write_text('{"format": "shapesgen-shards", ')
    with pytest.raises(DatasetError, match="cannot be read as JSON.*delete it and rerun"):
        render_sharded(tiny_config, folder, num_scenes=NUM, shard_size=SIZE)
    (folder / "manifest.json").unlink()
    render_sharded(tiny_config, folder, num_scenes=NUM, shard_size=SIZE)
    assert (folder / "manifest.json").read_bytes() == expected


def test_a_full_disk_mid_render_keeps_the_shards_written(
    tmp_path: Path, tiny_config: SceneConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from shapesgen.errors import ResourceError
    from shapesgen.storage.writer import DatasetWriter

    append = DatasetWriter.append

    def full(self: DatasetWriter, batch: object) -> None:
        if self.first_scene >= 2 * SIZE:
            raise OSError(errno.ENOSPC, "HDF5's paragraph about a failed chunk write")
        append(self, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(DatasetWriter, "append", full)
    with pytest.raises(ResourceError) as caught:
        render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE)
    assert "shard-00002.h5.partial failed (No space left on device)" in str(caught.value)
    assert "kept with 2 of 3 shards written: rerun the same command" in str(caught.value)
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["shard-00000.h5", "shard-00001.h5"]


def test_a_writer_whose_close_fails_is_closed_and_never_used_again(
    tmp_path: Path, tiny_config: SceneConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a full disk the clean-stop mark fails too; using that file again crashed the process
    (HDF5 segfaults in a file whose close failed): close() closes it anyway, once."""
    from shapesgen.storage.writer import DatasetWriter

    writer = DatasetWriter(tmp_path / "x.h5", tiny_config, StorageConfig(), 4, verify=lambda *a: {})

    def refuse(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(h5py.AttributeManager, "__setitem__", refuse)
    with pytest.raises(OSError):
        writer.close()
    assert not writer.file.id.valid
    writer.close()  # the render's error path closes again: nothing to do


def test_a_users_hdf5_file_named_like_a_shard_in_an_unfinished_folder_is_kept(
    tmp_path: Path, tiny_config: SceneConfig
) -> None:
    folder = tmp_path / "ds"
    folder.mkdir()
    with h5py.File(folder / "shard-00000.h5", "w") as theirs:
        theirs["measurements"] = np.arange(3)
    with pytest.raises(DatasetError, match=r"holds other files \(shard-00000.h5\)"):
        render_sharded(tiny_config, folder, num_scenes=NUM, shard_size=SIZE)
    with h5py.File(folder / "shard-00000.h5", "r") as theirs:
        assert theirs["measurements"][:].tolist() == [0, 1, 2]


def test_a_finished_folder_keeps_a_users_link_in_a_shards_place_even_a_dangling_one(
    tmp_path: Path, tiny_config: SceneConfig
) -> None:
    folder = render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE)
    (folder / "shard-00001.h5").unlink()
    (folder / "shard-00001.h5").symlink_to(tmp_path / "nowhere.h5")
    with pytest.raises(DatasetError, match="shard-00001.h5 is a symbolic link, not a shard: move it out"):
        render_sharded(tiny_config, folder, num_scenes=NUM, shard_size=SIZE)
    assert (folder / "shard-00001.h5").is_symlink() and not (tmp_path / "nowhere.h5").exists()


def test_no_output_goes_inside_a_sharded_folder_whose_render_is_unfinished(
    tmp_path: Path, tiny_config: SceneConfig, single: Path
) -> None:
    """Before its manifest exists a stopped render's folder holds only shards: an output put
    there was accepted, and the resume then refused the folder for the stray file."""
    folder = render_sharded(tiny_config, tmp_path / "ds", num_scenes=NUM, shard_size=SIZE)
    finished = {p.name: p.read_bytes() for p in folder.iterdir()}
    (folder / "manifest.json").unlink()
    (folder / "dataset.h5").unlink()
    before = sorted(p.name for p in folder.iterdir())
    attempts = [
        ("render", "--num", 4, "--shard-size", 2, "--out", folder / "inner", "-q"),
        ("render", "--num", 4, "--out", folder / "one.h5", "-q"),
        ("evaluate", "--gt", single, "--oracle-layers", 1, "--json", folder / "metrics.json"),
    ]
    for args in attempts:
        result = run_cli(*args)
        assert result.exit_code == 2 and "is inside the sharded dataset" in result.stderr, (args, result.output)
    assert sorted(p.name for p in folder.iterdir()) == before
    render_sharded(tiny_config, folder, num_scenes=NUM, shard_size=SIZE)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == finished


def test_a_folder_with_a_users_file_named_like_a_shard_takes_outputs(tmp_path: Path, single: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "shard-00000.h5").write_text("my notes")
    result = run_cli("evaluate", "--gt", single, "--oracle-layers", 1, "--json", folder / "metrics.json")
    assert result.exit_code == 0, result.stderr
    assert (folder / "metrics.json").is_file() and (folder / "shard-00000.h5").read_text() == "my notes"
