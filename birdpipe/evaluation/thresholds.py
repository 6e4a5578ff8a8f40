"""Decision thresholds for the F1-type years (2021, 2022), chosen on out-of-fold predictions.

A global threshold maximises the configured objective over a grid; per-species thresholds
then maximise it species by species (exactly for the separable objectives, by coordinate
ascent for the row-wise 2021 F1), and are shrunk toward the global one in proportion to how
few positives a species has, because a threshold fitted to three positives is mostly noise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from birdpipe.evaluation import metrics
from birdpipe.registry import Registry

if TYPE_CHECKING:
    from birdpipe.evaluation.config import ThresholdConfig


@dataclass(frozen=True)
class Objective:
    """What thresholds are tuned for.

    `value` scores binary predictions `[n, C]`. A separable objective is a mean over species
    of `species_curve(tp, fp, n_pos, n_neg)` (counts at every grid threshold), so each
    species' threshold is found on its own; otherwise thresholds are found by coordinate ascent.
    """

    value: Callable[[np.ndarray, np.ndarray], float]
    species_curve: Callable[[np.ndarray, np.ndarray, int, int], np.ndarray] | None = None


#: name -> Objective; the config's `[thresholds] objective`.
OBJECTIVES: Registry[Objective] = Registry("threshold objective")


def _f1_macro(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Per-species F1 averaged over the species that have positives."""
    import sklearn.metrics as skm

    scored = y_true.sum(axis=0) > 0
    return float(skm.f1_score(y_true[:, scored], y_pred[:, scored], average="macro", zero_division=0.0))


def _f1_curve(tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int) -> np.ndarray:
    return 2 * tp / (2 * tp + fp + (n_pos - tp))


def _balanced_accuracy_curve(tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int) -> np.ndarray:
    """(TPR + TNR) / 2; with only positives, the recall, as sklearn does."""
    tnr = (n_neg - fp) / n_neg if n_neg else tp / n_pos
    return (tp / n_pos + tnr) / 2


OBJECTIVES.register("f1_micro_rows")(Objective(metrics.rowwise_f1))
OBJECTIVES.register("f1_macro")(Objective(_f1_macro, _f1_curve))
OBJECTIVES.register("balanced_accuracy")(Objective(metrics.weighted_accuracy, _balanced_accuracy_curve))


@dataclass(frozen=True)
class Thresholds:
    objective: str
    global_threshold: float
    per_species: dict[str, float]
    #: Out-of-fold positives per species (how much each own threshold was trusted).
    positives: dict[str, int]
    #: Objective at each candidate global threshold: columns threshold, metric.
    curve: pl.DataFrame
    #: Objective with the global threshold, and with the per-species thresholds.
    global_score: float
    per_species_score: float

    def vector(self, classes: Sequence[str]) -> np.ndarray:
        """One threshold per class, the global one for classes not calibrated."""
        return np.array([self.per_species.get(c, self.global_threshold) for c in classes])

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "objective": self.objective,
            "global_threshold": self.global_threshold,
            # strict JSON: an uncalibrated score (NaN) is written as null
            "global_score": _finite_or_none(self.global_score),
            "per_species_score": _finite_or_none(self.per_species_score),
            "per_species": self.per_species,
            "positives": self.positives,
            "curve": self.curve.to_dict(as_series=False),
        }
        path.write_text(json.dumps(data, indent=1))
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> Thresholds:
        data = json.loads(Path(path).read_text())
        scores = {k: math.nan if data[k] is None else data[k] for k in ("global_score", "per_species_score")}
        curve = pl.DataFrame(data["curve"], schema={"threshold": pl.Float64, "metric": pl.Float64})
        return cls(**{**data, **scores, "curve": curve})

    @classmethod
    def constant(cls, value: float = 0.5) -> Thresholds:
        """The same threshold for every class: the fallback when none were calibrated."""
        curve = pl.DataFrame(schema={"threshold": pl.Float64, "metric": pl.Float64})
        return cls("none", value, {}, {}, curve, float("nan"), float("nan"))


def calibrate(
    y_true: np.ndarray, y_prob: np.ndarray, classes: Sequence[str], cfg: ThresholdConfig
) -> Thresholds:
    """Global and shrunk per-species thresholds maximising `cfg.objective` on OOF predictions."""
    objective = OBJECTIVES.get(cfg.objective)
    y_true, y_prob = metrics.check_matrices(y_true, y_prob, classes)
    grid = np.linspace(0.0, 1.0, cfg.grid_size + 2)[1:-1]
    if objective.species_curve:
        per_curves = species_curves(objective, y_true, y_prob, grid)
        curve = np.nanmean(per_curves, axis=1)
        best_global = grid[_best(curve)]
        own = np.array([grid[_best(col)] if np.isfinite(col).all() else best_global for col in per_curves.T])
    else:
        curve = np.array([_row_f1_mean(y_true, y_prob >= t) for t in grid])
        best_global = grid[_best(curve)]
        own = _row_f1_ascent(y_true, y_prob, grid, np.full(len(classes), best_global), cfg.sweeps)
    positives = y_true.sum(axis=0)
    weight = np.minimum(1.0, positives / cfg.shrink_positives) if cfg.shrink_positives > 0 else 1.0
    final = weight * own + (1.0 - weight) * best_global
    return Thresholds(
        objective=cfg.objective,
        global_threshold=float(best_global),
        per_species={c: float(t) for c, t in zip(classes, final)},
        positives={c: int(p) for c, p in zip(classes, positives)},
        curve=pl.DataFrame({"threshold": grid, "metric": curve}),
        global_score=objective.value(y_true, y_prob >= best_global),
        per_species_score=objective.value(y_true, y_prob >= final),
    )


def objective_value(objective: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The objective of binary predictions, averaged over species with positives where per-species."""
    return OBJECTIVES.get(objective).value(y_true, y_pred)


def species_curves(objective: Objective, y_true: np.ndarray, y_prob: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """`[len(grid), C]` per-species F1 or balanced accuracy at each threshold; NaN without positives.

    Counts come from sorted scores, so the cost is O(C (n log n + G log n)) instead of O(G n C).
    """
    out = np.full((len(grid), y_true.shape[1]), np.nan)
    for c in range(y_true.shape[1]):
        is_pos = y_true[:, c] == 1
        pos, neg = np.sort(y_prob[is_pos, c]), np.sort(y_prob[~is_pos, c])
        if not len(pos):
            continue
        tp = len(pos) - np.searchsorted(pos, grid, side="left")
        fp = len(neg) - np.searchsorted(neg, grid, side="left")
        out[:, c] = objective.species_curve(tp, fp, len(pos), len(neg))
    return out


def _row_f1_ascent(
    y_true: np.ndarray, y_prob: np.ndarray, grid: np.ndarray, start: np.ndarray, sweeps: int
) -> np.ndarray:
    """Per-species thresholds for row-wise F1 by coordinate ascent.

    With the other species fixed, each row's F1 takes one value when species c is predicted
    and another when it is not; the mean F1 as a function of c's threshold is then a suffix
    sum over rows sorted by c's score, evaluated for the whole grid at once.
    """
    thr = start.copy()
    truth = y_true == 1
    pred = y_prob >= thr
    n_true, tp, n_pred = truth.sum(axis=1), (pred & truth).sum(axis=1), pred.sum(axis=1)
    for _ in range(sweeps):
        for c in range(y_true.shape[1]):
            tp_other, n_other = tp - (pred[:, c] & truth[:, c]), n_pred - pred[:, c]
            f1_off = _row_f1(tp_other, n_other, n_true)
            gain = _row_f1(tp_other + truth[:, c], n_other + 1, n_true) - f1_off
            order = np.argsort(y_prob[:, c])
            suffix = np.concatenate([np.cumsum(gain[order][::-1])[::-1], [0.0]])
            first_on = np.searchsorted(y_prob[order, c], grid, side="left")
            thr[c] = grid[_best(f1_off.sum() + suffix[first_on])]
            pred[:, c] = y_prob[:, c] >= thr[c]
            tp, n_pred = tp_other + (pred[:, c] & truth[:, c]), n_other + pred[:, c]
    return thr


def _row_f1_mean(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """`metrics.rowwise_f1` from counts, fast enough to evaluate for every grid threshold."""
    truth = y_true == 1
    return float(_row_f1((y_pred & truth).sum(axis=1), y_pred.sum(axis=1), truth.sum(axis=1)).mean())


def _row_f1(tp: np.ndarray, n_pred: np.ndarray, n_true: np.ndarray) -> np.ndarray:
    """Per-row F1 of label sets from counts, an empty set standing for `nocall`."""
    both_empty = (n_pred == 0) & (n_true == 0)
    return 2 * (tp + both_empty) / (np.maximum(n_pred, 1) + np.maximum(n_true, 1))


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _best(values: np.ndarray) -> int:
    """Middle index of the maximal values: the centre of a plateau, not its lower edge."""
    top = np.flatnonzero(values >= np.nanmax(values) - 1e-12)
    return int(top[len(top) // 2])
