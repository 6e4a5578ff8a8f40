"""Example windows per species, without and with noise reduction: what the cache's features
look like, shown on its asset, so a user sees the gate's effect instead of reading its settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from birdpipe.data import audio
from birdpipe.features.config import MelConfig
from birdpipe.features.mel import frame_windows, log_mel_windows, window_starts


@dataclass(frozen=True)
class MelExample:
    species: str
    filename: str
    start_seconds: float
    #: Log-mel [n_mels, n_frames] without noise reduction, and with the config's (None when it is off).
    raw: np.ndarray
    reduced: np.ndarray | None


def species_examples(
    recordings: pl.DataFrame, audio_root: Path, cfg: MelConfig, n_species: int, seconds: float = 30.0
) -> list[MelExample]:
    """One window for each of the first `n_species` species (label order): the loudest window of
    the first `seconds` of its first recording (file order), as log-mels without and with noise
    reduction. Recomputed from the audio; a recording that does not decode is left out."""
    first = recordings.sort("filename").unique("primary_label", keep="first").sort("primary_label").head(n_species)
    examples = []
    for species, filename in first.select("primary_label", "filename").iter_rows():
        try:
            wave = audio.read_segment(audio_root / filename, cfg.sample_rate, 0.0, seconds)
        except (audio.AudioError, OSError):
            continue
        starts = window_starts(len(wave), cfg)
        loudest = int(np.argmax(np.square(frame_windows(wave, starts, cfg)).mean(axis=1)))
        raw = log_mel_windows(wave, cfg.replace(noise_reduce=False))[0][loudest]
        reduced = log_mel_windows(wave, cfg)[0][loudest] if cfg.noise_reduce else None
        examples.append(MelExample(species, filename, float(starts[loudest]) / cfg.sample_rate, raw, reduced))
    return examples
