"""Cross-validation folds over recordings.

Folds are assigned per recording, never per window, so no window of a validation recording
is seen in training. Stratified on the primary label so species are spread across folds;
optionally grouped (e.g. by `author`, a proxy for site) to keep one recordist's recordings in
one fold. A species with fewer recordings than folds cannot be validated in every fold, and
one held out in some fold is a species that fold's model never hears: by default
(`always_train_below` unset, meaning `n_folds`) such species stay in every training set
instead (fold `ALWAYS_TRAIN`), as BirdCLEF solutions do.

With `always_train_below = 0` (or any value below `n_folds`) rare species are held out too.
scikit-learn's stratified splitters place them in some fold as long as one species has a
recording for every fold; when none has, there is nothing to stratify on, and recordings (or
groups) are dealt to the least filled fold, species by species, which spreads each species
over different folds. A split that cannot give every fold a validation recording fails with
the settings to change named.
"""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl

from birdpipe.data.config import FoldConfig

#: The fold of recordings that are in every fold's training set and never validated.
ALWAYS_TRAIN = -1


def assign_folds(recordings: pl.DataFrame, cfg: FoldConfig) -> pl.DataFrame:
    """`filename, primary_label, fold` for every recording, stratified on primary_label."""
    species_size = pl.col("filename").count().over("primary_label")
    below = cfg.always_train_threshold
    ordered = recordings.select("filename", "primary_label", *_group(cfg)).sort("filename")
    always = ordered.filter(species_size < below)
    ordered = ordered.filter(species_size >= below)
    labels = ordered["primary_label"].to_numpy()
    groups = ordered[cfg.group_column].fill_null("").to_numpy() if cfg.group_column else None
    _check_splittable(ordered.height, always.height, groups, cfg)
    if np.unique(labels, return_counts=True)[1].max() >= cfg.n_folds:
        fold = _stratified(labels, groups, cfg)
    else:  # no species has a recording for every fold: scikit-learn refuses to stratify
        fold = _dealt(labels, groups if groups is not None else ordered["filename"].to_numpy(), cfg)
    if empty := sorted(set(range(cfg.n_folds)) - set(fold.tolist())):
        raise ValueError(f"fold(s) {empty} got no recording to validate{_advice(cfg, always.height)}")
    held_out = ordered.select("filename", "primary_label").with_columns(pl.Series("fold", fold))
    kept = always.select("filename", "primary_label").with_columns(pl.lit(ALWAYS_TRAIN, dtype=pl.Int64).alias("fold"))
    return pl.concat([held_out, kept]).sort("filename")


def _check_splittable(n: int, n_always: int, groups: np.ndarray | None, cfg: FoldConfig) -> None:
    if n < cfg.n_folds:
        raise ValueError(f"{n} recordings to validate cannot fill {cfg.n_folds} folds{_advice(cfg, n_always)}")
    if groups is not None and len(set(groups)) < cfg.n_folds:
        raise ValueError(
            f"[folds] group_column = {cfg.group_column!r}: {len(set(groups))} groups to validate cannot fill "
            f"{cfg.n_folds} folds{_advice(cfg, n_always)}"
        )


def _advice(cfg: FoldConfig, n_always: int) -> str:
    kept = (
        f"; {n_always} recordings of species with fewer than {cfg.always_train_threshold} stay in every training set "
        f"([folds] always_train_below = {cfg.always_train_below if cfg.always_train_below is not None else 'unset, i.e. n_folds'})"
        if n_always
        else ""
    )
    return f" ([folds] n_folds = {cfg.n_folds}{kept}): lower n_folds or always_train_below (0 holds every recording out)"


def _stratified(labels: np.ndarray, groups: np.ndarray | None, cfg: FoldConfig) -> np.ndarray:
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold  # seconds to import: not at definition time

    fold = np.full(len(labels), -1, dtype=np.int64)
    with warnings.catch_warnings():
        # Species with fewer recordings than folds land in some fold, which is all
        # out-of-fold prediction needs.
        warnings.filterwarnings("ignore", message="The least populated class")
        if groups is not None:
            splits = StratifiedGroupKFold(cfg.n_folds, shuffle=True, random_state=cfg.seed).split(np.zeros(len(labels)), labels, groups)
        else:
            splits = StratifiedKFold(cfg.n_folds, shuffle=True, random_state=cfg.seed).split(np.zeros(len(labels)), labels)
        for k, (_, valid) in enumerate(splits):
            fold[valid] = k
    return fold


def _dealt(labels: np.ndarray, units: np.ndarray, cfg: FoldConfig) -> np.ndarray:
    """Each unit (a group, or a recording) to the fold with the fewest recordings so far:
    largest units first, then species by species in a seeded order, so equal units go round
    robin and a species' recordings land in different folds."""
    names, unit_of = np.unique(units, return_inverse=True)
    size = np.bincount(unit_of)
    species = np.array([labels[unit_of == u][0] for u in range(len(names))])
    order = np.lexsort((np.random.default_rng(cfg.seed).permutation(len(names)), species, -size))
    filled = np.zeros(cfg.n_folds, dtype=np.int64)
    unit_fold = np.empty(len(names), dtype=np.int64)
    for u in order:
        unit_fold[u] = k = int(np.argmin(filled))
        filled[k] += size[u]
    return unit_fold[unit_of]


def fold_summary(folds: pl.DataFrame) -> pl.DataFrame:
    """Recordings and species per fold, for asset metadata."""
    return (
        folds.group_by("fold")
        .agg(pl.len().alias("recordings"), pl.col("primary_label").n_unique().alias("species"))
        .sort("fold")
    )


def always_train_species(folds: pl.DataFrame) -> pl.DataFrame:
    """Species kept in every training set (fold `ALWAYS_TRAIN`) and their recordings."""
    kept = folds.filter(pl.col("fold") == ALWAYS_TRAIN)
    return kept.group_by("primary_label").agg(pl.len().alias("recordings")).sort("primary_label")


def _group(cfg: FoldConfig) -> list[str]:
    return [cfg.group_column] if cfg.group_column else []
