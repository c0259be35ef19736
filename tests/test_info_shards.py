"""``shapesgen info`` of a sharded folder: its shards read in parallel, the same summary as read one by one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from shapesgen import SceneConfig
from shapesgen.errors import DatasetError
from shapesgen.shards import render_sharded, summarize_sharded
from shapesgen.stats import summarize_file


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, tiny_config: SceneConfig) -> Path:
    return render_sharded(tiny_config, tmp_path_factory.mktemp("info") / "ds", num_scenes=13, shard_size=4)


def test_parallel_info_is_the_serial_summary(folder: Path) -> None:
    serial = summarize_file(folder)
    assert summarize_sharded(folder, workers=2) == serial == summarize_sharded(folder)
    assert serial["shards"] == 4 and serial["scenes"] == 13
    one, two = run_cli("info", folder, "--json"), run_cli("info", folder, "--json", "--workers", 2)
    assert one.exit_code == two.exit_code == 0, one.stderr + two.stderr
    assert json.loads(one.stdout) == json.loads(two.stdout) == json.loads(json.dumps(serial))
    table, parallel = run_cli("info", folder), run_cli("info", folder, "--workers", 3)
    assert table.exit_code == parallel.exit_code == 0 and table.stdout == parallel.stdout


@pytest.mark.parametrize("workers", [1, 2])
def test_a_shard_of_another_render_fails_info_in_one_line(
    tmp_path: Path, tiny_config: SceneConfig, folder: Path, workers: int
) -> None:
    other = render_sharded(tiny_config.replace(seed=12), tmp_path / "other", num_scenes=13, shard_size=4)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for path in folder.iterdir():
        (mixed / path.name).write_bytes(path.read_bytes())
    (mixed / "shard-00002.h5").write_bytes((other / "shard-00002.h5").read_bytes())
    with pytest.raises(DatasetError, match=r"shard-00002.h5 was rendered with another config \(seed: 12 there vs 11\)"):
        summarize_sharded(mixed, workers=workers)
    result = run_cli("info", mixed, "--workers", workers)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "seed: 12 there vs 11" in result.stderr and result.stdout == ""
