"""benchmarks/diagnose_model.py's embedding figures, on embeddings whose answer is known."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from diagnose_model import Truth, nearest_own_figures, separation_figures  # noqa: E402


def test_separation_figures_measure_spread_gaps_and_neighbours() -> None:
    ids = np.zeros((1, 2, 4, 4), np.int64)
    ids[0, 0, :2, :] = 1  # instance 1 in front, top half
    ids[0, 0, 2:, :] = 2  # instance 2 in front, bottom half ...
    ids[0, 1, :2, :] = 2  # ... and behind instance 1 (heavily occluded: half of it hidden)
    classes = np.where(ids > 0, 1, 0)
    embedding = np.zeros((1, 2, 4, 4, 2), np.float32)
    embedding[ids == 2] = (4.0, 0.0)  # instance 1 at the origin, 4 apart from instance 2
    embedding[0, 1][ids[0, 1] == 2] = (4.0, 1.0)  # its hidden part 1 away from its front
    rates = [np.array([np.nan, 0.0, 0.5])]
    figures = separation_figures(embedding, Truth(ids, classes, rates), d_var=0.5, bandwidth=1.5)
    none, heavy = figures["none"], figures["heavy"]
    assert none["instances"] == 1 and none["within_d_var"] == 1.0 and none["front_to_deeper"] is None
    assert heavy["instances"] == 1 and heavy["front_to_deeper"] == pytest.approx(1.0)
    assert heavy["within_d_var"] == 1.0  # each pixel 0.5 from the mean (4, 0.5)
    assert none["nearest_other"] == pytest.approx(4.5) and heavy["nearest_same_class"] == pytest.approx(4.5)
    assert figures["partial"]["instances"] == 0 and figures["partial"]["nearest_other"] is None


def test_nearest_own_counts_a_hidden_pixel_embedded_nearer_another_instance_as_lost() -> None:
    ids = np.zeros((1, 2, 1, 4), np.int64)
    ids[0, 0, 0, :2] = 1
    ids[0, 0, 0, 2:] = 2
    ids[0, 1, 0, :2] = 2  # instance 2's hidden part, behind instance 1
    embedding = np.zeros((1, 2, 1, 4, 1), np.float32)
    embedding[0, 0, 0, 2:] = 6.0
    embedding[0, 1, 0, :2, 0] = (6.0, 0.5)  # one hidden pixel near its own instance, one at instance 1
    truth = Truth(ids, np.where(ids > 0, 1, 0), [np.array([np.nan, 0.0, 0.5])])
    figures = nearest_own_figures(embedding, truth)  # instance 2's mean: (6 + 6 + 6 + 0.5) / 4
    assert figures["layer 1"] == {"pixels": 4, "nearest_own": 1.0}
    assert figures["layer 2"] == {"pixels": 2, "nearest_own": 0.5}
