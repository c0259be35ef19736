"""Feature extractors: stride-4 feature maps (64 x 64 for 256 px input).

- ``xception``: DeepLabV3+ on an aligned Xception at output stride 16 (ASPP rates
  6, 12, 18), GroupNormalization instead of BatchNorm and L2 on every conv, as in the
  reference code; final upsampling and logits removed.
- ``mobilenetv2``: DeepLabV3+ on ``keras.applications.MobileNetV2(weights=None)``
  (``block_13_expand_relu`` at stride 16 into the ASPP, ``block_3_expand_relu`` at
  stride 4 as the skip).
- ``tiny``: a small from-scratch encoder for tests and quick CPU runs.
- ``separable``: a from-scratch encoder of depthwise-separable residual units, for
  CPUs: the 3x3 convolutions at 64 x 64 (what dominates the tiny encoder's cost)
  become separable, and the width saved goes into a wider, deeper stride-8 stage
  with dilations 1, 2, 4, 8 (a receptive field spanning the whole image).
  ``stem_norm=False`` drops GroupNorm from its stride-2 and stride-4 layers, where
  normalising (a memory-bound pass over the largest maps) costs about a third of a
  training step; the stride-8 stage, where the residual units sum, keeps it.
  ``stem='space_to_depth'`` replaces the stride-2 convolution and stride-2 separable
  layer by a lossless 4 x 4 space-to-depth and one 3x3 convolution; ``unit_norm``
  keeps GroupNorm on ``both`` convolutions of each residual unit, the ``pointwise`` one
  only, or ``none`` (branches scaled by SkipInit scalars). GroupNorm (about 9 ms forward
  and backward per 32 x 32 x 128 batch of 8), not the convolutions, was half of
  ``cpu-deep``'s training step. ``norm_free_bias`` gives its convolutions that have
  no GroupNorm after them a bias (the other encoders normalise after every one).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from amodal_model.config import ModelConfig


def _reg(config: ModelConfig) -> keras.regularizers.Regularizer | None:
    return keras.regularizers.L2(config.l2) if config.l2 else None


def _norm(config: ModelConfig, channels: int, name: str) -> layers.Layer:
    groups = config.group_norm_groups
    while channels % groups:
        groups -= 1
    return layers.GroupNormalization(groups=groups, name=name)


def conv_norm_relu(
    x: keras.KerasTensor,
    filters: int,
    config: ModelConfig,
    name: str,
    kernel: int = 3,
    stride: int = 1,
    rate: int = 1,
    norm: bool = True,
) -> keras.KerasTensor:
    x = layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        dilation_rate=rate,
        padding="same",
        use_bias=config.norm_free_bias and not norm,
        kernel_regularizer=_reg(config),
        name=f"{name}_conv",
    )(x)
    if norm:
        x = _norm(config, filters, f"{name}_gn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def sep_norm_relu(
    x: keras.KerasTensor,
    filters: int,
    config: ModelConfig,
    name: str,
    stride: int = 1,
    rate: int = 1,
    norm: bool = True,
    depthwise_norm: bool | None = None,
) -> keras.KerasTensor:
    """Depthwise 3x3 + GN + ReLU, pointwise 1x1 + GN + ReLU ("aligned" Xception unit).

    ``norm`` sets the pointwise GroupNorm and ``depthwise_norm`` the depthwise one (None:
    as ``norm``), so ``norm=False`` leaves out both and ``depthwise_norm=False`` the first only."""
    normalise_depthwise = norm if depthwise_norm is None else depthwise_norm
    x = layers.DepthwiseConv2D(
        3,
        strides=stride,
        dilation_rate=rate,
        padding="same",
        use_bias=config.norm_free_bias and not normalise_depthwise,
        depthwise_regularizer=_reg(config),
        name=f"{name}_dw",
    )(x)
    if normalise_depthwise:
        x = _norm(config, x.shape[-1], f"{name}_dw_gn")(x)
    x = layers.ReLU(name=f"{name}_dw_relu")(x)
    return conv_norm_relu(x, filters, config, f"{name}_pw", kernel=1, norm=norm)


def xception_block(
    x: keras.KerasTensor,
    filters: tuple[int, int, int],
    config: ModelConfig,
    name: str,
    stride: int = 1,
    rate: int = 1,
    skip: str = "conv",
) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """Three separable units with a residual; returns (output, output of unit 2)."""
    residual = x
    for i, f in enumerate(filters):
        x = sep_norm_relu(x, f, config, f"{name}_sep{i + 1}", stride=stride if i == 2 else 1, rate=rate)
        if i == 1:
            mid = x
    if skip == "conv":
        shortcut = layers.Conv2D(
            filters[-1], 1, strides=stride, use_bias=False, kernel_regularizer=_reg(config), name=f"{name}_skip"
        )(residual)
        shortcut = _norm(config, filters[-1], f"{name}_skip_gn")(shortcut)
        x = layers.Add(name=f"{name}_add")([x, shortcut])
    elif skip == "sum":
        x = layers.Add(name=f"{name}_add")([x, residual])
    return x, mid


def aspp(x: keras.KerasTensor, config: ModelConfig, rates: tuple[int, ...], name: str = "aspp") -> keras.KerasTensor:
    """Atrous spatial pyramid pooling with image pooling, projected to the feature width."""
    width = config.feature_channels
    h, w = x.shape[1], x.shape[2]
    branches = [conv_norm_relu(x, width, config, f"{name}_1x1", kernel=1)]
    for rate in rates:
        branches.append(sep_norm_relu(x, width, config, f"{name}_r{rate}", rate=rate))
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    pooled = conv_norm_relu(pooled, width, config, f"{name}_pool_proj", kernel=1)
    pooled = layers.UpSampling2D((h, w), name=f"{name}_pool_up")(pooled)
    x = layers.Concatenate(name=f"{name}_concat")([*branches, pooled])
    x = conv_norm_relu(x, width, config, f"{name}_proj", kernel=1)
    return layers.Dropout(config.dropout, name=f"{name}_dropout")(x) if config.dropout else x


def decoder(high: keras.KerasTensor, low: keras.KerasTensor, config: ModelConfig) -> keras.KerasTensor:
    """DeepLabV3+ decoder to stride 4, without the final logits and upsampling."""
    factor = low.shape[1] // high.shape[1]
    high = layers.UpSampling2D(factor, interpolation="bilinear", name="decoder_up")(high)
    low = conv_norm_relu(low, 48, config, "decoder_low", kernel=1)
    x = layers.Concatenate(name="decoder_concat")([high, low])
    x = sep_norm_relu(x, config.feature_channels, config, "decoder_sep1")
    return sep_norm_relu(x, config.feature_channels, config, "decoder_sep2")


def xception_features(x: keras.KerasTensor, config: ModelConfig) -> keras.KerasTensor:
    x = conv_norm_relu(x, 32, config, "entry_conv1", stride=2)
    x = conv_norm_relu(x, 64, config, "entry_conv2")
    x, _ = xception_block(x, (128, 128, 128), config, "entry_block1", stride=2)
    x, low = xception_block(x, (256, 256, 256), config, "entry_block2", stride=2)
    x, _ = xception_block(x, (728, 728, 728), config, "entry_block3", stride=2)
    for i in range(16):
        x, _ = xception_block(x, (728, 728, 728), config, f"middle_block{i + 1}", skip="sum")
    x, _ = xception_block(x, (728, 1024, 1024), config, "exit_block1")
    x, _ = xception_block(x, (1536, 1536, 2048), config, "exit_block2", rate=2, skip="none")
    return decoder(aspp(x, config, (6, 12, 18)), low, config)


def mobilenet_features(x: keras.KerasTensor, config: ModelConfig) -> keras.KerasTensor:
    if x.shape[-1] != 3:
        x = layers.Conv2D(3, 1, name="to_rgb")(x)
    base = keras.applications.MobileNetV2(input_tensor=x, include_top=False, weights=None)
    high = base.get_layer("block_13_expand_relu").output
    low = base.get_layer("block_3_expand_relu").output
    return decoder(aspp(high, config, (6, 12, 18)), low, config)


def tiny_features(x: keras.KerasTensor, config: ModelConfig) -> keras.KerasTensor:
    width = config.feature_channels
    x = conv_norm_relu(x, width // 2, config, "tiny1", stride=2)
    low = conv_norm_relu(x, width, config, "tiny2", stride=2)
    x = conv_norm_relu(low, width, config, "tiny3", stride=2)
    x = conv_norm_relu(x, width, config, "tiny4", rate=2)
    x = conv_norm_relu(x, width, config, "tiny5", rate=4)
    x = conv_norm_relu(x, width, config, "tiny6", rate=8)
    x = layers.UpSampling2D(2, interpolation="bilinear", name="tiny_up")(x)
    x = layers.Concatenate(name="tiny_concat")([x, low])
    return conv_norm_relu(x, width, config, "tiny7")


def separable_features(x: keras.KerasTensor, config: ModelConfig) -> keras.KerasTensor:
    width = config.feature_channels
    fine = config.stem_norm
    if config.stem == "space_to_depth":
        low = conv_norm_relu(space_to_depth(x, 4, "sep_s2d"), width, config, "sep_low", norm=fine)
    else:
        x = conv_norm_relu(x, 32, config, "sep_entry", stride=2, norm=fine)
        low = sep_norm_relu(x, width, config, "sep_low", stride=2, norm=fine)
    x = sep_norm_relu(low, 2 * width, config, "sep_down", stride=2)
    for i, rate in enumerate((1, 2, 4, 8, 1, 2, 4, 8)[: config.separable_units]):
        y = sep_norm_relu(
            x,
            2 * width,
            config,
            f"sep_unit{i + 1}",
            rate=rate,
            norm=config.unit_norm != "none",
            depthwise_norm=config.unit_norm == "both",
        )
        if config.unit_norm == "none":
            y = SkipInitScale(name=f"sep_unit{i + 1}_scale")(y)
        x = layers.Add(name=f"sep_unit{i + 1}_add")([x, y])
    x = layers.UpSampling2D(2, interpolation="bilinear", name="sep_up")(x)
    x = layers.Concatenate(name="sep_concat")([x, low])
    return sep_norm_relu(x, width, config, "sep_fuse", norm=fine)


def space_to_depth(x: keras.KerasTensor, block: int, name: str) -> keras.KerasTensor:
    """Each ``block`` x ``block`` patch of pixels as the channels of one position (row-major
    within the patch, channels last): stride ``block`` with nothing lost."""
    size, channels = int(x.shape[1]), int(x.shape[-1])
    cells = size // block
    x = layers.Reshape((cells, block, cells, block, channels), name=f"{name}_split")(x)
    x = layers.Permute((1, 3, 2, 4, 5), name=f"{name}_gather")(x)
    return layers.Reshape((cells, cells, block * block * channels), name=f"{name}_stack")(x)


@keras.saving.register_keras_serializable(package="shapesgen")
class SkipInitScale(layers.Layer):
    """Multiplies its input by one learned scalar that starts at 0 (SkipInit): a residual
    branch without normalisation then starts switched off, and the stack as the identity."""

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.scale = self.add_weight(name="scale", shape=(), initializer="zeros")

    def call(self, x: Any) -> Any:
        return x * keras.ops.cast(self.scale, x.dtype)


BACKBONES = {
    "xception": xception_features,
    "mobilenetv2": mobilenet_features,
    "tiny": tiny_features,
    "separable": separable_features,
}
