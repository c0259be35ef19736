"""The training concern's one frozen config: model, loss and optimisation settings."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

from shapesgen.config import reject_unknown_fields
from shapesgen.errors import ConfigError

Backbone = Literal["xception", "mobilenetv2", "tiny"]
Hinge = Literal["squared", "linear"]
DistanceScope = Literal["class", "all"]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Model, loss and optimiser settings (defaults: the paper, reference-code loss).

    Loss defaults follow the reference code (squared hinges, distance term within a
    class, regulariser weight 0.01, cross-entropy on the semantic heads) because that
    is what produced the paper's numbers; ``hinge='linear'``, ``distance_scope='all'``
    and ``reg_weight=1`` give the paper's written form.
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
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "head_filters", tuple(self.head_filters))
        checks: list[tuple[str, bool, str]] = [
            ("backbone", self.backbone in ("xception", "mobilenetv2", "tiny"), "xception, mobilenetv2 or tiny"),
            ("feature_channels", self.feature_channels >= 1, ">= 1"),
            ("head_filters", all(int(f) >= 1 for f in self.head_filters), "positive integers"),
            ("embedding_dim", self.embedding_dim >= 1, ">= 1"),
            ("group_norm_groups", self.group_norm_groups >= 1, ">= 1"),
            ("l2", self.l2 >= 0, ">= 0"),
            ("dropout", 0 <= self.dropout < 1, "in [0, 1)"),
            ("d_var", self.d_var >= 0, ">= 0"),
            ("d_dist", self.d_dist > 0, "> 0"),
            ("hinge", self.hinge in ("squared", "linear"), "squared or linear"),
            ("distance_scope", self.distance_scope in ("class", "all"), "class or all"),
            ("learning_rate", self.learning_rate > 0, "> 0"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("steps_per_epoch", self.steps_per_epoch is None or self.steps_per_epoch >= 1, "None or >= 1"),
            ("eval_every", self.eval_every >= 0, ">= 0 (0 = never)"),
            ("eval_scenes", self.eval_scenes >= 1, ">= 1"),
            ("bandwidth", self.bandwidth > 0, "> 0"),
            ("min_pixels", self.min_pixels >= 1, ">= 1"),
            ("max_clusters", self.max_clusters >= 1, ">= 1"),
            ("max_iterations", self.max_iterations >= 1, ">= 1"),
        ]
        for weight in ("var_weight", "dist_weight", "reg_weight", "ce_weight"):
            checks.append((weight, getattr(self, weight) >= 0, ">= 0"))
        for name, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r} is invalid: must be {allowed}")

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["head_filters"] = list(self.head_filters)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        reject_unknown_fields(cls, data, "train config")
        return cls(**data)

    def replace(self, **changes: Any) -> TrainConfig:
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
TRAIN_PRESETS = {"paper": PAPER, "light": LIGHT, "cpu": CPU, "tiny": TINY}
