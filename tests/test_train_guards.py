"""``train`` refuses what would misstate or damage: a resume on another dataset of the same
shapes (the run's scene_config.json kept naming the first one), and a run folder written
inside the export it trains on (its checksum list then failed the next export)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY, fake_epoch, quick_config, run_cli, stub_trained

from shapesgen.build import render_dataset
from shapesgen.errors import ConfigError


def test_resume_on_another_dataset_of_the_same_shapes_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    from amodal_model.train import Trainer, train

    run = stub_trained(tiny_dataset, tmp_path / "run", quick_config())
    recorded = (run / "scene_config.json").read_bytes()
    other = render_dataset(TINY.replace(seed=12), tmp_path / "other.h5", num_scenes=4)
    with pytest.raises(ConfigError, match="another dataset than .* seed=12, the run's seed=11"):
        train(other, run, quick_config().replace(epochs=2), resume=True)
    assert (run / "scene_config.json").read_bytes() == recorded
    more = render_dataset(TINY, tmp_path / "more.h5", num_scenes=16)  # more scenes of the same data
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "run_epoch", fake_epoch)
        train(more, run, quick_config().replace(epochs=2), resume=True)
    assert "2," in (run / "metrics.csv").read_text()


def test_a_run_is_not_written_inside_an_export(tiny_dataset: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    assert run_cli("export", "coco", tiny_dataset, "--out", export).exit_code == 0
    before = sorted(p.name for p in export.iterdir())
    for out in (export / "run", export / "images" / "run"):
        result = run_cli("train", "--train", export, "--out", out, "--epochs", 1, "--steps-per-epoch", 1, "-q")
        assert result.exit_code == 2, result.output
        assert "is inside the export" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in export.iterdir()) == before
    assert not (export / "images" / "run").exists()
