"""Cross-validation folds over recordings.

Folds are assigned per recording, never per window, so no window of a validation recording
is seen in training. Stratified on the primary label so rare species are spread across
folds; optionally grouped (e.g. by `author`, a proxy for site) to keep one recordist's
recordings in one fold. A species with only one or two recordings held out in some fold is
a species that fold's model never hears; `always_train_below` keeps such species in every
training set instead (fold `ALWAYS_TRAIN`), as BirdCLEF solutions do.
"""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from birdpipe.data.config import FoldConfig

#: The fold of recordings that are in every fold's training set and never validated.
ALWAYS_TRAIN = -1


def assign_folds(recordings: pl.DataFrame, cfg: FoldConfig) -> pl.DataFrame:
    """`filename, primary_label, fold` for every recording, stratified on primary_label."""
    species_size = pl.col("filename").count().over("primary_label")
    ordered = recordings.select("filename", "primary_label", *_group(cfg)).sort("filename")
    always = ordered.filter(species_size < cfg.always_train_below)
    ordered = ordered.filter(species_size >= cfg.always_train_below)
    n = ordered.height
    if n < cfg.n_folds:
        raise ValueError(f"{n} recordings to validate cannot fill {cfg.n_folds} folds")
    labels = ordered["primary_label"].to_numpy()
    fold = np.full(n, -1, dtype=np.int64)
    with warnings.catch_warnings():
        # Species with fewer recordings than folds are expected in BirdCLEF; they still land
        # in some fold, which is all out-of-fold prediction needs.
        warnings.filterwarnings("ignore", message="The least populated class")
        if cfg.group_column:
            splitter = StratifiedGroupKFold(cfg.n_folds, shuffle=True, random_state=cfg.seed)
            splits = splitter.split(np.zeros(n), labels, ordered[cfg.group_column].fill_null("").to_numpy())
        else:
            splits = StratifiedKFold(cfg.n_folds, shuffle=True, random_state=cfg.seed).split(np.zeros(n), labels)
        for k, (_, valid) in enumerate(splits):
            fold[valid] = k
    held_out = ordered.select("filename", "primary_label").with_columns(pl.Series("fold", fold))
    kept = always.select("filename", "primary_label").with_columns(pl.lit(ALWAYS_TRAIN, dtype=pl.Int64).alias("fold"))
    return pl.concat([held_out, kept]).sort("filename")


def fold_summary(folds: pl.DataFrame) -> pl.DataFrame:
    """Recordings and species per fold, for asset metadata."""
    return (
        folds.group_by("fold")
        .agg(pl.len().alias("recordings"), pl.col("primary_label").n_unique().alias("species"))
        .sort("fold")
    )


def _group(cfg: FoldConfig) -> list[str]:
    return [cfg.group_column] if cfg.group_column else []
