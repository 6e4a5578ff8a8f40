"""Parameters of threshold calibration on out-of-fold predictions."""

from __future__ import annotations

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
