"""Review of cluster_scope and the merge_radius refusal: a resumed run may change the scope,
the refusal names the flags the user types and which values are the model's, and
clustering across classes keeps its invariants."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import fake_epoch, quick_config, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from amodal_model.cluster import cluster_pixels
from amodal_model.config import RESUME_MAY_CHANGE, InferenceConfig, TrainConfig
from shapesgen import ConfigError


def test_every_inference_setting_but_the_seed_may_change_on_resume() -> None:
    """cluster_scope was missing: resuming with it changed was refused as a training setting."""
    inference = {f"inference.{f.name}" for f in dataclasses.fields(InferenceConfig)}
    assert inference - RESUME_MAY_CHANGE == {"inference.seed"}


def test_a_resumed_run_may_change_the_cluster_scope(
    run_dir: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from amodal_model.train import Trainer, train

    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    monkeypatch.setattr(Trainer, "run_epoch", fake_epoch)
    train(tiny_dataset, run, quick_config().replace(epochs=2, cluster_scope="all"), resume=True)
    saved = TrainConfig.from_json((run / "train_config.json").read_text())
    assert saved.inference.cluster_scope == "all"


def test_a_merge_radius_refusal_names_the_values_and_the_flags(
    run_dir: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """The run merges nothing (the defaults): the message says which values are the model's,
    and the CLI names every setting by its flag, not only --merge-radius."""
    from amodal_model.predict import predict_run

    out = tmp_path / "r.json"
    with pytest.raises(ConfigError) as caught:
        predict_run(run_dir, tiny_dataset, out, merge_radius=2.0, hidden_clusters="drop", workers=1)
    assert str(caught.value) == (
        "merge_radius=2.0 has no effect: small_clusters='drop' (the model's) and hidden_clusters='drop'; "
        "pass small_clusters='merge' or hidden_clusters='merge'"
    )
    out.write_text("[]")  # an earlier results file: --force may replace it, the refusal must not
    result = run_cli(
        "predict", "--model", run_dir, "--data", tiny_dataset, "--out", out, "--small-clusters", "drop",
        "--merge-radius", "2", "--force", "-q",
    )  # fmt: skip
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr == (
        "error: --merge-radius 2.0 has no effect: --small-clusters 'drop' and --hidden-clusters 'keep' (the model's); "
        "pass --small-clusters 'merge' or --hidden-clusters 'merge'\n"
    )
    assert out.read_text() == "[]" and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    classes=st.integers(1, 3),
    max_clusters=st.integers(1, 6),
    max_background=st.none() | st.floats(0.2, 0.9),
)
def test_clustering_across_classes_keeps_its_invariants(
    seed: int, classes: int, max_clusters: int, max_background: float | None
) -> None:
    """scope='all': background stays -1, clusters are numbered 0..n-1 under the image-wide cap,
    each takes an object class, only a reached cap leaves foreground over; one object class
    gives exactly the per-class result."""
    rng = np.random.default_rng(seed)
    semantic = rng.dirichlet(np.ones(classes + 1), size=(2, 6, 6)).astype(np.float32)
    semantic[rng.random((2, 6, 6)) < 0.3] = np.eye(classes + 1)[0]  # some sure background
    embedding = rng.normal(0, 2, size=(2, 6, 6, 3)).astype(np.float32)
    kwargs = {"bandwidth": 1.5, "max_clusters": max_clusters, "seed": seed, "max_background": max_background}
    labels, class_of = cluster_pixels(semantic, embedding, scope="all", **kwargs)
    foreground = semantic[..., 0] < max_background if max_background is not None else semantic.argmax(-1) > 0
    assert (labels[~foreground] == -1).all()
    assert len(class_of) == labels.max() + 1 <= max_clusters
    assert set(np.unique(labels[labels >= 0]).tolist()) == set(range(len(class_of)))
    assert ((class_of >= 1) & (class_of <= classes)).all()
    if len(class_of) < max_clusters:
        assert (labels[foreground] >= 0).all()
    if classes == 1:
        by_class = cluster_pixels(semantic, embedding, scope="class", **kwargs)
        assert np.array_equal(by_class[0], labels) and np.array_equal(by_class[1], class_of)


@pytest.mark.parametrize("form", ["run folder", "model file"])
def test_a_merge_radius_refusal_comes_before_the_model_loads(
    form: str, run_dir: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model's own settings are read from its config alone: the refusal costs no model load."""
    from amodal_model import predict

    def no_loading(*args: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(predict, "load_run", no_loading)
    model = run_dir if form == "run folder" else run_dir / "model.keras"
    with pytest.raises(ConfigError, match=r"^merge_radius=2.0 has no effect: small_clusters='drop' \(the model's\)"):
        predict.predict_run(model, tiny_dataset, tmp_path / "r.json", merge_radius=2.0, workers=1)
    assert not (tmp_path / "r.json").exists()


def test_a_merge_radius_with_a_pipe_for_a_model_is_refused_without_blocking(tiny_dataset: Path, tmp_path: Path) -> None:
    """Reading the model's settings early must not open a pipe (the read would wait for a writer)."""
    import os

    from amodal_model.predict import predict_run
    from shapesgen import DatasetError

    pipe = tmp_path / "m.keras"
    os.mkfifo(pipe)
    with pytest.raises(DatasetError, match="named pipe"):
        predict_run(pipe, tiny_dataset, tmp_path / "r.json", merge_radius=2.0, workers=1)
