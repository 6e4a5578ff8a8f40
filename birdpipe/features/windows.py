"""Pooling features of short chunks into the pipeline's 5 s windows and recordings.

Pretrained models have windows of their own (BirdNET: 3 s chunks, `hop_seconds` apart); the
blend, the out-of-fold scores and submissions use the mel cache's 5 s windows, keyed by
(filename, window_index). A chunk belongs to the window its start falls in.
"""

from __future__ import annotations

import numpy as np
import polars as pl


def pool_windows(
    filenames: pl.Series | list[str], starts: np.ndarray, values: np.ndarray, window_seconds: float, how: str
) -> tuple[pl.DataFrame, np.ndarray]:
    """(keys `filename, window_index`, values pooled per window by "mean" or "max"), sorted by key."""
    index = np.floor(np.asarray(starts, np.float64) / window_seconds + 1e-6).astype(np.int64)
    keys = pl.DataFrame({"filename": filenames, "window_index": index})
    return _pool(keys, values, how)


def pool_files(filenames: pl.Series | list[str], values: np.ndarray, how: str = "max") -> tuple[list[str], np.ndarray]:
    """(sorted filenames, values pooled per recording): a recording's score is its best window's."""
    keys, pooled = _pool(pl.DataFrame({"filename": filenames}), values, how)
    return keys["filename"].to_list(), pooled


def _pool(keys: pl.DataFrame, values: np.ndarray, how: str) -> tuple[pl.DataFrame, np.ndarray]:
    """Rows with equal keys reduced at once (`reduceat` over key-sorted rows). Max ignores NaN
    unless a column is NaN throughout (a species a model cannot score stays NaN)."""
    cols = keys.columns
    ordered = keys.with_row_index("_row").sort(cols, maintain_order=True)
    rows = ordered["_row"].to_numpy()
    first = np.flatnonzero(ordered.select(pl.struct(cols).is_first_distinct()).to_series().to_numpy())
    sorted_values = np.asarray(values)[rows]
    if how == "max":
        pooled = np.fmax.reduceat(sorted_values, first, axis=0)
    else:
        pooled = np.add.reduceat(sorted_values.astype(np.float64), first, axis=0) / np.diff(np.r_[first, len(rows)])[:, None]
    return ordered.select(cols)[first], pooled.astype(np.float32)
