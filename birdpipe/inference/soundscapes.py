"""Soundscape submissions in every format, and their scores where the soundscapes are labelled.

A Kaggle submission needs exactly one row per 5 s window; `expected_windows` counts them
from the audio itself, so a soundscape that failed to decode shows up as missing rows in the
schema check instead of a silently short file. Labelled soundscapes (`test_soundscape_labels.csv`
at the dataset root: soundscape_id, end_seconds, birds, as the synthetic set writes it) give a
local score for each format, the same way Kaggle would compute it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from birdpipe.data.audio import probe
from birdpipe.evaluation.metrics import score_files
from birdpipe.evaluation.thresholds import Thresholds
from birdpipe.inference.config import SubmissionConfig
from birdpipe.inference.formats import FORMATS, layouts, solution_from_labels, write_submission

LABELS_FILE = "test_soundscape_labels.csv"


@dataclass(frozen=True)
class Score:
    metric: str
    solution: Path
    submission: Path
    value: float


def expected_windows(files: Sequence[Path], window_seconds: float) -> int:
    """Rows a submission must have: every started window of every soundscape."""
    return sum(max(1, math.ceil(probe(f, decode=False).duration_s / window_seconds - 1e-9)) for f in files)


def write_all_formats(
    predictions: pl.DataFrame,
    classes: Sequence[str],
    thresholds: Thresholds | None,
    cfg: SubmissionConfig,
    out_dir: Path,
    scored_birds: Sequence[str] | None = None,
) -> dict[str, Path]:
    """`submission.csv` in the configured format plus `submission-<format>.csv` in each layout."""
    paths = {"submission": write_submission(predictions, classes, thresholds, cfg, out_dir / "submission.csv", scored_birds)}
    for fmt in layouts():
        paths[fmt] = write_submission(
            predictions, classes, thresholds, cfg.replace(format=fmt), out_dir / f"submission-{fmt}.csv", scored_birds
        )
    return paths


def find_labels(data_root: Path) -> Path | None:
    """The per-window labels of the soundscapes, if the dataset has them."""
    path = data_root / LABELS_FILE
    return path if path.is_file() else None


def score_formats(
    labels_csv: Path,
    submissions: dict[str, Path],
    classes: Sequence[str],
    out_dir: Path,
    scored_birds: Sequence[str] | None = None,
) -> list[Score]:
    """Write each format's solution from the labels and score that format's submission on it."""
    labels = pl.read_csv(labels_csv, schema_overrides={"birds": pl.String, "soundscape_id": pl.String})
    scores = []
    for fmt in layouts():
        solution = out_dir / f"solution-{fmt}.csv"
        solution_from_labels(labels, classes, fmt, scored_birds).write_csv(solution)
        scores += [Score(m, solution, submissions[fmt], score_files(solution, submissions[fmt], m)) for m in FORMATS.get(fmt).metrics]
    return scores
