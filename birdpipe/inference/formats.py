"""Submission files of every BirdCLEF format, their schema checks, and Raven selection tables.

Predictions and ground truth pass through the same formatter (`format_frame`): window
probabilities (or 0/1 labels) per class, thresholded where the format wants decisions, so a
solution built from labels and a submission built from predictions always share row ids.

- "2021": `row_id,birds`, row_id `<soundscape>_<end_s>` (for 2021 test names
  `<audio_id>_<site>_<date>`: `<audio_id>_<site>_<end_s>`), birds space-separated or `nocall`;
- "2022": `row_id,target`, one row per window and scored bird, row_id `<soundscape>_<bird>_<end_s>`;
- "2023"-"2025": `row_id` + one probability column per class, in class order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from birdpipe.evaluation.metrics import NOCALL
from birdpipe.paths import atomic_write
from birdpipe.evaluation.thresholds import Thresholds
from birdpipe.features.config import MelConfig
from birdpipe.registry import Registry

if TYPE_CHECKING:
    from birdpipe.inference.config import SubmissionConfig

#: Columns of a predictions frame besides one per class.
KEYS = ("row_id", "soundscape_id", "end_seconds")
_SITE_DATE = re.compile(r"(\d+_[A-Za-z]+)_\d{8}")
RAVEN_COLUMNS = {
    "Selection": pl.Int64, "View": pl.String, "Channel": pl.Int64, "Begin Time (s)": pl.Float64,
    "End Time (s)": pl.Float64, "Low Freq (Hz)": pl.Float64, "High Freq (Hz)": pl.Float64,
    "Species": pl.String, "Score": pl.Float64,
}  # fmt: skip


@dataclass(frozen=True)
class SubmissionFormat:
    """One year's submission layout.

    `frame(predictions, classes, hits, scored)` builds the file from window scores and their
    thresholded decisions; `check(df, classes, scored)` lists schema problems of a read file.
    """

    #: Column after `row_id` (2021 `birds`, 2022 `target`); None: one column per class.
    value_column: str | None
    frame: Callable[[pl.DataFrame, list[str], np.ndarray, list[str]], pl.DataFrame]
    check: Callable[[pl.DataFrame, list[str], list[str]], list[str]]
    #: Rows per window: one, or (2022) one per scored bird.
    per_scored_bird: bool = False
    #: Official metrics of the years that used this layout, for local scoring.
    metrics: tuple[str, ...] = ()

    @property
    def wide(self) -> bool:
        """Probabilities per class (read as numbers), rather than decisions (read as text)."""
        return self.value_column is None

    def columns(self, classes: Sequence[str]) -> list[str]:
        return ["row_id", *classes] if self.wide else ["row_id", self.value_column]


#: Submission layouts by competition year: `[submission] format`, `birdpipe predict --format`.
FORMATS: Registry[SubmissionFormat] = Registry("submission format")
#: The format of `birdpipe predict` without `--format` or `[submission] format`: the latest year's.
DEFAULT_FORMAT = "2025"


@dataclass(frozen=True)
class SubmissionTemplate:
    """What the dataset itself says a submission looks like, where it says it."""

    #: Class columns in `sample_submission.csv` order (the probability formats).
    columns: tuple[str, ...] | None = None
    #: Row ids of 2022's `test.csv`, in order (the per-scored-bird format).
    row_ids: tuple[str, ...] | None = None

    def classes(self, model_classes: Sequence[str]) -> list[str]:
        """The model's classes in the template's column order; a mismatch fails naming the difference."""
        if self.columns is None:
            return list(model_classes)
        extra, lacking = sorted(set(self.columns) - set(model_classes)), sorted(set(model_classes) - set(self.columns))
        if extra or lacking:
            raise ValueError(f"sample submission columns differ from the model's classes: not in the model {extra[:5]}, not in the template {lacking[:5]}")
        return list(self.columns)


def window_row_id() -> pl.Expr:
    """`<soundscape>_<end_s>`: the row id of one 5 s window (2023-2025, and the synthetic labels)."""
    return pl.format("{}_{}", "soundscape_id", pl.col("end_seconds").cast(pl.Int64)).alias("row_id")


def _birds_frame(predictions: pl.DataFrame, classes: list[str], hits: np.ndarray, scored: list[str]) -> pl.DataFrame:
    names = np.array(classes)
    sid, end = predictions["soundscape_id"].to_list(), predictions["end_seconds"].to_list()
    return pl.DataFrame(
        {"row_id": [_row_id_2021(s, e) for s, e in zip(sid, end)], "birds": [" ".join(names[row]) or NOCALL for row in hits]}
    )


def _target_frame(predictions: pl.DataFrame, classes: list[str], hits: np.ndarray, scored: list[str]) -> pl.DataFrame:
    sid, end = predictions["soundscape_id"].to_list(), predictions["end_seconds"].to_list()
    cols = [classes.index(b) for b in scored]
    return pl.DataFrame(
        {
            "row_id": [f"{s}_{b}_{int(e)}" for s, e in zip(sid, end) for b in scored],
            "target": np.where(hits[:, cols].ravel(), "True", "False"),
        },
        schema={"row_id": pl.String, "target": pl.String},
    )


def _wide_frame(predictions: pl.DataFrame, classes: list[str], hits: np.ndarray, scored: list[str]) -> pl.DataFrame:
    return predictions.select("row_id", *classes)


def _check_birds(df: pl.DataFrame, classes: list[str], scored: list[str]) -> list[str]:
    birds = df["birds"]
    if birds.null_count():
        return [f"birds empty in {birds.null_count()} rows (use '{NOCALL}')"]
    sets = [set(b.split()) for b in birds]
    unknown = sorted(set().union(*sets) - set(classes) - {NOCALL})
    mixed = sum(NOCALL in s and len(s) > 1 for s in sets)
    return [f"unknown species {unknown[:5]}"] * bool(unknown) + [f"{mixed} rows mix '{NOCALL}' with species"] * bool(mixed)


def _check_target(df: pl.DataFrame, classes: list[str], scored: list[str]) -> list[str]:
    problems = []
    if not df["target"].is_in(["True", "False"]).all():
        problems.append("target must be True or False")
    birds = df["row_id"].str.split("_").list.get(-2, null_on_oob=True)
    unscored = sorted(set(birds.drop_nulls()) - set(scored))
    if birds.null_count() or unscored:
        problems.append(f"row_id must be <soundscape>_<scored bird>_<end_s>; unscored: {unscored[:5]}")
    return problems


def _check_probabilities(df: pl.DataFrame, classes: list[str], scored: list[str]) -> list[str]:
    probs = df.select(classes)
    text = [c for c in probs.columns if not probs[c].dtype.is_numeric()]
    if text:
        return [f"non-numeric columns {text[:5]}"]
    values = probs.to_numpy().astype(np.float64)
    problems = []
    if not np.isfinite(values).all():
        problems.append(f"{int((~np.isfinite(values)).sum())} missing or non-finite probabilities")
    if ((values < 0) | (values > 1)).any():
        problems.append("probabilities outside [0, 1]")
    return problems


FORMATS.register("2021")(SubmissionFormat("birds", _birds_frame, _check_birds, metrics=("birdclef2021",)))
FORMATS.register("2022")(SubmissionFormat("target", _target_frame, _check_target, per_scored_bird=True, metrics=("birdclef2022",)))
_WIDE = SubmissionFormat(None, _wide_frame, _check_probabilities, metrics=("birdclef2023", "birdclef2025"))
for _year in ("2023", "2024", "2025"):
    FORMATS.register(_year)(_WIDE)


def layouts() -> list[str]:
    """One format name per distinct layout (the latest year that used it): 2021, 2022, 2025."""
    latest = {id(FORMATS.get(name)): name for name in FORMATS}
    return list(latest.values())


def columns(fmt: str, classes: Sequence[str]) -> list[str]:
    return FORMATS.get(fmt).columns(classes)


def expected_rows(n_windows: int, fmt: str, n_scored: int, template_rows: int | None = None) -> int:
    """Rows of a submission of `n_windows` windows (2022: one per window and scored bird, or
    `template_rows`, the rows of the dataset's `test.csv`)."""
    if not FORMATS.get(fmt).per_scored_bird:
        return n_windows
    return template_rows if template_rows is not None else n_windows * n_scored


def format_frame(
    predictions: pl.DataFrame,
    classes: Sequence[str],
    fmt: str,
    thresholds: np.ndarray,
    scored_birds: Sequence[str] | None = None,
    template: SubmissionTemplate = SubmissionTemplate(),
) -> pl.DataFrame:
    """The submission frame of `fmt` from window scores (KEYS + one column per class), with
    the template's rows (2022) or column order where the dataset gives one."""
    layout = FORMATS.get(fmt)
    classes = list(classes)
    missing = [c for c in (*KEYS, *classes) if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions lack column(s) {missing[:5]}")
    scored = list(scored_birds) if scored_birds is not None else classes
    unknown = [b for b in scored if b not in classes]
    if unknown:
        raise ValueError(f"scored birds not among the model's classes: {unknown[:5]}")
    hits = predictions.select(classes).to_numpy() >= thresholds
    frame = layout.frame(predictions, classes, hits, scored)
    if layout.wide:
        return frame.select("row_id", *template.classes(classes))
    if layout.per_scored_bird and template.row_ids is not None:
        rows = pl.DataFrame({"row_id": list(template.row_ids)}, schema={"row_id": pl.String})
        return rows.join(frame, on="row_id", how="left", maintain_order="left")
    return frame


def write_submission(
    predictions: pl.DataFrame,
    classes: Sequence[str],
    thresholds: Thresholds | None,
    cfg: SubmissionConfig,
    out_path: str | Path,
    scored_birds: Sequence[str] | None = None,
    template: SubmissionTemplate = SubmissionTemplate(),
) -> Path:
    """Write predictions as a `cfg.format` CSV; 2021/2022 decide with `thresholds` (default 0.5)."""
    thresholds = thresholds or Thresholds.constant()
    fmt = cfg.format or DEFAULT_FORMAT
    frame = format_frame(predictions, classes, fmt, thresholds.vector(classes), scored_birds, template)
    return atomic_write(out_path, frame.write_csv)  # a run killed mid-write leaves the previous file whole


def solution_from_labels(
    labels: pl.DataFrame, classes: Sequence[str], fmt: str, scored_birds: Sequence[str] | None = None
) -> pl.DataFrame:
    """Ground truth (soundscape_id, end_seconds, birds) in `fmt`, to score submissions against."""
    missing = [c for c in ("soundscape_id", "end_seconds", "birds") if c not in labels.columns]
    if missing:
        raise ValueError(f"labels lack column(s) {missing}: need soundscape_id, end_seconds, birds")
    classes = list(classes)
    index = {c: i for i, c in enumerate(classes)}
    y = np.zeros((len(labels), len(classes)), dtype=np.int8)
    for r, birds in enumerate(labels["birds"].fill_null(NOCALL).to_list()):
        unknown = [b for b in birds.split() if b != NOCALL and b not in index]
        if unknown:
            raise ValueError(f"labels row {r}: unknown species {unknown}")
        y[r, [index[b] for b in birds.split() if b != NOCALL]] = 1
    wide = labels.select(window_row_id(), "soundscape_id", "end_seconds").hstack(pl.DataFrame(y, schema=classes))
    return format_frame(wide, classes, fmt, np.full(len(classes), 0.5), scored_birds)


def check_submission(
    path: str | Path,
    fmt: str,
    classes: Sequence[str],
    expected_rows: int,
    scored_birds: Sequence[str] | None = None,
) -> list[str]:
    """Schema problems of a submission file (empty when it is valid) for an asset check."""
    layout = FORMATS.get(fmt)
    path = Path(path)
    try:
        df = pl.read_csv(path, infer_schema=layout.wide, infer_schema_length=None)
    except (OSError, pl.exceptions.PolarsError) as exc:
        return [f"{path}: unreadable: {exc}"]
    problems = []
    want = layout.columns(classes)
    if df.columns != want:
        problems.append(f"columns {df.columns[:6]}... differ from {want[:6]}...")
        return problems
    if df.height != expected_rows:
        problems.append(f"{df.height} rows, expected {expected_rows}")
    if df["row_id"].null_count() or df["row_id"].is_duplicated().any():
        problems.append("row_id has empty or duplicated values")
    return problems + layout.check(df, list(classes), list(scored_birds if scored_birds is not None else classes))


def raven_tables(
    predictions: pl.DataFrame,
    classes: Sequence[str],
    thresholds: Thresholds | None,
    out_dir: str | Path,
    mel_cfg: MelConfig,
) -> list[Path]:
    """One Raven selection table per soundscape: a selection per window and species above threshold.

    The band is the model's mel range; every soundscape gets a file, empty ones a header only.
    """
    classes = list(classes)
    thr = (thresholds or Thresholds.constant()).vector(classes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for (sid,), part in predictions.sort("soundscape_id", "end_seconds").group_by("soundscape_id", maintain_order=True):
        probs = part.select(classes).to_numpy()
        rows, cols = np.nonzero(probs >= thr)
        end = part["end_seconds"].to_numpy()[rows].astype(float)
        table = pl.DataFrame(
            {
                "Selection": np.arange(1, len(rows) + 1),
                "View": ["Spectrogram 1"] * len(rows),
                "Channel": np.ones(len(rows), dtype=np.int64),
                "Begin Time (s)": np.maximum(end - mel_cfg.window_seconds, 0.0),
                "End Time (s)": end,
                "Low Freq (Hz)": np.full(len(rows), float(mel_cfg.fmin)),
                "High Freq (Hz)": np.full(len(rows), float(mel_cfg.fmax)),
                "Species": np.array(classes, dtype=object)[cols].astype(str),
                "Score": probs[rows, cols].astype(np.float64).round(4),
            },
            schema=RAVEN_COLUMNS,
        )
        path = out_dir / f"{sid}.birdpipe.selection.table.txt"
        table.write_csv(path, separator="\t")
        paths.append(path)
    return paths


def load_scored_birds(path: str | Path) -> list[str]:
    """The 2022 `scored_birds.json` list."""
    birds = json.loads(Path(path).read_text())
    if not isinstance(birds, list) or not all(isinstance(b, str) for b in birds):
        raise ValueError(f"{path}: expected a JSON list of species codes")
    return birds


def _row_id_2021(soundscape_id: str, end_seconds: int) -> str:
    m = _SITE_DATE.fullmatch(soundscape_id)
    return f"{m[1] if m else soundscape_id}_{int(end_seconds)}"
