"""The separable encoder's ``stem_norm`` switch and the ``cpu-deep`` preset built on it."""

from __future__ import annotations

import keras
import pytest

from amodal_model.config import build_train_config
from amodal_model.model import DataSpec, build_model
from shapesgen import ConfigError

SPEC = DataSpec(64, 1, 16, 2, 3)


def _norm_layers(model: keras.Model) -> dict[str, int]:
    """GroupNorm layers by the side of the map they normalise."""
    sides: dict[str, int] = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.GroupNormalization):
            sides[layer.name] = layer.output.shape[1]
    return sides


def test_stem_norm_off_removes_group_norm_at_stride_2_and_4_only() -> None:
    with_norm = build_model(build_train_config("cpu-fast"), SPEC)
    without = build_model(build_train_config("cpu-fast", stem_norm=False), SPEC)
    fine = {name: side for name, side in _norm_layers(with_norm).items() if side >= SPEC.image_size // 4}
    assert fine, "cpu-fast normalises its stride-2 and stride-4 maps"
    kept = _norm_layers(without)
    assert not set(fine) & set(kept)
    assert kept and all(side == SPEC.image_size // 8 for side in kept.values())
    assert set(kept) == set(_norm_layers(with_norm)) - set(fine)


def test_cpu_deep_is_cpu_fast_with_eight_units_and_no_stem_norm() -> None:
    deep = build_train_config("cpu-deep")
    assert deep == build_train_config("cpu-fast", separable_units=8, stem_norm=False)
    model = build_model(deep, SPEC)
    assert sum(layer.name.endswith("_add") and layer.name.startswith("sep_unit") for layer in model.layers) == 8
    assert sorted(tuple(output.shape[1:]) for output in model.outputs) == [(2, 16, 16, 4), (2, 16, 16, 6)]


def test_stem_norm_is_ignored_by_other_encoders() -> None:
    tiny = build_model(build_train_config("tiny"), SPEC)
    same = build_model(build_train_config("tiny", stem_norm=False), SPEC)
    assert [layer.name for layer in tiny.layers] == [layer.name for layer in same.layers]


@pytest.mark.parametrize("value", [0, "no", None])
def test_stem_norm_must_be_a_boolean(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^stem_norm=.* is invalid: must be true or false$"):
        build_train_config("cpu-fast").replace(stem_norm=value)
