"""Inference settings, scoring, visible-only targets and parallel clustering."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amodal_model.cluster import (
    cluster_instances,
    cluster_pixels,
    instance_score,
    instances_from_labels,
    merge_clusters,
    pixel_classes,
    threshold_mean_shift,
)
from amodal_model.config import TRAIN_PRESETS, TrainConfig
from amodal_model.data import visible_targets
from amodal_model.inference import InferenceConfig, clusterer, image_records
from shapesgen import ConfigError


def test_inference_config_comes_from_the_train_config_and_overrides_keep_unset_fields() -> None:
    config = TrainConfig().replace(bandwidth=1.2, min_pixels=7, score="product")
    settings = config.inference
    assert (settings.bandwidth, settings.min_pixels, settings.score) == (1.2, 7, "product")
    changed = settings.with_overrides(bandwidth=None, score="completeness")
    assert (changed.bandwidth, changed.score) == (1.2, "completeness")
    with pytest.raises(ConfigError, match="bandwidth=None is invalid"):
        settings.replace(bandwidth=None)  # replace sets what it is given; with_overrides skips None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("bandwidth", 0, "bandwidth=0 is invalid"),
        ("bandwidth", float("nan"), "bandwidth=nan is invalid"),
        ("min_pixels", 0, "min_pixels=0 is invalid"),
        ("score", "area", "score='area' is invalid"),
    ],
)
def test_bad_inference_settings_are_one_config_error(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        InferenceConfig().replace(**{field: value})


def test_instance_score_kinds() -> None:
    assert instance_score("class", 0.8, 0.5) == 0.8
    assert instance_score("completeness", 0.8, 0.5) == 0.5
    assert instance_score("product", 0.8, 0.5) == pytest.approx(0.4)


def two_stacked_instances() -> tuple[np.ndarray, np.ndarray]:
    """Instance A (embedding 0) fully visible; instance B (embedding 4) half under A."""
    semantic = np.zeros((2, 8, 8, 2), np.float32)
    semantic[..., 0] = 1.0
    embedding = np.zeros((2, 8, 8, 3), np.float32)
    semantic[0, :4, :4] = [0.1, 0.9]  # A, layer 1
    semantic[0, 4:, :4] = [0.3, 0.7]  # B's visible half, layer 1
    embedding[0, 4:, :4] = 4.0
    semantic[1, :4, :4] = [0.3, 0.7]  # B's hidden half, layer 2
    embedding[1, :4, :4] = 4.0
    return semantic, embedding


@pytest.mark.parametrize(
    ("score", "expected"), [("class", [0.9, 0.7]), ("completeness", [1.0, 0.5]), ("product", [0.9, 0.35])]
)
def test_scores_rank_by_class_probability_visible_fraction_or_both(score: str, expected: list[float]) -> None:
    semantic, embedding = two_stacked_instances()
    instances = cluster_instances(semantic, embedding, score=score, min_pixels=1)
    by_size = sorted(instances, key=lambda i: i.pixels)
    assert [i.pixels for i in by_size] == [16, 32]
    assert [i.score for i in by_size] == pytest.approx(expected)


def test_mean_shift_never_wastes_a_cluster_on_a_claimed_centre() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0, 0], [5, 0, 0], [0, 5, 0]])
    points = np.concatenate([c + rng.uniform(-0.2, 0.2, (300, 3)) for c in centres])
    labels = threshold_mean_shift(points, 1.5, np.random.default_rng(1), max_clusters=3, max_iterations=50)
    assert (labels >= 0).all() and len(set(labels.tolist())) == 3


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_visible_targets_drop_exactly_the_instances_absent_from_layer_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    layers = rng.integers(0, 6, (3, 3, 5, 5)).astype(np.int32)
    batch = {
        "image": np.zeros((3, 8, 8, 1), np.uint8),
        "layers": layers,
        "class_layers": np.where(layers > 0, 1 + layers % 3, 0).astype(np.int32),
        "instance_classes": np.zeros((3, 6), np.int32),
        "index": np.arange(3),
    }
    out = visible_targets(batch)
    for b in range(3):
        visible = set(np.unique(layers[b, 0]).tolist()) - {0}
        kept = set(np.unique(out["layers"][b]).tolist()) - {0}
        assert kept == visible
        hidden = ~np.isin(layers[b], list(visible))
        assert (out["layers"][b][hidden] == 0).all() and (out["class_layers"][b][hidden] == 0).all()
        assert np.array_equal(out["layers"][b][~hidden], layers[b][~hidden])
    assert out["image"] is batch["image"]


def test_clustering_in_worker_processes_gives_the_same_records_as_in_process() -> None:
    rng = np.random.default_rng(3)
    semantic = rng.dirichlet(np.ones(4), (4, 2, 16, 16)).astype(np.float32)
    embedding = rng.normal(0, 2, (4, 2, 16, 16, 3)).astype(np.float32)
    outputs = {"semantic": semantic, "embedding": embedding}
    settings = InferenceConfig(score="product")
    with clusterer(settings, 1) as one:
        alone = one.submit(outputs, [10, 11, 12, 13])()
    with clusterer(settings, 2) as pool:
        first = pool.submit(outputs, [10, 11, 12, 13])
        again = pool.submit(outputs, [10, 11, 12, 13])
        assert first() == alone == again()
    assert {r["image_id"] for r in alone} == {11, 12, 13, 14}


@pytest.mark.parametrize("workers", [0, -1, True, 10**6])
def test_bad_worker_counts_are_refused(workers: object) -> None:
    with pytest.raises(ConfigError, match="workers=.* is invalid"):
        with clusterer(InferenceConfig(), workers):  # type: ignore[arg-type]
            pass


def test_the_cpu_preset_is_the_fast_one() -> None:
    fast = TRAIN_PRESETS["cpu-fast"]
    assert (fast.model.head, fast.optimiser.schedule, fast.model.precision) == ("shared", "cosine", "auto")
    assert fast.loss.loss_normalisation == "reference" and fast.loss.visible_targets


def fragment_and_hidden() -> tuple[np.ndarray, np.ndarray]:
    """Instance A (embedding 0, 30 pixels of class 1 in layer 1) with a 3-pixel fragment of
    class 2 at L1 distance 2.4 (near enough to merge); a cluster of 12 pixels seen only in
    layer 2 (embedding 20, far from everything)."""
    semantic = np.zeros((2, 8, 8, 3), np.float32)
    semantic[..., 0] = 1.0
    embedding = np.zeros((2, 8, 8, 3), np.float32)
    semantic[0, :5, :6] = [0.1, 0.9, 0.0]  # A
    semantic[0, 5, :3] = [0.2, 0.0, 0.8]  # A's fragment, another class
    embedding[0, 5, :3] = 0.8
    semantic[1, 6:, 2:8] = [0.3, 0.7, 0.0]  # the hidden-only cluster
    embedding[1, 6:, 2:8] = 20.0
    return semantic, embedding


def test_small_clusters_merge_into_the_nearest_cluster_instead_of_being_dropped() -> None:
    semantic, embedding = fragment_and_hidden()
    dropped = cluster_instances(semantic, embedding, min_pixels=5)
    merged = cluster_instances(semantic, embedding, min_pixels=5, small_clusters="merge")
    assert sorted(i.pixels for i in dropped) == [12, 30]
    assert sorted(i.pixels for i in merged) == [12, 33]
    a = next(i for i in merged if i.pixels == 33)
    assert a.class_id == 1 and a.mask[5, :3].all() and a.visible[5, :3].all()
    far = cluster_instances(semantic, embedding, min_pixels=5, small_clusters="merge", merge_radius=1.0)
    assert sorted(i.pixels for i in far) == [12, 30]  # nothing within the radius: dropped as before


@pytest.mark.parametrize(("hidden", "expected"), [("keep", [12, 30]), ("drop", [30]), ("merge", [30])])
def test_clusters_without_a_layer_one_pixel_are_kept_dropped_or_merged(hidden: str, expected: list[int]) -> None:
    semantic, embedding = fragment_and_hidden()
    found = cluster_instances(semantic, embedding, min_pixels=5, hidden_clusters=hidden)
    assert sorted(i.pixels for i in found) == expected
    near = cluster_instances(
        semantic, embedding, min_pixels=5, small_clusters="merge", hidden_clusters="merge", merge_radius=100.0
    )
    assert [(i.class_id, i.pixels) for i in near] == [(1, 45)]  # both join A


def test_the_convex_hull_prior_fills_an_amodal_mask_and_is_off_by_default() -> None:
    semantic = np.zeros((2, 8, 8, 2), np.float32)
    semantic[..., 0] = 1.0
    semantic[0, :6, :2] = semantic[0, 4:6, :6] = [0.1, 0.9]  # an L
    embedding = np.zeros((2, 8, 8, 3), np.float32)
    (plain,) = cluster_instances(semantic, embedding, min_pixels=1)
    (hull,) = cluster_instances(semantic, embedding, min_pixels=1, convex_hull=True)
    assert plain.mask.sum() == 20 and hull.mask.sum() > 20 and hull.mask[plain.mask].all()
    assert hull.mask[3, 3] and not plain.mask[3, 3]
    assert (hull.pixels, hull.score, hull.depth) == (plain.pixels, plain.score, plain.depth)
    assert np.array_equal(hull.visible, plain.visible)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["keep", "drop", "merge"]))
def test_merging_only_moves_pixels_and_the_defaults_change_nothing(seed: int, hidden: str) -> None:
    rng = np.random.default_rng(seed)
    semantic = rng.dirichlet(np.ones(3), (2, 12, 12)).astype(np.float32)
    embedding = rng.normal(0, 2, (2, 12, 12, 3)).astype(np.float32)
    labels, class_of = cluster_pixels(semantic, embedding, seed=seed)
    assert merge_clusters(labels, embedding, len(class_of)) is labels
    merged = merge_clusters(labels, embedding, len(class_of), small_clusters="merge", hidden_clusters=hidden)
    moved = merged != labels
    assert (labels[moved] >= 0).all()  # only clustered pixels move (to another cluster or to none)
    dropped = instances_from_labels(semantic, labels, class_of, min_pixels=8)
    kept = instances_from_labels(semantic, merged, class_of, min_pixels=8)
    if hidden == "keep":  # merging small clusters only adds pixels to the kept instances
        covered = np.any([i.mask for i in kept], axis=0) if kept else np.zeros((12, 12), bool)
        for instance in dropped:
            assert covered[instance.mask].all()
    assert all(i.visible.any() for i in kept) or hidden == "keep"


def test_new_inference_fields_default_to_the_earlier_behaviour_and_reach_the_records() -> None:
    saved = InferenceConfig(bandwidth=1.5, min_pixels=20).to_dict()
    for name in ("small_clusters", "hidden_clusters", "merge_radius", "convex_hull", "max_background"):
        del saved[name]  # a model saved before these fields existed
    old = TrainConfig.from_dict({"inference": saved}).inference
    assert (old.small_clusters, old.hidden_clusters, old.convex_hull, old.max_background) == (
        "drop",
        "keep",
        False,
        None,
    )
    semantic, embedding = fragment_and_hidden()
    plain = image_records(semantic, embedding, 0, old.replace(min_pixels=5))
    explicit = [i for i in cluster_instances(semantic, embedding, min_pixels=5, seed=[0, 0])]
    assert [r["score"] for r in plain] == [round(i.score, 6) for i in explicit]
    merged = image_records(semantic, embedding, 0, old.with_overrides(min_pixels=5, small_clusters="merge"))
    assert len(merged) == len(plain) and merged != plain


def test_max_background_makes_a_pixel_whose_classes_split_the_probability_foreground() -> None:
    semantic = np.array([[0.4, 0.35, 0.25], [0.7, 0.1, 0.2], [0.1, 0.2, 0.7]], np.float32)
    assert pixel_classes(semantic).tolist() == [0, 0, 2]
    assert pixel_classes(semantic, 0.5).tolist() == [1, 0, 2]
    assert pixel_classes(semantic, 1.0).tolist() == [1, 2, 2]
    with pytest.raises(ConfigError, match="max_background=0 is invalid"):
        InferenceConfig(max_background=0)


def test_clustering_across_classes_keeps_an_instance_whose_pixels_split_between_classes() -> None:
    """An instance whose occluded pixels the semantic head puts in the other class: per class
    they become a second instance of that class; clustered together, one instance of the
    class holding most of its probability, every pixel its own."""
    semantic = np.zeros((2, 8, 8, 3), np.float32)
    semantic[..., 0] = 1.0
    semantic[0, :4, :4] = [0.05, 0.9, 0.05]  # instance A, visible: class 1
    semantic[1, 4:6, :4] = [0.05, 0.35, 0.6]  # A behind B: the head says class 2
    semantic[0, 4:8, 4:8] = [0.05, 0.05, 0.9]  # instance B: class 2, far in embedding space
    embedding = np.zeros((2, 8, 8, 2), np.float32)
    embedding[0, 4:8, 4:8] = 10.0
    by_class = cluster_instances(semantic, embedding, min_pixels=1)
    together = cluster_instances(semantic, embedding, min_pixels=1, cluster_scope="all")
    assert sorted((i.class_id, i.pixels) for i in by_class) == [(1, 16), (2, 8), (2, 16)]
    assert sorted((i.class_id, i.pixels) for i in together) == [(1, 24), (2, 16)]
    a = next(i for i in together if i.class_id == 1)
    assert a.mask[:6, :4].all() and a.visible[:4, :4].all() and not a.visible[4:].any()
    labels, class_of = cluster_pixels(semantic, embedding, scope="all")
    assert sorted(class_of.tolist()) == [1, 2] and (labels[semantic[..., 0] == 1.0] == -1).all()
    with pytest.raises(ValueError, match="scope='image' is invalid"):
        cluster_pixels(semantic, embedding, scope="image")
