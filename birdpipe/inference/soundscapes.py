"""Soundscape submissions in every format, and their scores where the soundscapes are labelled.

A Kaggle submission needs exactly one row per 5 s window; `expected_windows` counts them
from the audio itself, so a soundscape that failed to decode shows up as missing rows in the
schema check instead of a silently short file. The dataset's own files shape the submission
(`submission_template`: sample_submission.csv's column order, 2022's test.csv rows).
Labelled soundscapes (2021's train soundscapes, the demo's test soundscapes) give a local
score for each format, the same way Kaggle would compute it (`score_formats`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from birdpipe.data.audio import probe
from birdpipe.data.layout import DatasetLayout
from birdpipe.data.metadata import read_csv, read_csv_header
from birdpipe.evaluation.metrics import score_files
from birdpipe.evaluation.thresholds import Thresholds
from birdpipe.inference.config import SubmissionConfig
from birdpipe.inference.formats import FORMATS, SubmissionTemplate, layouts, solution_from_labels, write_submission


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
    template: SubmissionTemplate = SubmissionTemplate(),
) -> dict[str, Path]:
    """`submission.csv` in the configured format plus `submission-<format>.csv` in each layout."""
    paths = {"submission": write_submission(predictions, classes, thresholds, cfg, out_dir / "submission.csv", scored_birds, template)}
    for fmt in layouts():
        paths[fmt] = write_submission(
            predictions, classes, thresholds, cfg.replace(format=fmt), out_dir / f"submission-{fmt}.csv", scored_birds, template
        )
    return paths


def submission_template(layout: DatasetLayout) -> SubmissionTemplate:
    """The class column order of the dataset's sample_submission.csv and the rows of its 2022 test.csv."""
    columns = read_csv_header(layout.sample_submission, ("row_id",))[1:] if layout.sample_has_classes else None
    rows = read_csv(layout.test_rows, ("row_id",))["row_id"].str.strip_chars().to_list() if layout.test_rows else None
    return SubmissionTemplate(tuple(c.strip() for c in columns) if columns is not None else None, tuple(rows) if rows is not None else None)


def score_formats(
    labels: pl.DataFrame,
    submissions: dict[str, Path],
    classes: Sequence[str],
    out_dir: Path,
    scored_birds: Sequence[str] | None = None,
) -> list[Score]:
    """Write each format's solution from the labels (`data.soundscape_labels`) and score that
    format's submission on it with the metrics of the years that used it."""
    scores = []
    for fmt in layouts():
        solution = out_dir / f"solution-{fmt}.csv"
        solution_from_labels(labels, classes, fmt, scored_birds).write_csv(solution)
        scores += [Score(m, solution, submissions[fmt], score_files(solution, submissions[fmt], m)) for m in FORMATS.get(fmt).metrics]
    return scores
