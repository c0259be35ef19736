"""The free-space check: a render too large for the disk is refused before it starts, naming
the --num the user typed; a disk that fills during a sharded render fails that shard, keeps
the shards written, and does not blame --num."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from shapesgen import SceneConfig
from shapesgen.errors import ConfigError, ResourceError
from shapesgen.shards import render_sharded

Usage = namedtuple("Usage", "total used free")


def free_space(monkeypatch: pytest.MonkeyPatch, *free: int) -> None:
    """``shutil.disk_usage`` reports ``free[k]`` bytes on call k (the last one after that)."""
    calls = iter(free)
    last = [free[-1]]

    def usage(path: Any) -> Usage:
        last[0] = next(calls, last[0])
        return Usage(1 << 40, 0, last[0])

    monkeypatch.setattr(shutil, "disk_usage", usage)


def test_a_single_file_too_large_for_the_disk_is_refused_naming_num(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    free_space(monkeypatch, 1000)
    result = run_cli("render", "--instances", 3, "--num", 40, "--out", tmp_path / "deep" / "x.h5")
    assert result.exit_code == 2, result.output
    assert "--num 40 is too large for the free disk space" in result.stderr and "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())


def test_a_sharded_render_too_large_for_the_disk_names_the_num_typed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    free_space(monkeypatch, 1000)
    result = run_cli("render", "--instances", 3, "--num", 40, "--shard-size", 10, "--out", tmp_path / "big")
    assert result.exit_code == 2, result.output
    assert "--num 40 is too large for the free disk space" in result.stderr
    assert "--num 10" not in result.stderr and not any(tmp_path.iterdir())


def test_resuming_a_sharded_render_checks_only_the_scenes_left(
    tiny_config: SceneConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = render_sharded(tiny_config, tmp_path / "big", num_scenes=6, shard_size=3)
    (out / "shard-00001.h5").unlink()
    free_space(monkeypatch, 1000)
    with pytest.raises(ConfigError, match=r"num_scenes=6 leaves 3 scenes to render, which is too much"):
        render_sharded(tiny_config, out, num_scenes=6, shard_size=3)


def test_a_disk_that_fills_during_a_sharded_render_fails_the_shard_not_num(
    tiny_config: SceneConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = tmp_path / "big" / "shard-00000.h5"

    def usage(path: Any) -> Usage:  # the disk is full once shard 0 is written
        return Usage(1 << 40, 0, 1000 if first.exists() else 1 << 40)

    monkeypatch.setattr(shutil, "disk_usage", usage)
    with pytest.raises(ResourceError) as caught:
        render_sharded(tiny_config, tmp_path / "big", num_scenes=9, shard_size=3)
    message = str(caught.value)
    assert "shard-00001.h5: too little free disk space for this shard of 3 scenes: about" in message
    assert "num_scenes" not in message
    assert caught.value.param is None
    assert (tmp_path / "big" / "shard-00000.h5").is_file() and not (tmp_path / "big" / "shard-00001.h5").exists()


def test_each_file_counts_its_hdf5_metadata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The estimate adds FILE_OVERHEAD_BYTES per file written: a sharded render of many small
    shards needs it once per shard (a one-scene file is mostly metadata: ~50 KiB of ~65)."""
    from shapesgen.limits import FILE_OVERHEAD_BYTES, check_disk

    per_scene = 1000.0
    need_one = 10 * per_scene * 1.05 + FILE_OVERHEAD_BYTES
    free_space(monkeypatch, int(need_one) + 1)
    check_disk(tmp_path, 10, per_scene)
    with pytest.raises(ConfigError, match=r"num_scenes=10 is too large .* 138.3 KiB needed"):
        check_disk(tmp_path, 10, per_scene, files=2)
