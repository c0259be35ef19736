"""The layered-embedding model, generalised to N layers.

For each stored layer k there is a semantic head (classes + background, softmax) and
an embedding head (C dimensions); with two layers this is exactly the paper's model
(foreground and occlusion heads). Outputs are stacked along a layer axis:
``semantic`` ``(B, L, M, M, K + 1)`` and ``embedding`` ``(B, L, M, M, C)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from amodal_model.backbones import BACKBONES, conv_norm_relu
from amodal_model.config import TrainConfig
from shapesgen.config import SceneConfig
from shapesgen.errors import ConfigError, one_line


@dataclass(frozen=True)
class DataSpec:
    """The shapes a model is built for, taken from a dataset's SceneConfig."""

    image_size: int
    channels: int
    mask_size: int
    layers: int
    num_classes: int

    @classmethod
    def from_scene(cls, scene: SceneConfig) -> DataSpec:
        return cls(scene.image_size, scene.channels, scene.mask_size, scene.layers, scene.num_classes)


def _head(x: keras.KerasTensor, config: TrainConfig, outputs: int, activation: str | None, name: str, m: int):
    for i, filters in enumerate(config.head_filters):
        x = layers.Conv2D(
            filters,
            3,
            padding="same",
            activation="relu",
            kernel_regularizer=keras.regularizers.L2(config.l2) if config.l2 else None,
            name=f"{name}_conv{i + 1}",
        )(x)
    x = layers.Conv2D(outputs, 1, activation=activation, name=f"{name}_out")(x)
    return layers.Reshape((1, m, m, outputs), name=f"{name}_stack")(x)


def build_model(config: TrainConfig, spec: DataSpec) -> keras.Model:
    """A functional Keras model: image in [-1, 1] -> per-layer semantics and embeddings."""
    if spec.image_size % 16:
        raise ConfigError(f"image_size={spec.image_size} is invalid for the model: must be a multiple of 16")
    inputs = keras.Input((spec.image_size, spec.image_size, spec.channels), name="image")
    features = BACKBONES[config.backbone](inputs, config)
    m = spec.mask_size
    if features.shape[1] != m:
        features = layers.Resizing(m, m, interpolation="bilinear", name="to_mask_size")(features)
    if features.shape[-1] != config.feature_channels:
        features = conv_norm_relu(features, config.feature_channels, config, "features", kernel=1)
    semantic, embedding = [], []
    for k in range(spec.layers):
        semantic.append(_head(features, config, spec.num_classes + 1, "softmax", f"semantic{k + 1}", m))
        embedding.append(_head(features, config, config.embedding_dim, None, f"embedding{k + 1}", m))
    join = (lambda xs, name: layers.Concatenate(axis=1, name=name)(xs)) if spec.layers > 1 else (lambda xs, name: xs[0])
    outputs = {"semantic": join(semantic, "semantic"), "embedding": join(embedding, "embedding")}
    model = keras.Model(inputs, outputs, name=f"layered_embeddings_{config.backbone}_{spec.layers}layers")
    if config.backbone_weights:
        try:
            model.load_weights(config.backbone_weights, skip_mismatch=True)
        except Exception as exc:  # a foreign or damaged file fails in h5py, zipfile or Keras
            raise ConfigError(
                f"backbone_weights={config.backbone_weights!r}: "
                f"cannot load ({one_line(str(exc)) or type(exc).__name__})",
                param="backbone_weights",
            ) from None
    return model
