"""Shared fixtures and helpers: tiny configs, one small rendered dataset per session, a
stub training epoch and a run folder trained with it, and the round-trip / bad-value
harness every config class is tested with."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from shapesgen import ConfigError, SceneConfig
from shapesgen.build import render_dataset

TINY = SceneConfig(image_size=64, mask_size=32, instances_per_class=3, layers=3, seed=11)

# A suite started in the background of a non-interactive shell inherits SIGINT ignored, and so
# would every command it starts (an ignored signal stays ignored across exec): the Ctrl-C tests
# would then test nothing. Python's own handler here gives the commands the default back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def tiny_config() -> SceneConfig:
    return TINY


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 scenes of the tiny config, written once and shared read-only."""
    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    render_dataset(TINY, path, num_scenes=12)
    return path


def damaged_copy(source: Path, copy: Path, dataset: str, row: int) -> Path:
    """``copy``: ``source`` with one row of ``dataset`` inverted (booleans) or zeroed after it
    was written, so the file still reads but no longer matches its checksums."""
    import shutil

    import h5py

    shutil.copyfile(source, copy)
    with h5py.File(copy, "a") as f:
        value = f[dataset][row]
        f[dataset][row] = ~value if value.dtype == bool else value * 0
    return copy


def run_cli(*args: object) -> Any:
    """Run ``shapesgen ARGS`` in-process; the result has ``exit_code``, ``stdout``, ``stderr``."""
    from typer.testing import CliRunner

    from shapesgen_cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def fake_epoch(self: Any, epoch: int, callbacks: Any) -> dict[str, Any]:
    """A stand-in for ``Trainer.run_epoch`` that trains nothing and returns a log row at once
    (checkpoints, publishing and ``model.keras`` stay real)."""
    return {"epoch": epoch + 1, "steps": self.steps, "seconds": 0.0, "images_per_s": 0.0, "loss": 1.0}


def quick_config() -> Any:
    """The tiny training preset, smaller still: one step of one epoch, no evaluation."""
    from amodal_model.config import TRAIN_PRESETS

    return TRAIN_PRESETS["tiny"].replace(
        feature_channels=8,
        head_filters=(8, 4),
        embedding_dim=4,
        epochs=1,
        batch_size=2,
        steps_per_epoch=1,
        eval_every=0,
    )


def stub_trained(dataset: Path, out: Path, config: Any) -> Path:
    """``train(dataset, out, config)`` with :func:`fake_epoch` epochs: a finished run folder
    (real checkpoint and model.keras) in a second."""
    from amodal_model.train import Trainer, train

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "run_epoch", fake_epoch)
        return train(dataset, out, config)


@pytest.fixture(scope="module")
def run_dir(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run folder of :func:`quick_config`, one per test module."""
    return stub_trained(tiny_dataset, tmp_path_factory.mktemp("runs") / "run", quick_config())


def flat_train_config(config: Any) -> dict[str, Any]:
    """``config`` as the one flat JSON object a run's train_config.json held before the
    split by concern (one ``seed``: the optimiser's, which was also the inference one)."""
    return {key.split(".")[1]: value for key, value in reversed(config.settings().items())}


# --- config harness: any frozen config class with to_json/from_json/from_dict/replace ---------------


def assert_one_line(exc: BaseException) -> None:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text, text


def assert_round_trip(config: Any) -> None:
    """``config`` survives to_json -> from_json and to_dict -> from_dict unchanged, and its
    JSON is stable (the same text again, keys sorted)."""
    cls = type(config)
    text = config.to_json()
    again = cls.from_json(text)
    assert again == config and again.to_json() == text
    assert cls.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert list(json.loads(text)) == sorted(json.loads(text))


def assert_unknown_field_refused(cls: type) -> None:
    """An unknown key is one ConfigError naming it, from JSON and from ``replace``; JSON
    that is not an object is one ConfigError too."""
    for make in (lambda: cls.from_dict({"no_such_field": 1}), lambda: cls().replace(no_such_field=1)):
        with pytest.raises(ConfigError) as caught:
            make()
        assert re.match(r"unknown [a-z ]*config field\(s\) \['no_such_field'\]: allowed are ", str(caught.value))
        assert_one_line(caught.value)
    for data in ([], "x", 3, None):
        with pytest.raises(ConfigError, match="must be a JSON object") as caught:
            cls.from_dict(data)
        assert_one_line(caught.value)


def assert_bad_value_refused(make: Any, field: str, message: str) -> None:
    """``make()`` raises one one-line ConfigError that starts with ``message`` and names ``field``."""
    with pytest.raises(ConfigError) as caught:
        make()
    assert str(caught.value).startswith(message), (str(caught.value), message)
    assert caught.value.param == field
    assert_one_line(caught.value)
