"""The separable encoder's switches (``stem_norm``, ``stem``, ``unit_norm``, ``norm_free_bias``) and the
presets built on them."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from amodal_model.backbones import space_to_depth
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


def test_space_to_depth_is_lossless_and_orders_channels_as_tensorflow_does() -> None:
    """Each 4 x 4 patch becomes one position's channels, row-major within the patch."""
    for channels in (1, 3):
        inputs = keras.Input((16, 16, channels))
        model = keras.Model(inputs, space_to_depth(inputs, 4, "s2d"))
        x = np.random.default_rng(channels).uniform(size=(2, 16, 16, channels)).astype(np.float32)
        out = model(x).numpy()
        assert out.shape == (2, 4, 4, 16 * channels)
        assert np.array_equal(out, tf.nn.space_to_depth(x, 4).numpy())
        assert np.array_equal(np.sort(out.ravel()), np.sort(x.ravel()))


def _unit_stack(model: keras.Model) -> keras.Model:
    """The stride-8 stage of an 8-unit encoder: its input and the last residual unit's sum."""
    ends = [model.get_layer(name).output for name in ("sep_down_pw_relu", "sep_unit8_add")]
    return keras.Model(model.inputs, ends)


def _unit_norms(model: keras.Model) -> list[str]:
    return [name for name in _norm_layers(model) if name.startswith("sep_unit")]


def test_unit_norm_pointwise_keeps_one_group_norm_per_unit() -> None:
    model = build_model(build_train_config("cpu-deep", unit_norm="pointwise"), SPEC)
    assert sorted(_unit_norms(model)) == sorted(f"sep_unit{i}_pw_gn" for i in range(1, 9))
    assert not [layer for layer in model.layers if layer.name.endswith("_scale")]
    both = _unit_norms(build_model(build_train_config("cpu-deep"), SPEC))
    assert sorted(both) == sorted(f"sep_unit{i}_{kind}_gn" for i in range(1, 9) for kind in ("dw", "pw"))


def test_unit_norm_none_drops_group_norm_from_the_units_and_starts_them_as_the_identity() -> None:
    lean = build_train_config("cpu-deep", unit_norm="none", precision="float32")
    model = build_model(lean, SPEC)
    assert not _unit_norms(model) and _unit_norms(build_model(build_train_config("cpu-deep"), SPEC))
    scales = [layer for layer in model.layers if layer.name.endswith("_scale")]
    assert len(scales) == 8 and all(float(layer.scale.numpy()) == 0.0 for layer in scales)
    x = np.random.default_rng(0).uniform(0, 255, (2, *[SPEC.image_size] * 2, 1)).astype(np.float32)
    before, after = (out.numpy() for out in _unit_stack(model)(x))
    assert np.array_equal(before, after), "SkipInit scales start at 0: the units add nothing"
    for layer in scales:
        layer.scale.assign(0.5)
    before, after = (out.numpy() for out in _unit_stack(model)(x))
    assert not np.array_equal(before, after)


def test_space_to_depth_stem_and_skipinit_units_save_and_load_to_the_same_outputs(tmp_path: Path) -> None:
    lean = build_train_config("cpu-lean", precision="float32")
    assert lean == build_train_config("cpu-deep", stem="space_to_depth", unit_norm="pointwise", precision="float32")
    model = build_model(lean.replace(unit_norm="none"), SPEC)  # its SkipInit scales saved and loaded too
    names = [layer.name for layer in model.layers]
    assert "sep_s2d_stack" in names and "sep_entry_conv" not in names
    for i, layer in enumerate(layer for layer in model.layers if layer.name.endswith("_scale")):
        layer.scale.assign(0.1 * (i + 1))
    model.save(tmp_path / "lean.keras")
    loaded = keras.saving.load_model(tmp_path / "lean.keras")
    x = np.random.default_rng(1).uniform(0, 255, (2, *[SPEC.image_size] * 2, 1)).astype(np.float32)
    for key in ("semantic", "embedding"):
        assert np.array_equal(model(x)[key].numpy(), loaded(x)[key].numpy())


def test_stem_and_unit_norm_are_ignored_by_other_encoders() -> None:
    tiny = build_model(build_train_config("tiny"), SPEC)
    same = build_model(build_train_config("tiny", stem="space_to_depth", unit_norm="none"), SPEC)
    assert [layer.name for layer in tiny.layers] == [layer.name for layer in same.layers]


def _encoder_convolutions(model: keras.Model) -> dict[str, bool]:
    """The separable encoder's convolutions, each with whether it has a bias."""
    kinds = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
    encoder = (layer for layer in model.layers if layer.name.startswith("sep_") and isinstance(layer, kinds))
    return {layer.name: layer.use_bias for layer in encoder}


@pytest.mark.parametrize("preset", ["cpu-deep", "cpu-lean"])
def test_norm_free_bias_gives_a_bias_to_exactly_the_convolutions_without_a_norm(preset: str) -> None:
    config = build_train_config(preset)
    assert not any(_encoder_convolutions(build_model(config, SPEC)).values()), "every preset stays bias-free"
    model = build_model(config.replace(norm_free_bias=True), SPEC)
    names = {layer.name for layer in model.layers}
    convolutions = _encoder_convolutions(model)
    assert any(convolutions.values()) and not all(convolutions.values())
    for name, has_bias in convolutions.items():
        norm = name.removesuffix("_conv") + "_gn" if name.endswith("_conv") else name + "_gn"
        assert has_bias == (norm not in names), name


def test_norm_free_biases_save_and_load_to_the_same_outputs(tmp_path: Path) -> None:
    model = build_model(build_train_config("cpu-lean", precision="float32", norm_free_bias=True), SPEC)
    biased = [layer for layer in model.layers if layer.name in _encoder_convolutions(model) and layer.use_bias]
    x = np.random.default_rng(2).uniform(0, 255, (2, *[SPEC.image_size] * 2, 1)).astype(np.float32)
    before = model(x)["embedding"].numpy()
    for i, layer in enumerate(biased):
        layer.bias.assign(np.full(layer.bias.shape, 0.05 * (i + 1), dtype=np.float32))
    assert not np.array_equal(before, model(x)["embedding"].numpy())
    model.save(tmp_path / "biased.keras")
    loaded = keras.saving.load_model(tmp_path / "biased.keras")
    for key in ("semantic", "embedding"):
        assert np.array_equal(model(x)[key].numpy(), loaded(x)[key].numpy())
