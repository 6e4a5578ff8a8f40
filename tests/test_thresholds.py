"""Threshold calibration on constructed cases whose optimum is known."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from birdpipe.config import ThresholdConfig
from birdpipe.evaluation.plots import plot_threshold_curve
from birdpipe.evaluation.thresholds import Thresholds, calibrate, objective_value

CLASSES = ["aaa", "bbb", "ccc"]


def _separated():
    """aaa: positives 0.6-0.9, negatives 0.1-0.3 (any t in (0.3, 0.6] is perfect);
    bbb: positives 0.2-0.35, negatives 0.0-0.1 (perfect for t in (0.1, 0.2])."""
    rng = np.random.default_rng(0)
    n = 200
    y_true = np.zeros((n, 3), dtype=int)
    y_true[:60, 0] = 1
    y_true[100:160, 1] = 1
    y_prob = np.zeros((n, 3))
    y_prob[:, 0] = np.where(y_true[:, 0] == 1, rng.uniform(0.6, 0.9, n), rng.uniform(0.1, 0.3, n))
    y_prob[:, 1] = np.where(y_true[:, 1] == 1, rng.uniform(0.2, 0.35, n), rng.uniform(0.0, 0.1, n))
    y_prob[:, 2] = rng.uniform(0.0, 0.05, n)  # ccc: never present
    return y_true, y_prob


@pytest.mark.parametrize("objective", ["f1_macro", "balanced_accuracy"])
def test_separable_known_optimum(objective):
    y_true, y_prob = _separated()
    th = calibrate(y_true, y_prob, CLASSES, ThresholdConfig(objective=objective, shrink_positives=10))
    assert 0.3 < th.per_species["aaa"] <= 0.6
    assert th.per_species["aaa"] == pytest.approx(0.45, abs=0.01)  # centre of the plateau
    assert 0.1 < th.per_species["bbb"] <= 0.2
    assert th.per_species["ccc"] == th.global_threshold  # no positives: the global one
    assert th.per_species_score == pytest.approx(1.0)
    # no shared threshold separates both species: global is strictly worse, and is the brute-force best
    brute = max(objective_value(objective, y_true, y_prob >= t) for t in np.linspace(0.001, 0.999, 999))
    assert th.global_score == pytest.approx(brute, abs=2e-3)
    assert th.global_score < 1.0


@pytest.mark.parametrize("objective", ["f1_macro", "balanced_accuracy", "f1_micro_rows"])
def test_curve_matches_objective(objective):
    rng = np.random.default_rng(1)
    y_true = (rng.random((120, 3)) < 0.25).astype(int)
    y_prob = np.clip(0.3 * y_true + rng.random((120, 3)) * 0.8, 0, 1)
    th = calibrate(y_true, y_prob, CLASSES, ThresholdConfig(objective=objective, grid_size=19))
    for t, value in th.curve.iter_rows():
        assert value == pytest.approx(objective_value(objective, y_true, y_prob >= t))
    assert th.curve["threshold"].to_list() == pytest.approx(np.arange(1, 20) / 20)


def test_row_f1_ascent_is_coordinatewise_optimal():
    rng = np.random.default_rng(2)
    y_true = (rng.random((150, 3)) < [0.5, 0.2, 0.1]).astype(int)
    y_prob = np.clip(0.35 * y_true + rng.random((150, 3)) * [0.7, 0.5, 0.9], 0, 1)
    cfg = ThresholdConfig(objective="f1_micro_rows", grid_size=19, shrink_positives=0, sweeps=4)
    th = calibrate(y_true, y_prob, CLASSES, cfg)
    thr = th.vector(CLASSES)
    best = objective_value("f1_micro_rows", y_true, y_prob >= thr)
    assert best == pytest.approx(th.per_species_score)
    assert best >= th.global_score
    for c in range(3):
        for t in np.arange(1, 20) / 20:
            trial = thr.copy()
            trial[c] = t
            assert objective_value("f1_micro_rows", y_true, y_prob >= trial) <= best + 1e-12


def test_few_positives_are_shrunk_toward_global():
    y_true, y_prob = _separated()
    y_true[:, 0] = 0
    y_true[:2, 0] = 1  # aaa: 2 positives (scores 0.6-0.9)
    y_prob[2:, 0] = np.minimum(y_prob[2:, 0], 0.3)
    free = calibrate(y_true, y_prob, CLASSES, ThresholdConfig(shrink_positives=0))
    shrunk = calibrate(y_true, y_prob, CLASSES, ThresholdConfig(shrink_positives=10))
    expected = 0.2 * free.per_species["aaa"] + 0.8 * shrunk.global_threshold
    assert shrunk.per_species["aaa"] == pytest.approx(expected)
    assert shrunk.per_species["bbb"] == pytest.approx(free.per_species["bbb"])  # 60 positives: kept


def test_json_round_trip_and_plot(tmp_path):
    y_true, y_prob = _separated()
    th = calibrate(y_true, y_prob, CLASSES, ThresholdConfig())
    back = Thresholds.from_json(th.to_json(tmp_path / "t.json"))
    assert back.per_species == th.per_species and back.global_threshold == th.global_threshold
    assert back.curve.equals(th.curve)
    png = plot_threshold_curve(th, tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_constant_fallback(tmp_path):
    th = Thresholds.constant(0.3)
    assert th.vector(CLASSES).tolist() == [0.3, 0.3, 0.3]
    assert isinstance(th.curve, pl.DataFrame)
    path = th.to_json(tmp_path / "t.json")
    assert "NaN" not in path.read_text()  # strict JSON
    back = Thresholds.from_json(path)
    assert back.vector(CLASSES).tolist() == [0.3, 0.3, 0.3] and np.isnan(back.global_score)
