"""Out-of-fold predictions: every cached window scored by the one fold model that never saw it.

These are the honest estimate of how the ensemble does on unseen recordings, and the data
thresholds are calibrated on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import polars as pl

from birdpipe.data.folds import ALWAYS_TRAIN
from birdpipe.data.labels import target_matrix
from birdpipe.evaluation.metrics import oof_scores
from birdpipe.features.reader import CacheReader
from birdpipe.models.predict import predict_windows, select_device
from birdpipe.models.sed import load_model
from birdpipe.progress import Progress

WINDOW_COLUMNS = ("row", "filename", "window_index", "start_seconds", "end_seconds", "primary_label", "secondary_labels")


def predict_out_of_fold(
    cache: CacheReader,
    folds: pl.DataFrame,
    checkpoints: Mapping[int, str | Path],
    batch_size: int = 64,
    device: str = "auto",
    chunk_windows: int = 2048,
    log: Callable[[str], None] | None = None,
) -> tuple[pl.DataFrame, list[str]]:
    """Window metadata, fold and one probability column per class; windows read in bounded chunks.

    Recordings in no validation fold (`folds.ALWAYS_TRAIN`) have no out-of-fold prediction.
    `log`: a progress line (windows/s, ETA) after each chunk.
    """
    dev = select_device(device)
    held_out = folds.filter(pl.col("fold") != ALWAYS_TRAIN).select("filename", "fold")
    windows = cache.windows.select(WINDOW_COLUMNS).join(held_out, on="filename")
    missing = sorted(set(windows["fold"].unique().to_list()) - set(checkpoints))
    if missing:
        raise ValueError(f"no trained model for fold(s) {missing}: materialize every trained_model partition")
    parts, classes = [], None
    progress = Progress(windows.height, log or (lambda _: None), "out-of-fold prediction", "windows", every=chunk_windows)
    for fold, checkpoint in sorted(checkpoints.items()):
        model, meta = load_model(checkpoint, dev)
        if classes is not None and meta["classes"] != classes:
            raise ValueError(f"{checkpoint}: class list differs from the other folds' models")
        classes = meta["classes"]
        clash = set(classes) & set(windows.columns)
        if clash:
            raise ValueError(f"class names {sorted(clash)} collide with window columns")
        held_out = windows.filter(pl.col("fold") == fold)
        rows = held_out["row"].to_numpy()
        probs = []
        for i in range(0, len(rows), chunk_windows):
            chunk = rows[i : i + chunk_windows]
            probs.append(predict_windows(model, cache.mels(chunk), batch_size, dev, meta["model"]["clip_weight"]))
            progress.update(len(chunk), extra=f"fold {fold}")
        matrix = np.concatenate(probs) if probs else np.zeros((0, len(classes)), dtype=np.float32)
        parts.append(held_out.hstack(pl.DataFrame(matrix, schema=classes)))
    return pl.concat(parts).sort("row"), classes


def label_matrix(oof: pl.DataFrame, classes: list[str]) -> np.ndarray:
    """Binary truth per window: the recording's primary and secondary labels."""
    return target_matrix(oof["primary_label"].to_list(), oof["secondary_labels"].to_list(), classes, secondary_weight=1.0)


def class_columns(oof: pl.DataFrame) -> list[str]:
    """The class columns of an out-of-fold frame, in model order."""
    return [c for c in oof.columns if c not in (*WINDOW_COLUMNS, "fold")]


def probability_matrix(oof: pl.DataFrame, classes: list[str]) -> np.ndarray:
    return oof.select(classes).to_numpy().astype(np.float32)


def fold_scores(oof: pl.DataFrame, classes: list[str]) -> dict[str, float]:
    """Each year's metric per fold and their mean (`fold_mean_<metric>`): the usual CV score.

    Pooled out-of-fold scores compare probabilities of different fold models; a species whose
    few recordings all sit in one fold is scored only by the model that never learnt it, which
    drags the pooled macro AUC down. The per-fold view leaves that comparison out.
    """
    per_fold = {}
    for (fold,), part in oof.group_by("fold", maintain_order=True):
        per_fold[int(fold)] = oof_scores(label_matrix(part, classes), probability_matrix(part, classes), classes)
    out = {f"fold{k}_{m}": v for k, scores in sorted(per_fold.items()) for m, v in scores.items()}
    for metric in next(iter(per_fold.values())):
        out[f"fold_mean_{metric}"] = float(np.nanmean([s[metric] for s in per_fold.values()]))
    return out
