"""Fold-ensemble predictions on soundscapes of any length, with or without Dagster.

Every 5 s window of a recording gets a row, the last partial one zero-padded (as a BirdCLEF
submission needs); windows are computed in bounded-memory chunks through the same feature
path as the cache (`features.mel.stream_log_mel_windows`), the ensemble scores them, and
probabilities are optionally smoothed across neighbouring windows.

A damaged or cut file still gets every window its header promises: the missing audio is
predicted as silence and those windows are flagged (`filled`). A file that cannot be read at
all is skipped, and `Predictions.files` lists every file with its status and reason.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from birdpipe.data.audio import AudioError, AudioStream, iter_blocks
from birdpipe.features.config import MelConfig
from birdpipe.features.mel import stream_log_mel_windows
from birdpipe.inference.config import SubmissionConfig
from birdpipe.inference.ensemble import Ensemble
from birdpipe.inference.formats import window_row_id
from birdpipe.progress import Progress

#: Soundscapes between two progress lines: one 10-minute soundscape takes seconds on a CPU.
PROGRESS_EVERY = 10


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


#: Per-window columns besides the classes: `filled` marks a window (partly) past the decoded
#: audio, predicted on silence; `damage` is the file's damage reason (null when clean).
FLAG_COLUMNS = {"filled": pl.Boolean, "damage": pl.String, "decoder_notes": pl.String}
FILES_SCHEMA = {"path": pl.String, "status": pl.String, "reason": pl.String, "windows": pl.Int64, "filled_windows": pl.Int64,
                "decoder_notes": pl.String}  # fmt: skip


def padded(stream: AudioStream) -> Iterator[np.ndarray]:
    """The stream's blocks, then silence up to the length the file's header promises (a cut or
    damaged file still needs every window of a submission). A file whose header states a
    length but whose audio does not decode (at all, or past NaN samples) is damaged, not
    skipped: its windows are predicted on silence."""
    try:
        yield from stream
    except AudioError as exc:
        if stream.expected_seconds <= stream.samples / stream.sr:
            raise
        stream.damaged = True
        stream.reason = f"{exc.reason}; {stream.expected_seconds - stream.samples / stream.sr:.2f} s stated by its header predicted on silence"
    missing = int(round(stream.expected_seconds * stream.sr)) - stream.samples
    for start in range(0, max(missing, 0), stream.block):
        yield np.zeros(min(stream.block, missing - start), np.float32)


def flags(stream: AudioStream, starts: np.ndarray, window_seconds: float) -> pl.DataFrame:
    """`FLAG_COLUMNS` for windows starting at `starts` (seconds) of a decoded stream: on a
    damaged file, every window reaching past the audio decoded is filled."""
    filled = np.asarray(starts) + window_seconds > stream.samples / stream.sr + 1e-6
    notes = " | ".join(stream.notes) or None
    return pl.DataFrame({"filled": filled & stream.damaged, "damage": [stream.reason] * len(starts), "decoder_notes": [notes] * len(starts)},
                        schema=FLAG_COLUMNS)  # fmt: skip


def predict_file(ensemble: Ensemble, path: Path, mel_cfg: MelConfig, sub_cfg: SubmissionConfig) -> pl.DataFrame:
    """Window rows of one recording: soundscape_id, end_seconds, one probability column per
    class, and `FLAG_COLUMNS`."""
    cfg = soundscape_mel_config(mel_cfg)
    probs, starts = [], []
    stream = iter_blocks(path, cfg.sample_rate)
    for mels, start in stream_log_mel_windows(padded(stream), cfg):
        probs.append(ensemble.predict(mels, sub_cfg.batch_size))
        starts.append(start)
    starts = np.concatenate(starts)
    matrix = smooth(np.concatenate(probs), sub_cfg.smoothing)
    ends = np.rint(starts + cfg.window_seconds).astype(np.int64)
    keys = pl.DataFrame({"soundscape_id": [path.stem] * len(ends), "end_seconds": ends})
    return keys.hstack(pl.DataFrame(matrix, schema=ensemble.classes)).hstack(flags(stream, starts, cfg.window_seconds))


@dataclass(frozen=True)
class Predictions:
    """Every window's probabilities, and what happened to each file."""

    #: row_id, soundscape_id, end_seconds, one column per class.
    windows: pl.DataFrame
    #: One row per file: path, status (ok / damaged / skipped), reason, windows, filled_windows.
    files: pl.DataFrame

    @property
    def skipped(self) -> pl.DataFrame:
        return self.files.filter(pl.col("status") == "skipped")

    def problems(self) -> list[str]:
        """A line per file not read whole and per file whose decoder printed messages."""
        lines = []
        for path, status, reason, _, filled, notes in self.files.iter_rows():
            if status != "ok":
                lines.append(f"{status} {path}: {reason}" + (f" ({filled} window(s) predicted on silence)" if filled else ""))
            if notes:
                lines.append(f"decoder on {path}: {notes}")
        return lines

    def summary(self) -> str:
        damaged = self.files.filter(pl.col("status") == "damaged")
        return (
            f"{self.files.height} files ({damaged.height} damaged, {self.skipped.height} skipped), {self.windows.height} windows "
            f"({int(self.files['filled_windows'].sum())} predicted on silence where audio was missing)"
        )


def predict_soundscapes(
    ensemble: Ensemble,
    files: Sequence[Path],
    mel_cfg: MelConfig,
    sub_cfg: SubmissionConfig,
    progress: bool = True,
    skip_errors: bool = False,
    log: Callable[[str], None] | None = None,
) -> Predictions:
    """Every window of `files` (row_id, soundscape_id, end_seconds, one column per class) and a
    row per file saying whether it was read whole, damaged (missing audio predicted as
    silence) or skipped.

    `skip_errors`: an unreadable file is skipped (status "skipped", with the reason) instead of raising.
    `log`: progress lines (files/s, ETA) every `PROGRESS_EVERY` files and every 30 s, for logs where a bar cannot draw.
    """
    from tqdm import tqdm

    parts, outcomes = [], []
    bar = tqdm(files, desc="predict", unit="file", disable=not progress, file=sys.stderr)
    lines = Progress(len(files), log or (lambda _: None), "predict", "files", PROGRESS_EVERY)
    windows = 0
    for path in bar:
        try:
            # a blend (`inference.blended`) predicts its windows itself, from several members
            blended = getattr(ensemble, "predict_file", None)
            part = blended(Path(path), sub_cfg.batch_size) if blended else predict_file(ensemble, Path(path), mel_cfg, sub_cfg)
        except AudioError as exc:
            if not skip_errors:
                raise
            outcomes.append({"path": str(path), "status": "skipped", "reason": exc.reason, "windows": 0, "filled_windows": 0, "decoder_notes": None})
            lines.update(extra=f"{windows} windows")
            continue
        damage = part["damage"][0]
        outcomes.append({"path": str(path), "status": "ok" if damage is None else "damaged", "reason": damage,
                         "windows": part.height, "filled_windows": int(part["filled"].sum()), "decoder_notes": part["decoder_notes"][0]})  # fmt: skip
        parts.append(part.drop(*FLAG_COLUMNS))
        windows += part.height
        bar.set_postfix(windows=windows)
        lines.update(extra=f"{windows} windows")
    schema = {"soundscape_id": pl.String, "end_seconds": pl.Int64} | dict.fromkeys(ensemble.classes, pl.Float32)
    frame = pl.concat(parts) if parts else pl.DataFrame(schema=schema)
    return Predictions(frame.select(window_row_id(), pl.all()), pl.DataFrame(outcomes, schema=FILES_SCHEMA))
