"""The training concern's one frozen config: model, loss and optimisation settings.

Every field is checked by type and range when a config is made, so a hand-edited
``train_config.json`` fails with one :class:`ConfigError` naming the field, never a
``TypeError`` deep inside Keras. Widths and counts have upper limits that keep a
typo (``feature_channels=10**9``) from turning into an out-of-memory crash.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Literal

from shapesgen.config import parse_json, reject_unknown_fields
from shapesgen.errors import ConfigError, shown

Backbone = Literal["xception", "mobilenetv2", "tiny", "separable"]
HeadConv = Literal["standard", "separable"]
Hinge = Literal["squared", "linear"]
DistanceScope = Literal["class", "all"]
HeadKind = Literal["separate", "shared"]
Precision = Literal["auto", "float32", "mixed_bfloat16"]
Schedule = Literal["constant", "cosine"]
LossNormalisation = Literal["reference", "mean"]
Score = Literal["class", "completeness", "product"]

BACKBONE_NAMES: tuple[str, ...] = ("xception", "mobilenetv2", "tiny", "separable")
HEAD_CONVS: tuple[str, ...] = ("standard", "separable")
HINGES: tuple[str, ...] = ("squared", "linear")
DISTANCE_SCOPES: tuple[str, ...] = ("class", "all")
HEAD_KINDS: tuple[str, ...] = ("separate", "shared")
PRECISIONS: tuple[str, ...] = ("auto", "float32", "mixed_bfloat16")
SCHEDULES: tuple[str, ...] = ("constant", "cosine")
LOSS_NORMALISATIONS: tuple[str, ...] = ("reference", "mean")
SCORES: tuple[str, ...] = ("class", "completeness", "product")
MAX_WIDTH = 4096
"""Upper limit of channel counts (features, head filters, embedding dimension)."""
MAX_HEAD_LAYERS = 16
MAX_BATCH = 1024
MAX_COUNT = 2**31 - 1
"""Upper limit of epochs, steps and the other counts (what the frameworks' int32 holds)."""
MAX_SETTING = 1e30
"""Upper limit of weights, margins and rates: the loss is float32 (at most about 3.4e38)."""
MAX_SEED = 2**32 - 1
"""Seeds seed NumPy's legacy generator through ``keras.utils.set_random_seed``: 32 bits."""
MAX_BANDWIDTH = 1e6
"""Embeddings are float32: a larger L1 bandwidth overflows and would claim every pixel anyway."""
INFERENCE_FIELDS: tuple[str, ...] = ("bandwidth", "min_pixels", "max_clusters", "max_iterations", "score", "seed")
"""The fields of the inference concern (:class:`amodal_model.inference.InferenceConfig`)."""
RESUME_MAY_CHANGE: frozenset[str] = frozenset(
    {"epochs", "eval_every", "eval_scenes", "bandwidth", "min_pixels", "max_clusters", "max_iterations", "score"}
)
"""Settings that leave training itself unchanged (inference, evaluation, the number of
epochs): ``resume=True`` may change them. Every other field changes what is trained."""

# (field, lowest, highest): integers; the text of "allowed" is built from the bounds.
_INT_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("feature_channels", 1, MAX_WIDTH),
    ("embedding_dim", 1, MAX_WIDTH),
    ("group_norm_groups", 1, MAX_WIDTH),
    ("batch_size", 1, MAX_BATCH),
    ("epochs", 1, MAX_COUNT),
    ("eval_every", 0, MAX_COUNT),
    ("eval_scenes", 1, MAX_COUNT),
    ("min_pixels", 1, MAX_COUNT),
    ("output_kernel", 1, 7),
    ("separable_units", 1, 8),
    ("max_clusters", 1, MAX_COUNT),
    ("max_iterations", 1, MAX_COUNT),
    ("seed", 0, MAX_SEED),
)
# (field, bound, strict, highest): finite numbers > bound (strict) or >= bound, and <= highest.
_FLOAT_FIELDS: tuple[tuple[str, float, bool, float], ...] = (
    ("l2", 0.0, False, MAX_SETTING),
    ("d_var", 0.0, False, MAX_SETTING),
    ("d_dist", 0.0, True, MAX_SETTING),
    ("var_weight", 0.0, False, MAX_SETTING),
    ("dist_weight", 0.0, False, MAX_SETTING),
    ("reg_weight", 0.0, False, MAX_SETTING),
    ("ce_weight", 0.0, False, MAX_SETTING),
    ("learning_rate", 0.0, True, MAX_SETTING),
    ("bandwidth", 0.0, True, MAX_BANDWIDTH),
)
_CHOICES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("backbone", BACKBONE_NAMES),
    ("hinge", HINGES),
    ("distance_scope", DISTANCE_SCOPES),
    ("head", HEAD_KINDS),
    ("head_conv", HEAD_CONVS),
    ("precision", PRECISIONS),
    ("schedule", SCHEDULES),
    ("loss_normalisation", LOSS_NORMALISATIONS),
    ("score", SCORES),
)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


def _invalid(name: str, value: object, allowed: str) -> ConfigError:
    return ConfigError(f"{name}={shown(value)} is invalid: must be {allowed}", param=name)


_INT_BOUNDS = {name: (low, high) for name, low, high in _INT_FIELDS}
_FLOAT_BOUNDS = {name: (bound, strict, high) for name, bound, strict, high in _FLOAT_FIELDS}
_CHOICE_OF = dict(_CHOICES)


def check_setting(name: str, value: object) -> None:
    """Raise a :class:`ConfigError` unless ``value`` is allowed for the integer, number or
    choice field ``name`` (the one table of bounds both configs check against)."""
    if name in _CHOICE_OF:
        choices = _CHOICE_OF[name]
        if not isinstance(value, str) or value not in choices:
            raise _invalid(name, value, "one of " + ", ".join(repr(c) for c in choices))
    elif name in _INT_BOUNDS:
        low, high = _INT_BOUNDS[name]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise _invalid(name, value, f"an integer in [{low}, {high}]")
    else:
        bound, strict, top = _FLOAT_BOUNDS[name]
        number = float(value) if isinstance(value, (int, float)) and _is_number(value) else math.nan
        if not (number > bound if strict else number >= bound) or number > top:
            raise _invalid(name, value, f"a number {'>' if strict else '>='} {bound:g} and <= {top:g}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Model, loss, optimiser and inference settings (defaults: the paper, reference-code loss).

    Loss defaults follow the reference code (squared hinges, distance term within a
    class, regulariser weight 0.01, cross-entropy on the semantic heads, each class's
    distance term divided by ``n_c (n_c - 1) + 1`` and summed over classes, the
    cross-entropy summed over layers, instances with no visible pixel trained as
    background) because that is what produced the paper's numbers; ``hinge='linear'``,
    ``distance_scope='all'`` and ``reg_weight=1`` give the paper's written form, and
    ``loss_normalisation='mean'`` this package's earlier means over pairs and layers.

    ``head='shared'`` runs one convolution trunk for all heads and a small output
    convolution per layer and head (about 2x faster than four separate trunks).
    ``precision='auto'`` uses ``mixed_bfloat16`` where the CPU has AVX512-BF16 or AMX
    (or a GPU is present), float32 elsewhere. ``stem_norm=False`` drops GroupNorm from the
    separable encoder's stride-2 and stride-4 layers (other encoders ignore it). ``score`` is the detection score used
    to rank instances: the class probability, the visible fraction (top-layer pixels
    over the instance's pixels), or their product.
    """

    backbone: Backbone = "xception"
    backbone_weights: str | None = None
    feature_channels: int = 256
    head_filters: tuple[int, ...] = (256, 256, 128)
    embedding_dim: int = 6
    group_norm_groups: int = 8
    l2: float = 1e-5
    dropout: float = 0.1
    d_var: float = 0.5
    d_dist: float = 1.5
    var_weight: float = 1.0
    dist_weight: float = 1.0
    reg_weight: float = 0.01
    ce_weight: float = 1.0
    hinge: Hinge = "squared"
    distance_scope: DistanceScope = "class"
    loss_normalisation: LossNormalisation = "reference"
    visible_targets: bool = True
    head: HeadKind = "separate"
    head_conv: HeadConv = "standard"
    separable_units: int = 4
    stem_norm: bool = True
    output_kernel: int = 1
    precision: Precision = "float32"
    schedule: Schedule = "constant"
    learning_rate: float = 1e-4
    batch_size: int = 2
    epochs: int = 100
    steps_per_epoch: int | None = None
    eval_every: int = 5
    eval_scenes: int = 200
    bandwidth: float = 1.5
    min_pixels: int = 5
    max_clusters: int = 64
    max_iterations: int = 50
    score: Score = "class"
    seed: int = 0

    def __post_init__(self) -> None:
        for name, _ in _CHOICES:
            check_setting(name, getattr(self, name))
        weights = self.backbone_weights
        if isinstance(weights, os.PathLike):
            weights = os.fspath(weights)
            object.__setattr__(self, "backbone_weights", weights)
        if weights is not None and (not isinstance(weights, str) or not weights):
            raise _invalid("backbone_weights", weights, "None or the path of a weights file")
        filters = self.head_filters
        if (
            not isinstance(filters, (tuple, list))
            or not 1 <= len(filters) <= MAX_HEAD_LAYERS
            or not all(_is_int(f) and 1 <= f <= MAX_WIDTH for f in filters)
        ):
            raise _invalid(
                "head_filters", filters, f"a list of 1 to {MAX_HEAD_LAYERS} integers, each in [1, {MAX_WIDTH}]"
            )
        object.__setattr__(self, "head_filters", tuple(filters))
        for name, _, _ in _INT_FIELDS:
            check_setting(name, getattr(self, name))
        steps = self.steps_per_epoch
        if steps is not None and (not _is_int(steps) or not 1 <= steps <= MAX_COUNT):
            raise _invalid("steps_per_epoch", steps, f"None (one pass) or an integer in [1, {MAX_COUNT}]")
        for name, *_ in _FLOAT_FIELDS:
            check_setting(name, getattr(self, name))
        for flag in ("visible_targets", "stem_norm"):
            if not isinstance(getattr(self, flag), bool):
                raise _invalid(flag, getattr(self, flag), "true or false")
        if not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise _invalid("dropout", self.dropout, "a finite number in [0, 1)")

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["head_filters"] = list(self.head_filters)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> TrainConfig:
        """A validated config from a JSON object; anything else is a :class:`ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError(f"train config must be a JSON object, not {type(data).__name__}")
        if not all(isinstance(key, str) for key in data):
            raise ConfigError(f"train config keys must be strings, got {shown(sorted(map(repr, data)))}")
        reject_unknown_fields(cls, data, "train config")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str | bytes) -> TrainConfig:
        """A validated config from JSON text (as saved in a run's ``train_config.json``)."""
        return cls.from_dict(parse_json(text, "train config"))

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some fields changed."""
        reject_unknown_fields(type(self), changes, "train config")
        return dataclasses.replace(self, **changes)


PAPER = TrainConfig()
LIGHT = TrainConfig(
    backbone="mobilenetv2", feature_channels=64, head_filters=(64, 64, 32), learning_rate=1e-3, batch_size=8
)
TINY = TrainConfig(
    backbone="tiny", feature_channels=32, head_filters=(32, 32, 16), learning_rate=2e-3, batch_size=8, dropout=0.0
)
CPU = TrainConfig(
    backbone="tiny", feature_channels=64, head_filters=(64, 64, 32), learning_rate=2e-3, batch_size=8, dropout=0.0
)
CPU_FAST = TrainConfig(
    backbone="separable",
    feature_channels=64,
    head_filters=(64, 64, 32),
    head="shared",
    head_conv="separable",
    precision="auto",
    schedule="cosine",
    learning_rate=2e-3,
    batch_size=8,
    dropout=0.0,
)
CPU_DEEP = CPU_FAST.replace(separable_units=8, stem_norm=False)
"""``cpu-fast`` with twice the stride-8 units and no GroupNorm at stride 2 and 4: the
same images/s on a 2-core CPU (the norms saved pay for the units added)."""
TrainPresetName = Literal["paper", "light", "cpu", "cpu-fast", "cpu-deep", "tiny"]
TRAIN_PRESETS: dict[str, TrainConfig] = {
    "paper": PAPER,
    "light": LIGHT,
    "cpu": CPU,
    "cpu-fast": CPU_FAST,
    "cpu-deep": CPU_DEEP,
    "tiny": TINY,
}


def build_train_config(preset: str = "paper", **overrides: Any) -> TrainConfig:
    """A training preset with overrides applied (``None`` keeps the preset's value), validated."""
    if not isinstance(preset, str) or preset not in TRAIN_PRESETS:
        raise _invalid("preset", preset, "one of " + ", ".join(TRAIN_PRESETS))
    return TRAIN_PRESETS[preset].replace(**{k: v for k, v in overrides.items() if v is not None})
