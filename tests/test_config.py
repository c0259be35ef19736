"""Config validation, presets and JSON round trips."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shapesgen import PRESETS, ConfigError, SceneConfig, ShapeSpec
from shapesgen.config import build_config, parse_pair, parse_sizes


def test_paper_preset_matches_the_reference_generator() -> None:
    paper = PRESETS["paper"]
    assert (paper.image_size, paper.mask_size) == (256, 64)
    assert paper.class_names == ("circle", "triangle", "rectangle")
    assert [s.size for s in paper.shapes] == [(0.25,), (0.3,), (0.1, 0.8)]
    assert paper.anchor == "corner" and paper.anchor_range == (0.1, 0.9)
    assert paper.rotation_range == (0.0, 360.0)
    assert paper.outline_pixels == 2  # int(0.01 * 256) as in the reference code
    assert paper.num_instances == 18


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"image_size": 0}, "image_size=0"),
        ({"mask_size": 60}, "mask_size=60"),
        ({"mask_size": 512}, "mask_size=512"),
        ({"instances_per_class": 0}, "instances_per_class=0"),
        ({"instances_per_class": -3}, "instances_per_class=-3"),
        ({"layers": 0}, "layers=0"),
        ({"anchor": "middle"}, "anchor='middle'"),
        ({"anchor_range": (0.9, 0.1)}, "anchor_range"),
        ({"rotation_range": (10.0, 0.0)}, "rotation_range"),
        ({"outline_width": 0.0}, "outline_width=0.0"),
        ({"channels": 2}, "channels=2"),
        ({"seed": -1}, "seed=-1"),
        ({"shapes": ()}, "shapes=()"),
        ({"circle_segments": 3}, "circle_segments=3"),
    ],
)
def test_bad_values_name_the_value(changes: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        SceneConfig(**changes)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kind", "size"), [("blob", (0.1,)), ("circle", (0.1, 0.2)), ("rectangle", (1.5, 0.2)), ("square", (0.0,))]
)
def test_bad_shapes_are_rejected(kind: str, size: tuple) -> None:
    with pytest.raises(ConfigError):
        ShapeSpec(kind=kind, size=size)


def test_duplicate_class_names_are_rejected() -> None:
    with pytest.raises(ConfigError, match="unique"):
        SceneConfig(shapes=(ShapeSpec(kind="circle", size=(0.2,)), ShapeSpec(kind="circle", size=(0.3,))))


@given(
    instances=st.integers(1, 20),
    layers=st.integers(1, 8),
    seed=st.none() | st.integers(0, 2**63 - 1),
    anchor=st.sampled_from(["corner", "center"]),
    preset=st.sampled_from(sorted(PRESETS)),
)
def test_json_round_trip_is_exact(instances: int, layers: int, seed: int | None, anchor: str, preset: str) -> None:
    config = PRESETS[preset].replace(instances_per_class=instances, layers=layers, seed=seed, anchor=anchor)
    text = config.to_json()
    assert SceneConfig.from_json(text) == config
    assert json.loads(text) == json.loads(SceneConfig.from_json(text).to_json())


def test_unknown_fields_in_json_are_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown config field"):
        SceneConfig.from_dict({"image_size": 64, "colour": "red"})


def test_build_config_applies_overrides_and_keeps_the_rest() -> None:
    config = build_config("paper", instances_per_class=12, layers=3, seed=7, sizes={"rectangle": (0.1, 0.5)})
    assert config.instances_per_class == 12 and config.layers == 3 and config.seed == 7
    assert [s.size for s in config.shapes] == [(0.25,), (0.3,), (0.1, 0.5)]
    only = build_config("paper", classes=["circle", "ellipse"])
    assert only.class_names == ("circle", "ellipse")
    with pytest.raises(ConfigError, match="sizes can only be given"):
        build_config("paper", classes=["circle"], sizes={"square": (0.2,)})


def test_option_parsers() -> None:
    assert parse_pair("anchor_range", "0.2,0.8") == (0.2, 0.8)
    assert parse_sizes(["rectangle=0.1x0.8", "circle=0.3"]) == {"rectangle": (0.1, 0.8), "circle": (0.3,)}
    with pytest.raises(ConfigError, match="anchor_range='0.2'"):
        parse_pair("anchor_range", "0.2")
    with pytest.raises(ConfigError, match="rectangle"):
        parse_sizes(["rectangle:0.1"])
