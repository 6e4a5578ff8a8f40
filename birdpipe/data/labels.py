"""Training targets and weights from recording metadata.

A recording's primary species is a sure positive; its secondary species are audible but
maybe not in every window, hence a configurable lower target. Ratings say how clean a
recording is: low-rated ones count less in the loss; unrated (0) ones count fully, since a
missing rating says nothing about quality.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_RATING = 5.0
MIN_RATING_WEIGHT = 0.1


def target_matrix(
    primary: Sequence[str],
    secondary: Sequence[Sequence[str] | None],
    classes: Sequence[str],
    secondary_weight: float = 0.5,
    smoothing: float = 0.0,
) -> np.ndarray:
    """`[n, C]` float32: 1 for the primary label, `secondary_weight` for secondary labels.

    Labels outside `classes` are ignored. Smoothing moves every target `s` of the way
    toward 1 / C (`y * (1 - s) + s / C`), so a negative never becomes a likely positive.
    """
    index = {c: i for i, c in enumerate(classes)}
    y = np.zeros((len(primary), len(classes)), dtype=np.float32)
    for row, (label, others) in enumerate(zip(primary, secondary)):
        for other in others or ():
            if other in index:
                y[row, index[other]] = max(y[row, index[other]], secondary_weight)
        if label in index:
            y[row, index[label]] = 1.0
    if smoothing:
        y = y * (1.0 - smoothing) + smoothing / len(classes)
    return y.astype(np.float32)


def rating_weights(rating: np.ndarray) -> np.ndarray:
    """`rating / 5` clipped to [0.1, 1]; unrated (0 or NaN) -> 1."""
    rating = np.asarray(rating, dtype=np.float64)
    weight = np.clip(rating / MAX_RATING, MIN_RATING_WEIGHT, 1.0)
    return np.where(np.isnan(rating) | (rating <= 0), 1.0, weight).astype(np.float32)


def class_weights(targets: np.ndarray, power: float = 0.5) -> np.ndarray:
    """`(N / count_c) ** power`, normalised to mean 1: rare species weigh more, without exploding.

    Counts are of hard positives (target > 0.5); a class without any counts as one.
    """
    counts = np.maximum((np.asarray(targets) > 0.5).sum(axis=0), 1).astype(np.float64)
    weight = (len(targets) / counts) ** power
    return (weight / weight.mean()).astype(np.float32)
