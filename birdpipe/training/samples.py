"""Training and validation samples of one fold: which windows, their targets, and how x is made.

Two sources of x, chosen by the augmentation config:

* `MelWindows` reads mels from the Parquet cache, one `cache.mels(rows)` call per batch
  (`__getitems__`), so a batch costs one read per row group rather than one per sample.
* `WaveWindows` is used when a waveform augmentation is on: it decodes the crop from the
  recording (`audio.read_segment` seeks, so it costs the crop, not the file), augments it, and
  computes the mel with `features.mel.log_mel_windows`, the function that built the cache, so
  training and cached features match. Its random crops may start anywhere, not only on the
  cache's window grid.

Crop policy per epoch (`TrainConfig.crop`): "first" draws one window among those starting in
the first `first_seconds` of each recording, "random" one window anywhere, "both" one of each
(the 2025 4th place recipe). The draw depends only on (seed, epoch), so a resumed run sees the
same samples.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from birdpipe.data.audio import probe, read_segment
from birdpipe.data.labels import rating_weights, target_matrix
from birdpipe.features.config import MelConfig
from birdpipe.features.mel import log_mel_windows
from birdpipe.features.reader import CacheReader
from birdpipe.training.augment import WaveAugment

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def fold_windows(windows: pl.DataFrame, folds: pl.DataFrame, metadata: pl.DataFrame, fold: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, validation) windows of the cache, with labels and rating from the metadata.

    Recordings absent from `folds` (e.g. quarantined) are left out of both.
    """
    labels = metadata.select("filename", "primary_label", "secondary_labels", _rating(metadata))
    joined = (
        windows.select("row", "filename", "window_index", "start_seconds", "end_seconds")
        .join(folds.select("filename", "fold"), on="filename")
        .join(labels, on="filename", how="left")
        .sort("row")
    )
    return joined.filter(pl.col("fold") != fold), joined.filter(pl.col("fold") == fold)


def _rating(metadata: pl.DataFrame) -> pl.Expr:
    if "rating" in metadata.columns:
        return pl.col("rating").cast(pl.Float64).fill_null(0.0)
    return pl.lit(0.0).alias("rating")


def epoch_crops(
    train: pl.DataFrame, crop: str, first_seconds: float, window_seconds: float, continuous: bool, rng: np.random.Generator
) -> pl.DataFrame:
    """One epoch's samples in shuffled order: `row` (a cached window, for labels) and `start` (s).

    `continuous`: random crops start anywhere in the recording (decoded audio), else on a
    cached window.
    """
    if crop not in ("first", "random", "both"):
        raise ValueError(f"unknown crop policy {crop!r}; known: first, random, both")
    per_rec = train.group_by("filename", maintain_order=True).agg("row", "start_seconds", pl.col("end_seconds").max())
    picks: list[tuple[int, float]] = []
    for rows, starts, end in per_rec.select("row", "start_seconds", "end_seconds").iter_rows():
        starts = np.asarray(starts)
        if crop in ("first", "both"):
            early = np.flatnonzero(starts < max(first_seconds - window_seconds, 0) + 1e-6)
            i = int(rng.choice(early)) if len(early) else int(np.argmin(starts))
            picks.append((rows[i], float(starts[i])))
        if crop in ("random", "both"):
            if continuous:
                start = float(rng.uniform(0.0, max(end - window_seconds, 0.0)))
                i = int(np.searchsorted(starts, start, side="right") - 1)
                picks.append((rows[max(i, 0)], start))
            else:
                i = int(rng.integers(len(rows)))
                picks.append((rows[i], float(starts[i])))
    order = rng.permutation(len(picks))
    return pl.DataFrame({"row": [picks[i][0] for i in order], "start": [picks[i][1] for i in order]},
                        schema={"row": pl.Int64, "start": pl.Float64})  # fmt: skip


@dataclass(frozen=True)
class Targets:
    """Per cache row: target vector and sample weight (a lookup shared by train and validation)."""

    y: np.ndarray  # [n_rows_in_cache, C]
    w: np.ndarray  # [n_rows_in_cache]

    @classmethod
    def build(
        cls, windows: pl.DataFrame, n_rows: int, classes: Sequence[str], secondary_weight: float, smoothing: float,
        use_rating: bool, teacher: np.ndarray | None = None, teacher_weight: float = 0.0,
    ) -> "Targets":  # fmt: skip
        """`teacher [n_rows, C]`: a teacher's probabilities per cache row (NaN where it has none),
        blended into every label but the primary with `teacher_weight` (distillation): a focal
        recording's species is there even where the teacher does not hear it, while secondary
        and unlabelled species take the teacher's view."""
        y = np.zeros((n_rows, len(classes)), np.float32)
        w = np.ones(n_rows, np.float32)
        rows = windows["row"].to_numpy()
        y[rows] = target_matrix(
            windows["primary_label"].to_list(), windows["secondary_labels"].to_list(), classes, secondary_weight, smoothing
        )
        if teacher is not None and teacher_weight > 0:
            t, label = teacher[rows], y[rows]
            mixed = np.where(np.isnan(t), label, (1 - teacher_weight) * label + teacher_weight * t)
            y[rows] = np.where(label >= 1.0 - smoothing - 1e-6, label, mixed)  # the primary label stays
        if use_rating:
            w[rows] = rating_weights(windows["rating"].to_numpy())
        return cls(y, w)


def teacher_rows(windows: pl.DataFrame, teacher: pl.DataFrame, classes: Sequence[str], window_seconds: float) -> np.ndarray:
    """A teacher's per-window scores (`filename, window_index, <class>...`) aligned to the cache's
    rows `[n_rows, C]`; NaN for rows and species it does not score. A cache window matches the
    teacher window its start falls in, as `features.windows.pool_windows` keys them."""
    keyed = windows.select("row", "filename", (pl.col("start_seconds") / window_seconds + 1e-6).floor().cast(pl.Int64).alias("window_index"))
    joined = keyed.join(teacher.with_row_index("_t"), on=["filename", "window_index"], how="inner")
    missing = [c for c in classes if c not in teacher.columns]
    if missing:
        raise ValueError(f"teacher scores lack {len(missing)} classes, e.g. {missing[:3]}")
    out = np.full((windows["row"].max() + 1 if windows.height else 0, len(classes)), np.nan, np.float32)
    out[joined["row"].to_numpy()] = teacher.select(classes).to_numpy().astype(np.float32)[joined["_t"].to_numpy()]
    return out


class MelWindows(Dataset):
    """Cached mels of `rows`; batched reads through `__getitems__`."""

    def __init__(self, cache: CacheReader, rows: np.ndarray, targets: Targets):
        self.cache, self.rows, self.targets = cache, np.asarray(rows, np.int64), targets

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        rows = self.rows[np.asarray(indices)]
        x = self.cache.mels(rows)
        return torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(self.targets.y[rows]), torch.from_numpy(self.targets.w[rows])

    def __getitem__(self, index: int) -> Batch:
        x, y, w = self.__getitems__([index])
        return x[0], y[0], w[0]


class WaveWindows(Dataset):
    """Decoded, augmented crops turned into mels; randomness from `np.random`, seeded per worker."""

    def __init__(
        self,
        paths: Sequence[Path],
        crops: pl.DataFrame,
        cache_rows_to_file: dict[int, int],
        targets: Targets,
        mel: MelConfig,
        augment: WaveAugment | None,
    ):
        self.paths, self.targets, self.mel = list(paths), targets, mel
        self.rows = crops["row"].to_numpy()
        self.starts = crops["start"].to_numpy()
        self.files = np.array([cache_rows_to_file[r] for r in self.rows], np.int64)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.rows)

    def wave(self, index: int) -> np.ndarray:
        """The crop's audio after the waveform augmentations."""
        wave = read_segment(self.paths[self.files[index]], self.mel.sample_rate, self.starts[index], self.mel.window_seconds)
        return self.augment(wave) if self.augment else wave

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        x = np.stack([log_mel_windows(self.wave(i), self.mel)[0][0] for i in indices])
        rows = self.rows[np.asarray(indices)]
        return torch.from_numpy(x.astype(np.float32, copy=False)), torch.from_numpy(self.targets.y[rows]), torch.from_numpy(self.targets.w[rows])

    def __getitem__(self, index: int) -> Batch:
        x, y, w = self.__getitems__([index])
        return x[0], y[0], w[0]


def _as_batch(batch: Batch) -> Batch:
    """`__getitems__` already returns a collated batch."""
    return batch


def _seed_worker(worker_id: int) -> None:
    """numpy / random in a worker follow torch's per-worker seed (itself from the loader's generator)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset, batch_size: int, num_workers: int, seed: int, pin_memory: bool = False, sampler: Sampler | None = None
) -> DataLoader:
    """Sequential batches (the order is already shuffled); worker seeds fixed by `seed`;
    `sampler`: this rank's share under DDP."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=_as_batch,
        worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )


def background_filler(files: Sequence[Path], sample_rate: int) -> Callable[[int], np.ndarray]:
    """A random `n`-sample stretch of a random background file (for time extension)."""
    durations = [probe(f, decode=False).duration_s for f in files]

    def fill(n: int) -> np.ndarray:
        i = np.random.randint(len(files))
        seconds = n / sample_rate
        return read_segment(files[i], sample_rate, np.random.uniform(0, max(durations[i] - seconds, 0.0)), seconds)

    return fill
