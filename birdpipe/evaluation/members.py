"""Each ensemble member's predictions per 5 s window, and their out-of-fold set.

- "sed": the fold CNNs' out-of-fold windows (`evaluation.oof`);
- "birdnet": BirdNET zero-shot, the sigmoid of its logits for the species it knows (NaN for
  the others), max over the window's chunks;
- "logistic", "mlp": heads on the window's mean BirdNET embedding, each window scored by the
  head of the fold that did not see its recording.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from birdpipe.data.folds import ALWAYS_TRAIN
from birdpipe.data.labels import target_matrix
from birdpipe.evaluation.blend import Blend, OofSet, fold_counts
from birdpipe.features.reader import WindowCacheReader
from birdpipe.features.windows import pool_files, pool_windows
from birdpipe.models.birdnet import BirdnetClassifier, SpeciesMap, scores
from birdpipe.models.heads import Head
from birdpipe.paths import atomic_write

KEYS = ["filename", "window_index"]


@dataclass(frozen=True)
class BirdnetWindows:
    """BirdNET per 5 s window: keys (`filename, window_index`), the mean embedding of the
    window's chunks (what heads read) and zero-shot probabilities, max over them (NaN for
    species BirdNET does not know)."""

    keys: pl.DataFrame
    embedding: np.ndarray
    zero_shot: np.ndarray

    def zero_shot_frame(self, classes: list[str]) -> pl.DataFrame:
        return self.keys.hstack(pl.DataFrame(self.zero_shot, schema=classes))

    def write(self, path: Path) -> None:
        self.keys.with_columns(pl.Series("embedding", self.embedding), pl.Series("zero_shot", self.zero_shot)).write_parquet(path)

    @classmethod
    def read(cls, path: Path) -> BirdnetWindows:
        frame = pl.read_parquet(path)
        return cls(frame.select(KEYS), frame["embedding"].to_numpy(), frame["zero_shot"].to_numpy())


def birdnet_windows(
    filenames: list[str], starts: np.ndarray, embeddings: np.ndarray, window_seconds: float,
    classifier: BirdnetClassifier, species: SpeciesMap,
) -> BirdnetWindows:
    """BirdNET chunks (3 s, one embedding each) pooled into the pipeline's windows."""
    logits = np.full((len(embeddings), len(species.classes)), np.nan, np.float32)
    logits[:, species.matched] = classifier.logits(embeddings, species.index[species.matched])
    keys, mean_embedding = pool_windows(filenames, starts, embeddings, window_seconds, "mean")
    _, zero_shot = pool_windows(filenames, starts, scores(logits), window_seconds, "max")
    return BirdnetWindows(keys, mean_embedding, zero_shot)


def cached_birdnet_windows(
    reader: WindowCacheReader, window_seconds: float, classifier: Callable[[], BirdnetClassifier], species: SpeciesMap
) -> BirdnetWindows:
    """`birdnet_windows` of every recording in a BirdNET embeddings cache (none for an empty
    cache: a dataset without unlabeled soundscapes has nothing to pseudo-label).

    Computed once per cache content, window length and species map, and kept beside the cache
    as `windows-<key>.parquet`: the heads, the zero-shot scores, the blend and the pseudo-labels
    all read it, and only the first of them loads the classifier and scores every chunk."""
    if not len(reader):
        keys = pl.DataFrame(schema={"filename": pl.String, "window_index": pl.Int64})
        return BirdnetWindows(keys, np.zeros((0, 0), np.float32), np.zeros((0, len(species.classes)), np.float32))
    key = json.dumps([reader.digest, window_seconds, species.classes, np.asarray(species.index).tolist()])
    path = reader.cache_dir / f"windows-{hashlib.sha256(key.encode()).hexdigest()[:16]}.parquet"
    if path.exists():
        return BirdnetWindows.read(path)
    windows = reader.windows
    emb = reader.array(windows["row"].to_numpy(), "embedding")
    out = birdnet_windows(
        windows["filename"].to_list(), windows["start_seconds"].to_numpy(), emb, window_seconds, classifier(), species
    )
    atomic_write(path, out.write)
    for stale in reader.cache_dir.glob("windows-*.parquet"):  # of an older cache content or species map
        if stale != path:
            stale.unlink(missing_ok=True)
    return out


def head_oof(keys: pl.DataFrame, x: np.ndarray, folds: pl.DataFrame, heads: Mapping[int, Path]) -> tuple[pl.DataFrame, np.ndarray]:
    """(keys with fold, probabilities) of the windows of held-out recordings, each from its fold's head."""
    rows = keys.with_row_index("_row").join(folds.select("filename", "fold"), on="filename").filter(pl.col("fold") != ALWAYS_TRAIN)
    probs = np.zeros((rows.height, 0), np.float32)
    for fold, path in heads.items():
        head = Head.load(path)
        if probs.shape[1] == 0:
            probs = np.zeros((rows.height, len(head.classes)), np.float32)
        mask = (rows["fold"] == fold).to_numpy()
        probs[mask] = head.predict(x[rows["_row"].to_numpy()[mask]])
    return rows.drop("_row"), probs


def oof_set(
    windows: Mapping[str, tuple[pl.DataFrame, np.ndarray]], folds: pl.DataFrame, metadata: pl.DataFrame,
    classes: list[str], secondary_weight: float = 0.5,
) -> OofSet:
    """Recording-level out-of-fold set of every member, on the recordings all of them scored."""
    held_out = folds.filter(pl.col("fold") != ALWAYS_TRAIN).select("filename", "fold")
    per_member = {}
    for name, (keys, probs) in windows.items():
        files, file_probs = pool_files(keys["filename"], probs, "max")
        per_member[name] = pl.DataFrame({"filename": files, "_probs": list(file_probs)}) if len(files) else None
    common = held_out
    for frame in per_member.values():
        common = common.join(frame.select("filename"), on="filename", how="semi")
    common = common.sort("filename").join(metadata.select("filename", "primary_label", "secondary_labels"), on="filename", how="left")
    probs = {}
    for name, frame in per_member.items():
        aligned = common.select("filename").join(frame, on="filename", how="left")
        probs[name] = np.stack(aligned["_probs"].to_list()).astype(np.float32)
    fold_ids = sorted(common["fold"].unique().to_list())
    return OofSet(
        files=common["filename"].to_list(),
        probs=probs,
        truth=target_matrix(common["primary_label"].to_list(), common["secondary_labels"].to_list(), classes, secondary_weight),
        fold=common["fold"].to_numpy(),
        counts=fold_counts(folds, fold_ids, classes),
        folds=fold_ids,
        classes=classes,
    )


def blended_windows(
    windows: Mapping[str, tuple[pl.DataFrame, np.ndarray]], blend: Blend, folds: pl.DataFrame, metadata: pl.DataFrame,
    classes: list[str],
) -> pl.DataFrame:  # fmt: skip
    """Out-of-fold blended probabilities per window (the windows every member scored), in the
    layout of `evaluation.oof` frames, so thresholds calibrate on what the submission uses."""
    held_out = folds.filter(pl.col("fold") != ALWAYS_TRAIN).select("filename", "fold")
    common = None
    for keys, _ in windows.values():
        common = keys if common is None else common.join(keys, on=KEYS, how="semi")
    common = common.join(held_out, on="filename").sort(KEYS)
    aligned = {}
    for name, (keys, probs) in windows.items():
        rows = common.join(keys.with_row_index("_r"), on=KEYS, how="left")["_r"].to_numpy()
        aligned[name] = probs[rows]
    fold_ids = sorted(common["fold"].unique().to_list())
    counts = fold_counts(folds, fold_ids, classes)
    out = np.zeros((common.height, len(classes)), np.float32)
    fold = common["fold"].to_numpy()
    for k, f in enumerate(fold_ids):
        mask = fold == f
        out[mask] = blend.apply({m: p[mask] for m, p in aligned.items()}, counts[k])
    labels = common.join(metadata.select("filename", "primary_label", "secondary_labels"), on="filename", how="left")
    return labels.hstack(pl.DataFrame(out, schema=classes))
