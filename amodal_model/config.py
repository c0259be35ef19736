"""The training settings: one frozen config per concern, composed by :class:`TrainConfig`.

:class:`ModelConfig` (architecture, precision), :class:`LossConfig`,
:class:`OptimiserConfig` (rate, schedule, batches, epochs, seed),
:class:`EvaluationConfig` (validation during training) and :class:`InferenceConfig`
(clustering and scoring) are each checked field by field, by type and range, when
made: a hand-edited ``train_config.json`` fails with one :class:`ConfigError` naming
the field (by its flat name, the one the CLI flag is made from), never a ``TypeError``
deep inside Keras. Widths and counts have upper limits that keep a typo
(``feature_channels=10**9``) from turning into an out-of-memory crash.

Every field name is unique across the concerns but ``seed``, which the optimiser
(weights, shuffling) and inference (clustering) both have; a flat ``seed=`` sets both.
A run saved before the split wrote one flat JSON object: :meth:`TrainConfig.from_dict`
still reads it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self

from shapesgen.config import parse_json, reject_unknown_fields
from shapesgen.errors import ConfigError, shown

Backbone = Literal["xception", "mobilenetv2", "tiny", "separable"]
HeadConv = Literal["standard", "separable"]
Stem = Literal["conv", "space_to_depth"]
UnitNorm = Literal["both", "pointwise", "none"]
Hinge = Literal["squared", "linear"]
DistanceScope = Literal["class", "all"]
HeadKind = Literal["separate", "shared"]
Precision = Literal["auto", "float32", "mixed_bfloat16"]
Schedule = Literal["constant", "cosine"]
LossNormalisation = Literal["reference", "mean"]
PullBalance = Literal["pixels", "layers"]
Score = Literal["class", "completeness", "product"]
SmallClusters = Literal["drop", "merge"]
HiddenClusters = Literal["keep", "drop", "merge"]
ClusterScope = Literal["class", "all"]

BACKBONE_NAMES: tuple[str, ...] = ("xception", "mobilenetv2", "tiny", "separable")
HEAD_CONVS: tuple[str, ...] = ("standard", "separable")
STEMS: tuple[str, ...] = ("conv", "space_to_depth")
UNIT_NORMS: tuple[str, ...] = ("both", "pointwise", "none")
HINGES: tuple[str, ...] = ("squared", "linear")
DISTANCE_SCOPES: tuple[str, ...] = ("class", "all")
HEAD_KINDS: tuple[str, ...] = ("separate", "shared")
PRECISIONS: tuple[str, ...] = ("auto", "float32", "mixed_bfloat16")
SCHEDULES: tuple[str, ...] = ("constant", "cosine")
LOSS_NORMALISATIONS: tuple[str, ...] = ("reference", "mean")
PULL_BALANCES: tuple[str, ...] = ("pixels", "layers")
SCORES: tuple[str, ...] = ("class", "completeness", "product")
SMALL_CLUSTERS: tuple[str, ...] = ("drop", "merge")
HIDDEN_CLUSTERS: tuple[str, ...] = ("keep", "drop", "merge")
CLUSTER_SCOPES: tuple[str, ...] = ("class", "all")
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
RESUME_MAY_CHANGE: frozenset[str] = frozenset(
    {
        "optimiser.epochs",
        "evaluation.eval_every",
        "evaluation.eval_scenes",
        "inference.bandwidth",
        "inference.min_pixels",
        "inference.max_clusters",
        "inference.max_iterations",
        "inference.score",
        "inference.small_clusters",
        "inference.hidden_clusters",
        "inference.merge_radius",
        "inference.convex_hull",
        "inference.max_background",
        "inference.cluster_scope",
    }
)
"""Settings (``concern.field``) that leave training itself unchanged (inference,
evaluation, the number of epochs): ``resume=True`` may change them. Every other field,
both seeds included, changes what is trained."""

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
    ("cross_class_weight", 0.0, False, MAX_SETTING),
    ("pixel_push_weight", 0.0, False, MAX_SETTING),
    ("learning_rate", 0.0, True, MAX_SETTING),
    ("bandwidth", 0.0, True, MAX_BANDWIDTH),
    ("merge_radius", 0.0, True, MAX_BANDWIDTH),
    ("position_scale", 0.0, False, MAX_BANDWIDTH),
)
_CHOICES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("backbone", BACKBONE_NAMES),
    ("hinge", HINGES),
    ("distance_scope", DISTANCE_SCOPES),
    ("head", HEAD_KINDS),
    ("head_conv", HEAD_CONVS),
    ("stem", STEMS),
    ("unit_norm", UNIT_NORMS),
    ("precision", PRECISIONS),
    ("schedule", SCHEDULES),
    ("loss_normalisation", LOSS_NORMALISATIONS),
    ("pull_balance", PULL_BALANCES),
    ("score", SCORES),
    ("small_clusters", SMALL_CLUSTERS),
    ("hidden_clusters", HIDDEN_CLUSTERS),
    ("cluster_scope", CLUSTER_SCOPES),
)
_BOOL_FIELDS = frozenset({"visible_targets", "stem_norm", "norm_free_bias", "convex_hull"})


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
    """Raise a :class:`ConfigError` unless ``value`` is allowed for the field ``name`` (the
    one table of bounds every concern checks against)."""
    if name in _CHOICE_OF:
        choices = _CHOICE_OF[name]
        if not isinstance(value, str) or value not in choices:
            raise _invalid(name, value, "one of " + ", ".join(repr(c) for c in choices))
    elif name in _INT_BOUNDS:
        low, high = _INT_BOUNDS[name]
        if not _is_int(value) or not low <= value <= high:  # type: ignore[operator]
            raise _invalid(name, value, f"an integer in [{low}, {high}]")
    elif name in _FLOAT_BOUNDS:
        bound, strict, top = _FLOAT_BOUNDS[name]
        number = float(value) if isinstance(value, (int, float)) and _is_number(value) else math.nan
        if not (number > bound if strict else number >= bound) or number > top:
            raise _invalid(name, value, f"a number {'>' if strict else '>='} {bound:g} and <= {top:g}")
    elif name in _BOOL_FIELDS:
        if not isinstance(value, bool):
            raise _invalid(name, value, "true or false")
    elif name == "dropout":
        if not _is_number(value) or not 0 <= value < 1:  # type: ignore[operator]
            raise _invalid(name, value, "a finite number in [0, 1)")
    elif name == "head_filters":
        if (
            not isinstance(value, (tuple, list))
            or not 1 <= len(value) <= MAX_HEAD_LAYERS
            or not all(_is_int(f) and 1 <= f <= MAX_WIDTH for f in value)
        ):
            raise _invalid(name, value, f"a list of 1 to {MAX_HEAD_LAYERS} integers, each in [1, {MAX_WIDTH}]")
    elif name == "backbone_weights":
        if value is not None and (not isinstance(value, str) or not value):
            raise _invalid(name, value, "None or the path of a weights file")
    elif name == "max_background":
        if value is not None and (not _is_number(value) or not 0 < value <= 1):  # type: ignore[operator]
            raise _invalid(name, value, "None (the most probable class) or a number in (0, 1]")
    elif name == "steps_per_epoch":
        if value is not None and (not _is_int(value) or not 1 <= value <= MAX_COUNT):  # type: ignore[operator]
            raise _invalid(name, value, f"None (one pass) or an integer in [1, {MAX_COUNT}]")
    else:  # pragma: no cover - a field added without a check
        raise AssertionError(f"no check for the setting {name!r}")


class _Concern:
    """What every concern's config shares: fields checked on creation, JSON round trips,
    validated copies. ``LABEL`` names the concern in messages."""

    LABEL: ClassVar[str]

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            check_setting(f.name, getattr(self, f.name))

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON values (tuples as lists)."""
        return {
            f.name: list(value) if isinstance(value := getattr(self, f.name), tuple) else value
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """A validated config from a JSON object; anything else is a :class:`ConfigError`."""
        _check_object(data, cls.LABEL)
        reject_unknown_fields(cls, data, cls.LABEL)
        return cls(**data)

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        return cls.from_dict(parse_json(text, cls.LABEL))

    def replace(self, **changes: Any) -> Self:
        """A validated copy with some fields changed."""
        reject_unknown_fields(type(self), changes, self.LABEL)
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def with_overrides(self, **overrides: Any) -> Self:
        """:meth:`replace` for options left unset: a ``None`` override keeps the current value."""
        return self.replace(**{k: v for k, v in overrides.items() if v is not None})


def _check_object(data: Any, label: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{label} must be a JSON object, not {type(data).__name__}")
    if not all(isinstance(key, str) for key in data):
        raise ConfigError(f"{label} keys must be strings, got {shown(sorted(map(repr, data)))}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig(_Concern):
    """The network: encoder, widths, heads, regularisation and compute precision (the paper's).

    ``head='shared'`` runs one convolution trunk for all heads and a small output
    convolution per layer and head (about 2x faster than four separate trunks).
    ``precision='auto'`` uses ``mixed_bfloat16`` where the CPU has AVX512-BF16 or AMX
    (or a GPU is present), float32 elsewhere. ``stem_norm=False`` drops GroupNorm from
    the separable encoder's stride-2 and stride-4 layers (other encoders ignore it).
    ``stem='space_to_depth'`` starts that encoder with each 4 x 4 block of pixels as the
    channels of one stride-4 position (lossless) and one 3x3 convolution, instead of a
    stride-2 convolution and a stride-2 separable one. ``unit_norm`` says where its residual
    units normalise: ``both`` convolutions (depthwise and pointwise), the ``pointwise`` one
    only, or ``none``, each unit's branch then scaled by a learned scalar that starts at 0
    (SkipInit, De and Smith 2020) so the deep stack starts as the identity.
    ``norm_free_bias=True`` gives the separable encoder's convolutions that have no
    GroupNorm after them a bias, so the ReLU after each can learn its threshold (with a
    norm, its offset plays that part); ``False`` keeps every convolution bias-free, as
    the models trained before it.
    ``backbone_weights`` is a local weights file loaded into the new model.
    ``position_scale > 0`` adds each pixel's position (row and column, the mask spanning
    ``position_scale`` units) to the first two embedding dimensions: semi-convolutional
    embeddings (Novotny et al., ECCV 2018), so two instances that look alike are told
    apart by where they are; 0 is the paper's purely convolutional embedding.
    """

    LABEL: ClassVar[str] = "model config"

    backbone: Backbone = "xception"
    backbone_weights: str | None = None
    feature_channels: int = 256
    head_filters: tuple[int, ...] = (256, 256, 128)
    embedding_dim: int = 6
    group_norm_groups: int = 8
    l2: float = 1e-5
    dropout: float = 0.1
    head: HeadKind = "separate"
    head_conv: HeadConv = "standard"
    separable_units: int = 4
    stem: Stem = "conv"
    stem_norm: bool = True
    unit_norm: UnitNorm = "both"
    norm_free_bias: bool = False
    output_kernel: int = 1
    precision: Precision = "float32"
    position_scale: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.backbone_weights, os.PathLike):
            object.__setattr__(self, "backbone_weights", os.fspath(self.backbone_weights))
        super().__post_init__()
        object.__setattr__(self, "head_filters", tuple(self.head_filters))
        if self.position_scale > 0 and self.embedding_dim < 2:
            raise ConfigError(
                f"embedding_dim={shown(self.embedding_dim)} is invalid with position_scale="
                f"{shown(self.position_scale)}: must be an integer >= 2 (the row and the column)",
                param="embedding_dim",
                related=("position_scale",),
            )


@dataclass(frozen=True, kw_only=True)
class LossConfig(_Concern):
    """The discriminative loss and the semantic cross-entropy (defaults: the reference code).

    Squared hinges, distance term within a class, regulariser weight 0.01,
    cross-entropy on the semantic heads, each class's distance term divided by
    ``n_c (n_c - 1) + 1`` and summed over classes, the cross-entropy summed over
    layers, instances with no visible pixel trained as background: what produced the
    paper's numbers. ``hinge='linear'``, ``distance_scope='all'`` and ``reg_weight=1``
    give the paper's written form, ``loss_normalisation='mean'`` this package's
    earlier means over pairs and layers. ``cross_class_weight > 0`` (with
    ``distance_scope='class'``) adds the push over all instances at that weight: pairs of
    one class keep the full push, pairs of different classes get a weaker one.
    ``pull_balance='layers'`` averages an instance's pull within each layer first, then
    over its layers, so its few occluded (layer 2 and deeper) pixels weigh as much as its
    many visible ones; ``'pixels'`` (the reference) averages over all its pixels.
    ``pixel_push_weight > 0`` adds a push on every pixel away from the means of the
    instances the distance term separates from its own (same pairs, same weights), with
    margin ``2 d_dist - d_var``: not in the paper, aimed at occluded pixels embedded
    nearer another instance than their own.
    Refused together: ``d_dist <= d_var``, ``cross_class_weight > 0`` with
    ``distance_scope='all'``, and all three of the variance, distance and cross-entropy
    weights at 0.
    """

    LABEL: ClassVar[str] = "loss config"

    d_var: float = 0.5
    d_dist: float = 1.5
    var_weight: float = 1.0
    dist_weight: float = 1.0
    reg_weight: float = 0.01
    ce_weight: float = 1.0
    cross_class_weight: float = 0.0
    pixel_push_weight: float = 0.0
    hinge: Hinge = "squared"
    distance_scope: DistanceScope = "class"
    loss_normalisation: LossNormalisation = "reference"
    pull_balance: PullBalance = "pixels"
    visible_targets: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.d_dist <= self.d_var:
            raise ConfigError(
                f"d_dist={shown(self.d_dist)} is invalid with d_var={shown(self.d_var)}: must be the greater of the "
                "two (instances pushed apart less far than their pixels are pulled in cannot be told apart)",
                param="d_dist",
                related=("d_var",),
            )
        if self.cross_class_weight > 0 and self.distance_scope == "all":
            raise ConfigError(
                f"cross_class_weight={shown(self.cross_class_weight)} is invalid with distance_scope='all': must be 0 "
                "(the push over all instances already covers pairs of different classes at full weight)",
                param="cross_class_weight",
                related=("distance_scope",),
            )
        if self.var_weight == self.dist_weight == self.ce_weight == 0:
            raise ConfigError(
                "var_weight=0, dist_weight=0 and ce_weight=0 are invalid together: at least one must be > 0 "
                "(only the regulariser would be trained)",
                param="var_weight",
                related=("dist_weight", "ce_weight"),
            )


@dataclass(frozen=True, kw_only=True)
class OptimiserConfig(_Concern):
    """Adam's learning rate and schedule, batches, epochs and the seed of weights and
    shuffling (the paper's: 1e-4, constant, batch 2, 100 epochs)."""

    LABEL: ClassVar[str] = "optimiser config"

    learning_rate: float = 1e-4
    schedule: Schedule = "constant"
    batch_size: int = 2
    epochs: int = 100
    steps_per_epoch: int | None = None
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class EvaluationConfig(_Concern):
    """Validation during training: every ``eval_every`` epochs (0 = never), on the first
    ``eval_scenes`` scenes."""

    LABEL: ClassVar[str] = "evaluation config"

    eval_every: int = 5
    eval_scenes: int = 200


@dataclass(frozen=True, kw_only=True)
class InferenceConfig(_Concern):
    """Clustering and scoring (the paper's: bandwidth 1.5, 5 pixels, class score).

    ``score`` ranks instances: the class probability, the visible fraction (top-layer
    pixels over the instance's pixels), or their product. ``small_clusters='merge'``
    joins a cluster under ``min_pixels`` to the nearest cluster (L1 distance of their
    mean embeddings) within ``merge_radius`` instead of dropping it;
    ``hidden_clusters`` keeps, drops or merges a cluster with no layer-1 pixel (every
    instance is partly visible). ``convex_hull=True`` is a domain prior, off by default:
    every amodal mask becomes its convex hull (the scenes' shapes are convex).
    ``max_background``: a pixel is foreground wherever its background probability is
    under it (``None``: where the background is not the most probable class).
    ``cluster_scope``: cluster each class's pixels apart (``class``, the reference code's),
    or all foreground pixels together, each cluster taking the class of highest summed
    probability over its pixels (``all``: a pixel of the wrong class still joins its
    instance; for models trained with ``distance_scope='all'``). ``max_clusters`` caps
    the clusters of each class (``class``) or of the whole image (``all``). A trained
    model carries its own settings (a model saved before a field existed gets its
    default, the earlier behaviour), and ``predict`` may override any field.
    """

    LABEL: ClassVar[str] = "inference config"

    bandwidth: float = 1.5
    min_pixels: int = 5
    max_clusters: int = 64
    max_iterations: int = 50
    score: Score = "class"
    seed: int = 0
    small_clusters: SmallClusters = "drop"
    hidden_clusters: HiddenClusters = "keep"
    merge_radius: float = 3.0
    convex_hull: bool = False
    max_background: float | None = None
    cluster_scope: ClusterScope = "class"


CONCERNS: dict[str, type[_Concern]] = {
    "model": ModelConfig,
    "loss": LossConfig,
    "optimiser": OptimiserConfig,
    "evaluation": EvaluationConfig,
    "inference": InferenceConfig,
}
"""The concerns a :class:`TrainConfig` composes, in the order of its fields."""
FLAT_FIELDS: dict[str, tuple[str, ...]] = {}
"""Each flat field name (a flag's, an old ``train_config.json``'s) -> the concerns holding it."""
for _concern, _cls in CONCERNS.items():
    for _field in dataclasses.fields(_cls):  # type: ignore[arg-type]
        FLAT_FIELDS[_field.name] = (*FLAT_FIELDS.get(_field.name, ()), _concern)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a training run and its model are made with, one config per concern.

    Its JSON (``train_config.json``, the ``.keras`` file's ``get_config``) nests each
    concern's object under its name. :meth:`replace` and :func:`build_train_config`
    also take the flat field names, each routed to its concern.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimiser: OptimiserConfig = field(default_factory=OptimiserConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        for name, cls in CONCERNS.items():
            if not isinstance(getattr(self, name), cls):
                raise _invalid(name, getattr(self, name), f"a {cls.__name__}")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Each concern's JSON object under its name."""
        return {name: getattr(self, name).to_dict() for name in CONCERNS}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def settings(self) -> dict[str, Any]:
        """Every field as ``{"concern.field": value}`` (JSON values)."""
        return {f"{name}.{key}": value for name, data in self.to_dict().items() for key, value in data.items()}

    @classmethod
    def from_dict(cls, data: Any) -> TrainConfig:
        """A validated config from its nested JSON object, or from the flat one a run saved
        before the split (every key a field name, as in :meth:`replace`)."""
        _check_object(data, "train config")
        if not CONCERNS.keys() & data.keys():
            return cls.from_flat(data)
        unknown = sorted(set(data) - CONCERNS.keys())
        if unknown:
            raise ConfigError(f"unknown train config field(s) {unknown}: allowed are {list(CONCERNS)}")
        return cls().replace(**{name: CONCERNS[name].from_dict(value) for name, value in data.items()})

    @classmethod
    def from_flat(cls, data: dict[str, Any]) -> TrainConfig:
        """A validated config from flat field names (unset fields keep their defaults)."""
        unknown = sorted(str(key) for key in set(data) - FLAT_FIELDS.keys())
        if unknown:
            raise ConfigError(f"unknown train config field(s) {unknown}: allowed are {sorted(FLAT_FIELDS)}")
        return cls().replace(**data)

    @classmethod
    def from_json(cls, text: str | bytes) -> TrainConfig:
        """A validated config from JSON text (as saved in a run's ``train_config.json``)."""
        return cls.from_dict(parse_json(text, "train config"))

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some settings changed.

        A key is a concern's name (the value: its config, or a mapping of its fields to
        change) or a flat field name (``seed`` sets both seeds).
        """
        unknown = sorted(set(changes) - CONCERNS.keys() - FLAT_FIELDS.keys())
        if unknown:
            allowed = [*CONCERNS, *sorted(FLAT_FIELDS)]
            raise ConfigError(f"unknown train config field(s) {unknown}: allowed are {allowed}")
        per_concern: dict[str, dict[str, Any]] = {name: {} for name in CONCERNS}
        whole: dict[str, Any] = {}
        for key, value in changes.items():
            if key in CONCERNS and isinstance(value, dict):
                per_concern[key].update(value)
            elif key in CONCERNS:
                whole[key] = value
            else:
                for name in FLAT_FIELDS[key]:
                    per_concern[name][key] = value
        made = dataclasses.replace(self, **whole)
        return dataclasses.replace(
            made, **{name: getattr(made, name).replace(**fields) for name, fields in per_concern.items() if fields}
        )

    def with_overrides(self, **overrides: Any) -> TrainConfig:
        """:meth:`replace` for options left unset: a ``None`` (as a flat value or inside a
        concern's mapping) keeps the current value."""
        kept = {
            key: {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value
            for key, value in overrides.items()
            if value is not None
        }
        return self.replace(**kept)


_CPU_FAST = TrainConfig(
    model=ModelConfig(
        backbone="separable",
        feature_channels=64,
        head_filters=(64, 64, 32),
        head="shared",
        head_conv="separable",
        precision="auto",
        dropout=0.0,
    ),
    optimiser=OptimiserConfig(learning_rate=2e-3, schedule="cosine", batch_size=8),
)
TrainPresetName = Literal["paper", "light", "cpu", "cpu-fast", "cpu-deep", "cpu-lean", "tiny"]
TRAIN_PRESETS: dict[str, TrainConfig] = {
    "paper": TrainConfig(),
    "light": TrainConfig(
        model=ModelConfig(backbone="mobilenetv2", feature_channels=64, head_filters=(64, 64, 32)),
        optimiser=OptimiserConfig(learning_rate=1e-3, batch_size=8),
    ),
    "cpu": TrainConfig(
        model=ModelConfig(backbone="tiny", feature_channels=64, head_filters=(64, 64, 32), dropout=0.0),
        optimiser=OptimiserConfig(learning_rate=2e-3, batch_size=8),
    ),
    "cpu-fast": _CPU_FAST,
    # cpu-fast with twice the stride-8 units and no GroupNorm at stride 2 and 4: the
    # same images/s on a 2-core CPU (the norms saved pay for the units added).
    "cpu-deep": _CPU_FAST.replace(model={"separable_units": 8, "stem_norm": False}),
    # cpu-deep with a space-to-depth stem and one GroupNorm per residual unit (after its
    # pointwise convolution) instead of two: about 1.3x its images/s on a 2-core CPU.
    "cpu-lean": _CPU_FAST.replace(
        model={"separable_units": 8, "stem_norm": False, "stem": "space_to_depth", "unit_norm": "pointwise"}
    ),
    "tiny": TrainConfig(
        model=ModelConfig(backbone="tiny", feature_channels=32, head_filters=(32, 32, 16), dropout=0.0),
        optimiser=OptimiserConfig(learning_rate=2e-3, batch_size=8),
    ),
}
"""The training presets, declared once: ``--preset NAME``."""


def build_train_config(preset: str = "paper", **overrides: Any) -> TrainConfig:
    """A training preset with overrides applied (as :meth:`TrainConfig.with_overrides`:
    flat field names or concern names, ``None`` keeps the preset's value), validated."""
    if not isinstance(preset, str) or preset not in TRAIN_PRESETS:
        raise _invalid("preset", preset, "one of " + ", ".join(TRAIN_PRESETS))
    return TRAIN_PRESETS[preset].with_overrides(**overrides)
