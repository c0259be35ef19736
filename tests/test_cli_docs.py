"""docs/cli.md is generated from the commands; it must match them."""

from __future__ import annotations

from pathlib import Path

from shapesgen_cli.app import app
from shapesgen_cli.reference import cli_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_matches_the_commands() -> None:
    assert (ROOT / "docs" / "cli.md").read_text() == cli_markdown(app), "run `make docs`"


def test_every_option_is_documented_with_help() -> None:
    text = cli_markdown(app)
    for line in text.splitlines():
        if line.startswith("| `"):
            assert not line.rstrip().endswith("|  |"), f"an option without help: {line}"


def test_choice_types_list_exactly_the_registered_presets() -> None:
    import typing

    from amodal_model.config import TRAIN_PRESETS, TrainPresetName
    from shapesgen.config import PRESETS, PresetName

    assert list(typing.get_args(PresetName)) == list(PRESETS)
    assert list(typing.get_args(TrainPresetName)) == list(TRAIN_PRESETS)
