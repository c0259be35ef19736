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


def test_a_resume_never_replaces_the_best_model_after_its_log_was_lost(tiny_dataset: Path, tmp_path: Path) -> None:
    """With metrics.csv gone the best AP read as -1: the next validation replaced best.keras
    whatever its AP. Refused, with nothing in the run changed, when a validation is due;
    a resume without validation goes on and keeps best.keras."""
    from amodal_model.config import TRAIN_PRESETS
    from amodal_model.train import Trainer, train
    from shapesgen.errors import DatasetError

    config = TRAIN_PRESETS["tiny"].replace(epochs=1, steps_per_epoch=1, eval_every=1, eval_scenes=2)
    run = stub_trained(tiny_dataset, tmp_path / "run", config)
    (run / "best.keras").write_bytes((run / "model.keras").read_bytes())  # as a run that validated
    (run / "metrics.csv").unlink()

    def tree() -> dict[str, bytes]:
        return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}

    before = tree()
    with pytest.raises(DatasetError, match="best.keras is kept but metrics.csv records no validation AP"):
        train(tiny_dataset, run, config.replace(epochs=2), val=tiny_dataset, resume=True)
    args = ["train", "--train", tiny_dataset, "--val", tiny_dataset, "--out", run, "--preset", "tiny", "--resume"]
    result = run_cli(*args, "-q", "--epochs", 2, "--steps-per-epoch", 1, "--eval-every", 1, "--eval-scenes", 2)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "best.keras is kept" in result.stderr, result.stderr
    assert tree() == before
    best = (run / "best.keras").read_bytes()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "run_epoch", fake_epoch)
        train(tiny_dataset, run, config.replace(epochs=2), resume=True)  # no validation: nothing to replace it
    assert (run / "best.keras").read_bytes() == best and "2," in (run / "metrics.csv").read_text()


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
