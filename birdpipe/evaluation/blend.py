"""Blending ensemble members, tuned on out-of-fold predictions, and their side-by-side scores.

Members predict per 5 s window (`filename, window_index`): the SED fold CNNs, BirdNET zero-shot
(NaN for species it does not know) and heads on BirdNET embeddings. A plain mean of a strong
pretrained prior and heads trained on a few focal recordings is worse than the prior alone;
what gains is leaning on the prior where training data is thin. So a member's weight on
species s is its global weight g_m, times n_s / (n_s + shrink) for trained members (n_s: the
species' training recordings in that fold), and times 1 for zero-shot members. Missing scores
(NaN) get no weight. g and shrink are chosen on out-of-fold predictions of recordings (a
recording's score is its best window's), by the mean over folds of macro ROC-AUC.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from birdpipe.evaluation import metrics

#: Members whose weight does not depend on how much training data a species had.
ZERO_SHOT = ("birdnet",)


@dataclass(frozen=True)
class Blend:
    weights: dict[str, float]
    shrink: float
    #: Training recordings per species of the final (all-fold) models, in class order.
    counts: list[int] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)

    def species_weights(self, members: Sequence[str], counts: np.ndarray) -> np.ndarray:
        """`[len(members), C]` weights for species with `counts` training recordings."""
        counts = np.asarray(counts, np.float64)
        trained = counts / (counts + self.shrink) if self.shrink > 0 else (counts > 0).astype(np.float64)
        return np.stack([self.weights.get(m, 0.0) * (np.ones_like(counts) if m in ZERO_SHOT else trained) for m in members])

    def apply(self, probs: Mapping[str, np.ndarray], counts: np.ndarray | None = None) -> np.ndarray:
        """Blended probabilities `[n, C]` of members' `[n, C]` probabilities (NaN: cannot score)."""
        members = list(probs)
        stack = np.stack([np.asarray(probs[m], np.float64) for m in members])  # [M, n, C]
        w = self.species_weights(members, self.counts if counts is None else counts)[:, None, :]
        w = np.where(np.isnan(stack), 0.0, np.broadcast_to(w, stack.shape))
        total = w.sum(axis=0)
        filled = np.nan_to_num(stack, nan=0.0)
        blended = (w * filled).sum(axis=0) / np.where(total > 0, total, 1.0)
        # no weighted member scores the species: fall back to the mean of the blend's members
        # that do (those the exported blend holds, so out-of-fold scores match inference)
        in_blend = np.array([self.weights.get(m, 0.0) > 0 for m in members])
        pool = stack[in_blend] if in_blend.any() else stack
        fallback = np.nanmean(np.where(np.isnan(pool).all(axis=0, keepdims=True), 0.0, pool), axis=0)
        return np.where(total > 0, blended, fallback).astype(np.float32)

    def to_json(self, path: Path) -> Path:
        path.write_text(json.dumps({"weights": self.weights, "shrink": self.shrink, "counts": self.counts, "classes": self.classes}, indent=1))
        return path

    @classmethod
    def from_json(cls, path: Path) -> Blend:
        return cls(**json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class OofSet:
    """Out-of-fold predictions of every member on the same recordings, with truth and folds."""

    files: list[str]
    #: member -> `[n_files, C]` (recording = max over its windows).
    probs: dict[str, np.ndarray]
    truth: np.ndarray
    fold: np.ndarray
    #: `[K, C]` training recordings per species of each fold's models (fold index order).
    counts: np.ndarray
    folds: list[int]
    classes: list[str]

    def blended(self, blend: Blend, members: Sequence[str] | None = None) -> np.ndarray:
        """Each recording blended with the counts of the fold models that predicted it."""
        members = list(members or self.probs)
        out = np.zeros_like(self.truth, dtype=np.float32)
        for k, fold in enumerate(self.folds):
            rows = self.fold == fold
            out[rows] = blend.apply({m: self.probs[m][rows] for m in members}, self.counts[k])
        return out


def fold_counts(folds: pl.DataFrame, fold_ids: Sequence[int], classes: Sequence[str]) -> np.ndarray:
    """`[K, C]` recordings per species in each fold model's training set (every other fold)."""
    out = np.zeros((len(fold_ids), len(classes)), np.int64)
    index = {c: i for i, c in enumerate(classes)}
    for k, fold in enumerate(fold_ids):
        for label, n in folds.filter(pl.col("fold") != fold).group_by("primary_label").len().iter_rows():
            if label in index:
                out[k, index[label]] = n
    return out


def tune(oof: OofSet, members: Sequence[str], weight_grid: Sequence[float], shrink_grid: Sequence[float]) -> tuple[Blend, float]:
    """The global weights and shrink with the best mean-of-folds macro ROC-AUC of recordings."""
    best, best_score = None, -np.inf
    for weights in itertools.product(weight_grid, repeat=len(members)):
        if not any(weights):
            continue
        for shrink in shrink_grid:
            blend = Blend(dict(zip(members, weights)), shrink)
            score = _fold_mean_auc(oof.truth, oof.blended(blend, members), oof.fold)
            if score > best_score + 1e-9:
                best, best_score = blend, score
    return best, best_score


def scores(oof: OofSet, probs: np.ndarray) -> dict[str, float]:
    """Recording-level scores of `[n_files, C]` probabilities: macro ROC-AUC and padded cmAP
    pooled and as the mean over folds, and top-1 accuracy (the primary label ranked first)."""
    primary = oof.truth.argmax(axis=1)  # truth rows hold the primary at 1, secondary labels lower
    filled = np.nan_to_num(probs, nan=0.0)
    out = {
        "file_auc": metrics.macro_auc(oof.truth > 0, filled),
        "file_auc_fold_mean": _fold_mean(lambda t, p: metrics.macro_auc(t > 0, p), oof.truth, filled, oof.fold),
        "file_cmap": metrics.padded_cmap(oof.truth > 0, filled),
        "top1_file_accuracy": float((filled.argmax(axis=1) == primary).mean()),
    }
    return out


def _fold_mean(score, truth: np.ndarray, probs: np.ndarray, fold: np.ndarray) -> float:
    values = []
    for k in np.unique(fold):
        rows = fold == k
        try:
            values.append(score(truth[rows], probs[rows]))
        except ValueError:
            continue
    return float(np.mean(values)) if values else float("nan")


def _fold_mean_auc(truth: np.ndarray, probs: np.ndarray, fold: np.ndarray) -> float:
    return _fold_mean(_ranked_macro_auc, truth > 0, np.nan_to_num(probs, nan=0.0), fold)


def _ranked_macro_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Macro ROC-AUC over columns with positives and negatives, from ranks (as sklearn, ties
    averaged) and vectorised: the tuning grid evaluates it thousands of times."""
    from scipy.stats import rankdata

    pos = y.sum(axis=0)
    scored = (pos > 0) & (pos < len(y))
    if not scored.any():
        raise ValueError("no species with positives and negatives")
    y, p, pos = y[:, scored], p[:, scored], pos[scored]
    ranks = rankdata(p, axis=0)
    neg = len(y) - pos
    auc = ((ranks * y).sum(axis=0) - pos * (pos + 1) / 2) / (pos * neg)
    return float(auc.mean())
