"""Parameters of threshold calibration and of the blend, both tuned on out-of-fold predictions."""

from __future__ import annotations

from typing import Literal

from birdpipe.evaluation.thresholds import OBJECTIVES
from birdpipe.schema import NonNegativeInt, PositiveInt, Section


class ThresholdConfig(Section):
    #: F1-type objective the thresholds maximise on out-of-fold predictions
    #: (`evaluation.thresholds.OBJECTIVES`): "f1_micro_rows" the 2021 row-wise F1 (with
    #: nocall), "f1_macro" per-species F1 averaged, "balanced_accuracy" the 2022 weighted accuracy.
    objective: OBJECTIVES.choice() = "f1_macro"
    #: Species with fewer out-of-fold positives are shrunk toward the global threshold
    #: (weight positives / shrink_positives on their own threshold).
    shrink_positives: NonNegativeInt = 10
    #: Candidate thresholds, evenly spaced strictly between 0 and 1.
    grid_size: PositiveInt = 199
    #: Coordinate-ascent passes over species for the non-separable row-wise objective.
    sweeps: PositiveInt = 2


class BlendConfig(Section):
    """How members' probabilities blend (`evaluation.blend`), tuned on out-of-fold predictions.

    A member's weight on species s is its global weight times n_s / (n_s + shrink) for trained
    members (n_s: training recordings of s), and its global weight for the zero-shot prior: a
    species with few recordings leans on the pretrained model, one with many on what was trained.
    """

    #: Members to blend: "sed" (the fold CNNs), "birdnet" (zero-shot), "logistic", "mlp" (heads).
    members: tuple[Literal["sed", "birdnet", "logistic", "mlp"], ...] = ("sed", "birdnet", "logistic", "mlp")
    #: Candidate global weights per member (every combination is tried) and shrink values.
    weight_grid: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
    shrink_grid: tuple[float, ...] = (0.0, 1.0, 3.0, 10.0, 30.0)
    #: Scores of a recording are the max over its windows (file-level tuning and reports).
    metric: Literal["file_auc", "window_auc"] = "file_auc"
