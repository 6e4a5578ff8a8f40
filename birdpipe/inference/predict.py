"""Fold-ensemble predictions on soundscapes of any length, with or without Dagster.

Every 5 s window of a recording gets a row, the last partial one zero-padded (as a BirdCLEF
submission needs); windows are computed in bounded-memory chunks through the same feature
path as the cache (`features.mel.stream_log_mel_windows`), the ensemble scores them, and
probabilities are optionally smoothed across neighbouring windows.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from birdpipe.data.audio import AudioError, iter_blocks
from birdpipe.features.config import MelConfig
from birdpipe.features.mel import stream_log_mel_windows
from birdpipe.inference.config import SubmissionConfig
from birdpipe.inference.ensemble import Ensemble
from birdpipe.inference.formats import window_row_id


def soundscape_mel_config(mel: MelConfig) -> MelConfig:
    """The model's mel config with the submission's window rule: back-to-back windows, and a
    row for any trailing partial window, however short."""
    return mel.replace(stride_seconds=mel.window_seconds, min_tail_seconds=1.0 / mel.sample_rate)


def smooth(probs: np.ndarray, kernel: Sequence[float]) -> np.ndarray:
    """Weighted mean over neighbouring windows (`kernel[i]` weighs offset `i - len // 2`);
    at the ends the weights of the missing neighbours are left out, not zero-filled."""
    if not kernel:
        return probs
    k = np.asarray(kernel, dtype=np.float64)
    if len(k) % 2 == 0 or (k < 0).any() or k.sum() <= 0:
        raise ValueError(f"smoothing kernel must have odd length and non-negative weights, got {list(kernel)}")
    half, n = len(k) // 2, len(probs)
    padded = np.pad(probs.astype(np.float64), ((half, half), (0, 0)))
    present = np.pad(np.ones(n), half)
    total = sum(w * padded[i : i + n] for i, w in enumerate(k))
    norm = sum(w * present[i : i + n] for i, w in enumerate(k))
    return (total / norm[:, None]).astype(np.float32)


def predict_file(ensemble: Ensemble, path: Path, mel_cfg: MelConfig, sub_cfg: SubmissionConfig) -> pl.DataFrame:
    """Window rows of one recording: soundscape_id, end_seconds and one probability column per class."""
    cfg = soundscape_mel_config(mel_cfg)
    probs, starts = [], []
    for mels, start in stream_log_mel_windows(iter_blocks(path, cfg.sample_rate), cfg):
        probs.append(ensemble.predict(mels, sub_cfg.batch_size))
        starts.append(start)
    matrix = smooth(np.concatenate(probs), sub_cfg.smoothing)
    ends = np.rint(np.concatenate(starts) + cfg.window_seconds).astype(np.int64)
    keys = pl.DataFrame({"soundscape_id": [path.stem] * len(ends), "end_seconds": ends})
    return keys.hstack(pl.DataFrame(matrix, schema=ensemble.classes))


def predict_soundscapes(
    ensemble: Ensemble,
    files: Sequence[Path],
    mel_cfg: MelConfig,
    sub_cfg: SubmissionConfig,
    progress: bool = True,
    skip_errors: bool = False,
) -> pl.DataFrame:
    """row_id, soundscape_id, end_seconds and one column per class, for every window of `files`.

    `skip_errors`: an unreadable file is reported on stderr and left out instead of raising.
    """
    from tqdm import tqdm

    parts = []
    bar = tqdm(files, desc="predict", unit="file", disable=not progress, file=sys.stderr)
    windows = 0
    for path in bar:
        try:
            # a blend (`inference.blended`) predicts its windows itself, from several members
            blended = getattr(ensemble, "predict_file", None)
            part = blended(Path(path), sub_cfg.batch_size) if blended else predict_file(ensemble, Path(path), mel_cfg, sub_cfg)
        except AudioError as exc:
            if not skip_errors:
                raise
            bar.write(f"skipped {path}: {exc}")
            continue
        parts.append(part)
        windows += part.height
        bar.set_postfix(windows=windows)
    schema = {"soundscape_id": pl.String, "end_seconds": pl.Int64} | dict.fromkeys(ensemble.classes, pl.Float32)
    frame = pl.concat(parts) if parts else pl.DataFrame(schema=schema)
    return frame.select(window_row_id(), pl.all())
