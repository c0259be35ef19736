"""Shared fixtures: tiny configs and one small rendered dataset per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shapesgen import SceneConfig
from shapesgen.build import render_dataset

TINY = SceneConfig(image_size=64, mask_size=32, instances_per_class=3, layers=3, seed=11)


@pytest.fixture(scope="session")
def tiny_config() -> SceneConfig:
    return TINY


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 scenes of the tiny config, written once and shared read-only."""
    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    render_dataset(TINY, path, num_scenes=12)
    return path


def run_cli(*args: object) -> Any:
    """Run ``shapesgen ARGS`` in-process; the result has ``exit_code``, ``stdout``, ``stderr``."""
    from typer.testing import CliRunner

    from shapesgen_cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])
