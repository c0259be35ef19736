"""amodal_model.config: one frozen config per concern, their JSON, presets and the flat form.

Every config class goes through the shared harness of ``conftest``: round trips,
unknown fields refused, each bad value refused with one line naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    assert_bad_value_refused,
    assert_round_trip,
    assert_unknown_field_refused,
    flat_train_config,
    run_cli,
)
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from amodal_model.config import (
    CONCERNS,
    FLAT_FIELDS,
    MAX_SEED,
    RESUME_MAY_CHANGE,
    TRAIN_PRESETS,
    EvaluationConfig,
    InferenceConfig,
    LossConfig,
    ModelConfig,
    OptimiserConfig,
    TrainConfig,
    build_train_config,
)
from shapesgen.errors import ConfigError

CLASSES = [ModelConfig, LossConfig, OptimiserConfig, EvaluationConfig, InferenceConfig, TrainConfig]
NUMBER = st.floats(1e-6, 1e6, allow_nan=False)
WEIGHT = st.floats(0.0, 1e6, allow_nan=False)
VALID: dict[str, st.SearchStrategy[Any]] = {
    "backbone": st.sampled_from(["xception", "mobilenetv2", "tiny", "separable"]),
    "backbone_weights": st.none() | st.text(min_size=1, max_size=8),
    "feature_channels": st.integers(1, 4096),
    "head_filters": st.lists(st.integers(1, 4096), min_size=1, max_size=16).map(tuple),
    "embedding_dim": st.integers(2, 4096),
    "group_norm_groups": st.integers(1, 4096),
    "l2": WEIGHT,
    "dropout": st.floats(0.0, 0.99),
    "head": st.sampled_from(["separate", "shared"]),
    "head_conv": st.sampled_from(["standard", "separable"]),
    "separable_units": st.integers(1, 8),
    "stem": st.sampled_from(["conv", "space_to_depth"]),
    "stem_norm": st.booleans(),
    "norm_free_bias": st.booleans(),
    "unit_norm": st.sampled_from(["both", "pointwise", "none"]),
    "output_kernel": st.integers(1, 7),
    "precision": st.sampled_from(["auto", "float32", "mixed_bfloat16"]),
    "position_scale": st.just(0.0) | st.floats(1e-6, 1e6),
    "d_var": WEIGHT,
    "d_dist": NUMBER,
    "var_weight": WEIGHT,
    "dist_weight": WEIGHT,
    "reg_weight": WEIGHT,
    "ce_weight": WEIGHT,
    "cross_class_weight": WEIGHT,
    "pixel_push_weight": WEIGHT,
    "hinge": st.sampled_from(["squared", "linear"]),
    "distance_scope": st.sampled_from(["class", "all"]),
    "loss_normalisation": st.sampled_from(["reference", "mean"]),
    "pull_balance": st.sampled_from(["pixels", "layers"]),
    "visible_targets": st.booleans(),
    "learning_rate": NUMBER,
    "schedule": st.sampled_from(["constant", "cosine"]),
    "batch_size": st.integers(1, 1024),
    "epochs": st.integers(1, 2**31 - 1),
    "steps_per_epoch": st.none() | st.integers(1, 2**31 - 1),
    "seed": st.integers(0, MAX_SEED),
    "eval_every": st.integers(0, 2**31 - 1),
    "eval_scenes": st.integers(1, 2**31 - 1),
    "bandwidth": st.floats(1e-6, 1e6),
    "min_pixels": st.integers(1, 2**31 - 1),
    "max_clusters": st.integers(1, 2**31 - 1),
    "max_iterations": st.integers(1, 2**31 - 1),
    "score": st.sampled_from(["class", "completeness", "product"]),
    "small_clusters": st.sampled_from(["drop", "merge"]),
    "hidden_clusters": st.sampled_from(["keep", "drop", "merge"]),
    "merge_radius": st.floats(1e-6, 1e6),
    "convex_hull": st.booleans(),
    "max_background": st.none() | st.floats(1e-6, 1.0),
    "cluster_scope": st.sampled_from(["class", "all"]),
}
BAD: list[tuple[str, Any, str]] = [
    ("backbone", "resnet", "backbone='resnet' is invalid: must be one of 'xception', 'mobilenetv2', 'tiny'"),
    ("backbone_weights", "", "backbone_weights='' is invalid"),
    ("feature_channels", 10**9, "feature_channels=1000000000 is invalid: must be an integer in [1, 4096]"),
    ("head_filters", [8, 0], "head_filters=[8, 0] is invalid"),
    ("embedding_dim", 2.0, "embedding_dim=2.0 is invalid"),
    ("group_norm_groups", 0, "group_norm_groups=0 is invalid"),
    ("l2", -1, "l2=-1 is invalid: must be a number >= 0"),
    ("dropout", 1.0, "dropout=1.0 is invalid: must be a finite number in [0, 1)"),
    ("head", "both", "head='both' is invalid"),
    ("head_conv", None, "head_conv=None is invalid"),
    ("separable_units", 9, "separable_units=9 is invalid"),
    ("stem_norm", 0, "stem_norm=0 is invalid: must be true or false"),
    ("norm_free_bias", "yes", "norm_free_bias='yes' is invalid: must be true or false"),
    ("stem", "s2d", "stem='s2d' is invalid: must be one of 'conv', 'space_to_depth'"),
    ("unit_norm", False, "unit_norm=False is invalid: must be one of 'both', 'pointwise', 'none'"),
    ("output_kernel", 0, "output_kernel=0 is invalid"),
    ("precision", "float16", "precision='float16' is invalid"),
    ("position_scale", -1, "position_scale=-1 is invalid: must be a number >= 0 and <= 1e+06"),
    ("d_var", float("nan"), "d_var=nan is invalid"),
    ("d_dist", -1, "d_dist=-1 is invalid: must be a number > 0"),
    ("var_weight", 1e39, "var_weight=1e+39 is invalid"),
    ("dist_weight", "1", "dist_weight='1' is invalid"),
    ("reg_weight", float("inf"), "reg_weight=inf is invalid"),
    ("ce_weight", True, "ce_weight=True is invalid"),
    ("cross_class_weight", -0.5, "cross_class_weight=-0.5 is invalid"),
    ("pixel_push_weight", -1.0, "pixel_push_weight=-1.0 is invalid"),
    ("hinge", "cubic", "hinge='cubic' is invalid"),
    ("distance_scope", "some", "distance_scope='some' is invalid"),
    ("loss_normalisation", "sum", "loss_normalisation='sum' is invalid"),
    ("pull_balance", "instances", "pull_balance='instances' is invalid"),
    ("visible_targets", "yes", "visible_targets='yes' is invalid: must be true or false"),
    ("learning_rate", 0.0, "learning_rate=0.0 is invalid: must be a number > 0"),
    ("schedule", "step", "schedule='step' is invalid"),
    ("batch_size", 1025, "batch_size=1025 is invalid: must be an integer in [1, 1024]"),
    ("epochs", 0, "epochs=0 is invalid"),
    ("steps_per_epoch", 0, "steps_per_epoch=0 is invalid: must be None (one pass) or an integer"),
    ("seed", -1, f"seed=-1 is invalid: must be an integer in [0, {MAX_SEED}]"),
    ("eval_every", -1, "eval_every=-1 is invalid"),
    ("eval_scenes", 0, "eval_scenes=0 is invalid"),
    ("bandwidth", 1e7, "bandwidth=10000000.0 is invalid: must be a number > 0 and <= 1e+06"),
    ("min_pixels", 0, "min_pixels=0 is invalid"),
    ("max_clusters", 0, "max_clusters=0 is invalid"),
    ("max_iterations", True, "max_iterations=True is invalid"),
    ("score", "area", "score='area' is invalid"),
    ("small_clusters", "keep", "small_clusters='keep' is invalid: must be one of 'drop', 'merge'"),
    ("hidden_clusters", None, "hidden_clusters=None is invalid"),
    ("merge_radius", 0, "merge_radius=0 is invalid: must be a number > 0 and <= 1e+06"),
    ("convex_hull", 1, "convex_hull=1 is invalid: must be true or false"),
    ("max_background", 1.5, "max_background=1.5 is invalid: must be None (the most probable class) or a number"),
    ("cluster_scope", "image", "cluster_scope='image' is invalid: must be one of 'class', 'all'"),
]


def concern_configs(cls: type) -> st.SearchStrategy[Any]:
    """Any valid config of one concern: each field left at its default or drawn."""
    names = [f.name for f in dataclasses.fields(cls)]
    return st.fixed_dictionaries({}, optional={name: VALID[name] for name in names}).map(lambda d: _built(cls, d))


def _built(cls: type, fields: dict[str, Any]) -> Any:
    """``cls(**fields)``; a draw whose fields are each valid but break a rule between fields
    (e.g. ``d_dist <= d_var``) is discarded, any other refusal is a bug in ``VALID``."""
    try:
        return cls(**fields)
    except ConfigError as exc:
        assume(not exc.related)
        raise


TRAIN_CONFIGS = st.builds(TrainConfig, **{name: concern_configs(cls) for name, cls in CONCERNS.items()})


def test_every_field_has_a_valid_strategy_and_a_bad_value() -> None:
    assert set(VALID) == set(FLAT_FIELDS) == {field for field, _, _ in BAD}
    assert {name for name, concerns in FLAT_FIELDS.items() if len(concerns) > 1} == {"seed"}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_defaults_round_trip_and_unknown_fields_are_refused(cls: type) -> None:
    assert_round_trip(cls())
    assert_unknown_field_refused(cls)


@pytest.mark.parametrize("cls", CLASSES[:-1], ids=lambda c: c.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_any_valid_concern_config_round_trips(cls: type, data: st.DataObject) -> None:
    assert_round_trip(data.draw(concern_configs(cls)))


@settings(max_examples=60, deadline=None)
@given(TRAIN_CONFIGS)
def test_any_train_config_round_trips_nested_and_through_the_old_flat_form(config: TrainConfig) -> None:
    assert_round_trip(config)
    assert set(json.loads(config.to_json())) == set(CONCERNS)
    flat = flat_train_config(config)  # one seed, as a run saved before the split
    assert TrainConfig.from_dict(flat) == config.replace(seed=config.optimiser.seed)


@pytest.mark.parametrize(("field", "value", "message"), BAD, ids=[f"{f}={v!r}" for f, v, _ in BAD])
def test_each_bad_value_is_one_line_naming_the_field(field: str, value: Any, message: str) -> None:
    for concern in FLAT_FIELDS[field]:
        cls = CONCERNS[concern]
        for make in (
            lambda cls=cls: cls(**{field: value}),
            lambda cls=cls: cls().replace(**{field: value}),
            lambda cls=cls: cls.from_dict({field: value}),
            lambda concern=concern: TrainConfig.from_dict({concern: {field: value}}),
            lambda concern=concern: TrainConfig().replace(**{concern: {field: value}}),
        ):
            assert_bad_value_refused(make, field, message)
    for make in (lambda: TrainConfig.from_dict({field: value}), lambda: TrainConfig().replace(**{field: value})):
        assert_bad_value_refused(make, field, message)  # the flat name, as an old file or a flag gives it


def test_position_needs_two_embedding_dimensions() -> None:
    with pytest.raises(ConfigError, match=r"^embedding_dim=1 is invalid with position_scale=4.0: must be") as caught:
        ModelConfig(embedding_dim=1, position_scale=4.0)
    assert caught.value.param == "embedding_dim" and caught.value.related == ("position_scale",)
    assert ModelConfig(embedding_dim=1).position_scale == 0.0


def test_a_concern_must_be_its_config() -> None:
    with pytest.raises(ConfigError, match=r"^model=\{'backbone': 'tiny'\} is invalid: must be a ModelConfig$"):
        TrainConfig(model={"backbone": "tiny"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^loss config must be a JSON object, not list$"):
        TrainConfig.from_dict({"loss": []})
    with pytest.raises(ConfigError, match=r"unknown train config field\(s\) \['d_dist'\]: allowed are \['model'"):
        TrainConfig.from_dict({"model": {}, "d_dist": 1.0})  # nested and flat keys mixed
    assert TrainConfig.from_dict({"loss": {"d_dist": 2.0}}) == TrainConfig(loss=LossConfig(d_dist=2.0))


def test_flat_names_go_to_their_concern_and_seed_to_both() -> None:
    config = TrainConfig().replace(d_dist=2.0, backbone="tiny", epochs=3, eval_every=0, score="product", seed=7)
    assert config.loss.d_dist == 2.0 and config.model.backbone == "tiny" and config.optimiser.epochs == 3
    assert config.evaluation.eval_every == 0 and config.inference.score == "product"
    assert config.optimiser.seed == config.inference.seed == 7
    assert config.replace(inference={"seed": 1}).optimiser.seed == 7
    assert config.replace(model=ModelConfig()).model == ModelConfig()


def test_settings_names_every_field_by_concern() -> None:
    paths = TrainConfig().settings()
    assert len(paths) == sum(len(dataclasses.fields(cls)) for cls in CONCERNS.values())
    assert RESUME_MAY_CHANGE <= set(paths)
    assert not any(path.endswith(".seed") for path in RESUME_MAY_CHANGE)


def test_presets_are_declared_once_and_round_trip() -> None:
    for name, preset in TRAIN_PRESETS.items():
        assert_round_trip(preset)
        assert build_train_config(name) == preset
    deep, fast = TRAIN_PRESETS["cpu-deep"], TRAIN_PRESETS["cpu-fast"]
    assert deep == fast.replace(separable_units=8, stem_norm=False)
    assert TRAIN_PRESETS["cpu-lean"] == deep.replace(stem="space_to_depth", unit_norm="pointwise")
    assert build_train_config("tiny", epochs=3, seed=None, loss={"d_dist": None}) == TRAIN_PRESETS["tiny"].replace(
        epochs=3
    )
    assert build_train_config("tiny", optimiser={"epochs": 3}).optimiser.epochs == 3


@pytest.mark.parametrize(
    ("fields", "message", "args"),
    [
        (
            {"d_var": 2.0, "d_dist": 1.0},
            "d_dist=1.0 is invalid with d_var=2.0: must be the greater of the two",
            ("--d-var", 2.0, "--d-dist", 1.0),
        ),
        (
            {"cross_class_weight": 0.3, "distance_scope": "all"},
            "cross_class_weight=0.3 is invalid with distance_scope='all': must be 0",
            ("--cross-class-weight", 0.3, "--distance-scope", "all"),
        ),
        (
            {"var_weight": 0.0, "dist_weight": 0.0, "ce_weight": 0.0},
            "var_weight=0, dist_weight=0 and ce_weight=0 are invalid together",
            ("--var-weight", 0, "--dist-weight", 0, "--ce-weight", 0),
        ),
    ],
)
def test_loss_settings_that_cannot_train_together_are_refused_naming_their_flags(
    fields: dict[str, Any], message: str, args: tuple[object, ...], tmp_path: Path
) -> None:
    """Each was accepted: margins that cannot separate instances, a push ignored, a loss of 0."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        LossConfig(**fields)
    result = run_cli("train", "--train", "x.h5", "--out", tmp_path / "run", *args)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert all(flag in result.stderr for flag in args[:3:2]), result.stderr
    assert not (tmp_path / "run").exists()
