"""No command's output may overwrite a training run's own files, even with --force: predict
into another run's model.keras, evaluate --json onto a run's train_config.json, and preview onto
its metrics.csv each destroyed a trained run before. Results beside them are fine."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import run_cli

from shapesgen.files import RUN_OWNED


@pytest.fixture(scope="module")
def other_run(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second finished run: the one the outputs aim at."""
    copy = tmp_path_factory.mktemp("other") / "run2"
    shutil.copytree(run_dir, copy)
    return copy


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("entry", ["model.keras", "train_config.json", "checkpoints/checkpoint"])
def test_predict_refuses_another_runs_files(tiny_dataset: Path, run_dir: Path, other_run: Path, entry: str) -> None:
    before = snapshot(other_run)
    out = other_run / entry
    result = run_cli("predict", "--model", run_dir, "--data", tiny_dataset, "--out", out, "--force", "-q")
    assert result.exit_code == 2, result.output
    assert "of the training run" in result.stderr and "Traceback" not in result.stderr
    assert snapshot(other_run) == before


def test_evaluate_and_preview_refuse_a_runs_files(tiny_dataset: Path, other_run: Path, tmp_path: Path) -> None:
    before = snapshot(other_run)
    target = other_run / "train_config.json"
    result = run_cli("evaluate", "--gt", tiny_dataset, "--oracle-layers", 2, "--json", target, "--force")
    assert result.exit_code == 2 and "--json" in result.stderr and "of the training run" in result.stderr
    result = run_cli("preview", tiny_dataset, "--out", other_run / "metrics.csv", "--force")
    assert result.exit_code == 2 and "of the training run" in result.stderr, result.output
    assert snapshot(other_run) == before
    beside = other_run / "oracle.json"
    assert run_cli("evaluate", "--gt", tiny_dataset, "--oracle-layers", 2, "--json", beside).exit_code == 0
    assert beside.is_file()


def test_every_entry_train_writes_is_protected(run_dir: Path) -> None:
    from amodal_model.train import RUN_ENTRIES

    assert {name for name in RUN_ENTRIES if ".partial" not in name} <= set(RUN_OWNED)
    assert {p.name for p in run_dir.iterdir()} <= set(RUN_OWNED)
