"""The layered-embedding model, generalised to N layers.

For each stored layer k there is a semantic head (classes + background, softmax) and
an embedding head (C dimensions); with two layers this is exactly the paper's model
(foreground and occlusion heads). Outputs are stacked along a layer axis:
``semantic`` ``(B, L, M, M, K + 1)`` and ``embedding`` ``(B, L, M, M, C)``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import layers

from amodal_model.backbones import BACKBONES, conv_norm_relu
from amodal_model.config import InferenceConfig, LossConfig, ModelConfig, TrainConfig
from amodal_model.inference import clusterer
from amodal_model.loss import total_loss
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


def _trunk(x: keras.KerasTensor, config: ModelConfig, name: str) -> keras.KerasTensor:
    """The head's 3x3 convolutions (ReLU), standard or depthwise-separable."""
    regulariser = keras.regularizers.L2(config.l2) if config.l2 else None
    for i, filters in enumerate(config.head_filters):
        if config.head_conv == "separable":
            conv = layers.SeparableConv2D(
                filters,
                3,
                padding="same",
                activation="relu",
                depthwise_regularizer=regulariser,
                pointwise_regularizer=regulariser,
                name=f"{name}_conv{i + 1}",
            )
        else:
            conv = layers.Conv2D(
                filters,
                3,
                padding="same",
                activation="relu",
                kernel_regularizer=regulariser,
                name=f"{name}_conv{i + 1}",
            )
        x = conv(x)
    return x


def _output(x: keras.KerasTensor, config: ModelConfig, outputs: int, activation: str | None, name: str, m: int):
    """The output convolution, in float32 whatever the compute precision (softmax and loss stay exact)."""
    x = layers.Conv2D(
        outputs, config.output_kernel, padding="same", activation=activation, dtype="float32", name=f"{name}_out"
    )(x)
    return layers.Reshape((1, m, m, outputs), dtype="float32", name=f"{name}_stack")(x)


@keras.saving.register_keras_serializable(package="shapesgen")
class AddPosition(layers.Layer):
    """Adds each pixel's (row, column), the image spanning ``scale`` units, to the first
    two channels of ``(B, 1, M, M, C)`` embeddings: the semi-convolutional embedding."""

    def __init__(self, scale: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.grid: np.ndarray | None = None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """The grid, once for the layer's (static) shape: no work per call."""
        m, channels = int(input_shape[-2] or 0), int(input_shape[-1] or 0)
        centres = (np.arange(m, dtype=np.float32) + 0.5) * (self.scale / m)
        rows, cols = np.meshgrid(centres, centres, indexing="ij")
        self.grid = np.zeros((1, 1, m, m, channels), np.float32)
        self.grid[..., 0], self.grid[..., 1] = rows, cols

    def call(self, x: Any) -> Any:
        return x + keras.ops.convert_to_tensor(self.grid, dtype=x.dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "scale": self.scale}


def _backend_has_accelerator() -> bool:
    """Whether the Keras backend runs on a GPU (or TPU), asked of that backend."""
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return bool(tf.config.list_physical_devices("GPU"))
        if backend == "jax":
            import jax

            return jax.default_backend() in ("gpu", "tpu")
        if backend == "torch":
            import torch

            return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover - the backend Keras runs on is installed
        return False
    return False


def has_fast_bfloat16() -> bool:
    """Whether this machine computes bfloat16 natively: an accelerator the Keras backend uses,
    or a CPU with AVX512-BF16 or AMX."""
    if _backend_has_accelerator():
        return True
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def compute_policy(config: ModelConfig) -> str:
    """The Keras dtype policy ``config.precision`` means on this machine."""
    if config.precision == "auto":
        return "mixed_bfloat16" if has_fast_bfloat16() else "float32"
    return config.precision


def build_model(config: TrainConfig, spec: DataSpec, scene_config: SceneConfig | None = None) -> LayeredEmbeddingModel:
    """The model for ``config`` and data of shape ``spec``, with ``backbone_weights`` loaded if set."""
    model = LayeredEmbeddingModel(
        train_config=config.to_dict(),
        data_spec=dataclasses.asdict(spec),
        scene_config=json.loads(scene_config.to_json()) if scene_config is not None else None,
    )
    weights = config.model.backbone_weights
    if weights:
        try:
            model.load_weights(weights, skip_mismatch=True)
        except Exception as exc:  # a foreign or damaged file fails in h5py, zipfile or Keras
            raise ConfigError(
                f"backbone_weights={weights!r}: cannot load ({one_line(str(exc)) or type(exc).__name__})",
                param="backbone_weights",
            ) from None
    return model


def _graph(config: ModelConfig, spec: DataSpec) -> tuple[keras.KerasTensor, dict[str, keras.KerasTensor]]:
    """Input and outputs of the network, built in :func:`compute_policy`'s precision."""
    if spec.image_size % 16:
        raise ConfigError(f"image_size={spec.image_size} is invalid for the model: must be a multiple of 16")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(compute_policy(config))
    try:
        return _layers(config, spec)
    finally:
        keras.config.set_dtype_policy(previous)


def _layers(config: ModelConfig, spec: DataSpec) -> tuple[keras.KerasTensor, dict[str, keras.KerasTensor]]:
    inputs = keras.Input((spec.image_size, spec.image_size, spec.channels), name="image")
    scaled = layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range")(inputs)
    features = BACKBONES[config.backbone](scaled, config)
    m = spec.mask_size
    if features.shape[1] != m:
        features = layers.Resizing(m, m, interpolation="bilinear", name="to_mask_size")(features)
    if features.shape[-1] != config.feature_channels:
        features = conv_norm_relu(features, config.feature_channels, config, "features", kernel=1)
    semantic: list[keras.KerasTensor] = []
    embedding: list[keras.KerasTensor] = []
    shared = _trunk(features, config, "head") if config.head == "shared" else None
    for k in range(spec.layers):
        for kind, outputs, activation, found in (
            ("semantic", spec.num_classes + 1, "softmax", semantic),
            ("embedding", config.embedding_dim, None, embedding),
        ):
            name = f"{kind}{k + 1}"
            trunk = shared if shared is not None else _trunk(features, config, name)
            output = _output(trunk, config, outputs, activation, name, m)
            if kind == "embedding" and config.position_scale > 0:
                output = AddPosition(config.position_scale, dtype="float32", name=f"{name}_position")(output)
            found.append(output)
    join = (
        (lambda xs, name: layers.Concatenate(axis=1, dtype="float32", name=name)(xs))
        if spec.layers > 1
        else (lambda xs, name: xs[0])
    )
    return inputs, {"semantic": join(semantic, "semantic"), "embedding": join(embedding, "embedding")}


@keras.saving.register_keras_serializable(package="shapesgen")
class LayeredEmbeddingModel(keras.Model):
    """The layered-embedding network: images (uint8 values, any float dtype) in, per-layer
    class probabilities ``semantic`` ``(B, L, M, M, K + 1)`` and embeddings ``embedding``
    ``(B, L, M, M, C)`` out.

    Everything needed to use a saved model travels in the ``.keras`` file itself
    (``get_config``): the training config, one object per concern (``model``,
    ``loss``, ``optimiser``, ``evaluation`` and ``inference``: bandwidth, min pixels,
    score; a file saved before the split holds one flat object, read the same), the data shapes (layers, mask size,
    classes) and, when known, the scene config of the training data. So::

        import amodal_model.model  # registers the class with Keras
        model = keras.saving.load_model("model.keras")
        records = model.predict_instances(images)  # COCO result records

    A functional model underneath (as keras-hub's backbones), so summaries, weights
    by layer name and ``backbone_weights`` work as for any Keras model.
    """

    def __init__(
        self,
        train_config: dict[str, Any],
        data_spec: dict[str, int],
        scene_config: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        config = TrainConfig.from_dict(dict(train_config))  # nested, or flat as saved before the split
        spec = DataSpec(**data_spec)
        inputs, outputs = _graph(config.model, spec)
        kwargs.setdefault("name", f"layered_embeddings_{config.model.backbone}_{spec.layers}layers")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.config_json = config.to_json()
        self.data_spec = spec
        self.scene_json = json.dumps(scene_config, sort_keys=True) if scene_config is not None else None

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        """The training objective for ``Model.fit`` on any Keras backend: the loss of the
        model's own loss config plus the layers' L2 penalties. ``y`` holds the targets
        (``layers``, ``class_layers``, ``instance_classes``), already visible-only where
        the loss config says so (:func:`amodal_model.data.visible_targets`)."""
        objective = total_loss(y_pred, y, self.loss_config)["loss"]
        return objective + sum(self.losses) if self.losses else objective

    @property
    def loss_config(self) -> LossConfig:
        return self.train_config.loss

    @property
    def train_config(self) -> TrainConfig:
        return TrainConfig.from_json(self.config_json)

    @property
    def scene_config(self) -> SceneConfig | None:
        """The training data's scene config (class names, sizes), if it was given."""
        return SceneConfig.from_json(self.scene_json) if self.scene_json is not None else None

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "train_config": json.loads(self.config_json),  # each concern's object under its name
            "data_spec": dataclasses.asdict(self.data_spec),
            "scene_config": json.loads(self.scene_json) if self.scene_json is not None else None,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> LayeredEmbeddingModel:
        return cls(**config)

    def predict_instances(
        self,
        images: np.ndarray,
        *,
        first_index: int = 0,
        settings: InferenceConfig | None = None,
        batch_size: int = 8,
    ) -> list[dict[str, Any]]:
        """COCO result records (RLE amodal masks at mask size) for ``images`` ``(B, S, S, C)``.

        Image ``b`` gets ``image_id = first_index + b + 1`` (the convention of
        ``shapesgen predict``: scene index + 1); ``settings`` overrides the model's own
        inference settings.
        """
        for name, value, low in (("batch_size", batch_size, 1), ("first_index", first_index, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name}={value!r} is invalid: must be an integer >= {low}", param=name)
        images = np.asarray(images)
        spec = self.data_spec
        want = (spec.image_size, spec.image_size, spec.channels)
        if images.ndim != 4 or images.shape[1:] != want or not np.issubdtype(images.dtype, np.number):
            raise ConfigError(
                f"images of shape {images.shape} and dtype {images.dtype} are invalid: the model takes numbers "
                f"of shape (B, {want[0]}, {want[1]}, {want[2]})",
                param="images",
            )
        settings = settings or self.train_config.inference
        records: list[dict[str, Any]] = []
        with clusterer(settings, 1) as pool:
            for start in range(0, len(images), batch_size):
                chunk = np.asarray(images[start : start + batch_size], dtype=np.float32)
                outputs = {k: keras.ops.convert_to_numpy(v) for k, v in self(chunk, training=False).items()}
                indices = range(first_index + start, first_index + start + len(chunk))
                records.extend(pool.submit(outputs, indices)())
        return records
