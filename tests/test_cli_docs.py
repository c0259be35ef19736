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


def test_train_help_gives_the_presets_real_defaults() -> None:
    """The help said "(paper: 2)" and "(paper: 1e-4)" where cpu-deep trains with 8 and 0.002."""
    from amodal_model.config import TRAIN_PRESETS
    from shapesgen_cli.model import preset_default

    assert preset_default("epochs") == f"default: {TRAIN_PRESETS['paper'].optimiser.epochs}"
    batch = preset_default("batch_size")
    for name, config in TRAIN_PRESETS.items():
        assert f"{config.optimiser.batch_size} (" in batch and name in batch
    text = cli_markdown(app)
    assert "(paper: 2)" not in text and "default: the preset's" in text
