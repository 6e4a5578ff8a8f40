"""The official metric of every BirdCLEF year, on submission files and on matrices.

Each year's metric has two entry points that share one array computation: the frame form
(`birdclef2021(solution, submission)` ...) takes the year's own CSV layout and validates it
the way Kaggle would refuse a submission, and `oof_scores` computes all of them from label
and probability matrices, so out-of-fold scores and leaderboard-style scores agree.

Formats (see docs/evaluation.md): 2021 `row_id,birds` (space-separated codes or `nocall`);
2022 `row_id,target` with row_id `<file>_<bird>_<end_s>`; 2023-2025 `row_id` + one column
per species.

Two registries name the metrics: `VALIDATION_METRICS` (matrix metrics a training run selects
its best epoch by: `[train] metric`) and `COMPETITION_METRICS` (each year's metric on
submission frames: `birdpipe score --metric`). scikit-learn loads on first use, so that
validating a config stays fast (imported inside the functions that use it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
import numpy as np
import polars as pl

from birdpipe.registry import Registry

NOCALL = "nocall"
ROW_ID = "row_id"
#: How many bad ids or cells an error message names before "...".
_SHOW = 5

#: name -> `fn(y_true [n, C], y_score [n, C]) -> float`.
VALIDATION_METRICS: Registry[Callable[[np.ndarray, np.ndarray], float]] = Registry("validation metric")
#: name -> `fn(solution, submission) -> float` on a year's submission frames.
COMPETITION_METRICS: Registry[Callable[[pl.DataFrame, pl.DataFrame], float]] = Registry("metric")


# --- array cores -------------------------------------------------------------------------


def rowwise_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """2021: per-row F1 of label sets, averaged over rows; an empty row counts as `nocall`."""
    return _samples_f1(_with_nocall(y_true), _with_nocall(y_pred))


def _samples_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    import sklearn.metrics as skm

    return float(skm.f1_score(y_true, y_pred, average="samples"))


def species_balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """2022 per species: (TPR + TNR) / 2; NaN for species without positives (not scored)."""
    import sklearn.metrics as skm

    out = np.full(y_true.shape[1], np.nan)
    for c in np.flatnonzero(y_true.sum(axis=0) > 0):
        with warnings.catch_warnings():  # all-positive column: sklearn warns and returns TPR
            warnings.simplefilter("ignore", UserWarning)
            out[c] = skm.balanced_accuracy_score(y_true[:, c], y_pred[:, c])
    return out


def weighted_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """2022: per-species balanced accuracy averaged over species that have positives."""
    return _nanmean(species_balanced_accuracy(y_true, y_pred), "2022 weighted accuracy")


@VALIDATION_METRICS.register("cmap")
def padded_cmap(y_true: np.ndarray, y_score: np.ndarray, padding: int = 5) -> float:
    """2023: macro AP after appending `padding` rows of ones to both (no empty columns)."""
    import sklearn.metrics as skm

    ones = np.ones((padding, y_true.shape[1]))
    return float(
        skm.average_precision_score(np.vstack([y_true, ones]), np.vstack([y_score, ones]), average="macro")
    )


@VALIDATION_METRICS.register("roc_auc")
def macro_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """2024/2025: macro ROC-AUC over species with positives.

    A column of only positives has no AUC (the official code errors); it is left out too.
    """
    import sklearn.metrics as skm

    positives = y_true.sum(axis=0)
    scored = (positives > 0) & (positives < len(y_true))
    if not scored.any():
        raise ValueError("macro ROC-AUC: no species column has both positives and negatives")
    return float(skm.roc_auc_score(y_true[:, scored], y_score[:, scored], average="macro"))


# --- matrices: out-of-fold ---------------------------------------------------------------


def oof_scores(
    y_true: np.ndarray, y_prob: np.ndarray, classes: Sequence[str], threshold: float | np.ndarray = 0.5
) -> dict[str, float]:
    """Every year's metric from a label matrix and a probability matrix [n, C].

    The F1-type years (2021, 2022) binarise `y_prob >= threshold` (a scalar or one per class).
    """
    y_true, y_prob = check_matrices(y_true, y_prob, classes)
    y_pred = (y_prob >= np.asarray(threshold)).astype(np.int8)
    auc = macro_auc(y_true, y_prob)
    return {
        "birdclef2021": rowwise_f1(y_true, y_pred),
        "birdclef2022": weighted_accuracy(y_true, y_pred),
        "birdclef2023": padded_cmap(y_true, y_prob),
        "birdclef2024": auc,
        "birdclef2025": auc,
    }


def per_species_table(y_true: np.ndarray, y_prob: np.ndarray, classes: Sequence[str]) -> pl.DataFrame:
    """species, positives, ap, auc (null where undefined), sorted by positives: for reports."""
    import sklearn.metrics as skm

    y_true, y_prob = check_matrices(y_true, y_prob, classes)
    rows = []
    for c, name in enumerate(classes):
        t, s = y_true[:, c], y_prob[:, c]
        pos = int(t.sum())
        defined = 0 < pos < len(t)
        rows.append(
            {
                "species": name,
                "positives": pos,
                "ap": float(skm.average_precision_score(t, s)) if pos else None,
                "auc": float(skm.roc_auc_score(t, s)) if defined else None,
            }
        )
    schema = {"species": pl.String, "positives": pl.Int64, "ap": pl.Float64, "auc": pl.Float64}
    return pl.DataFrame(rows, schema=schema).sort("positives", "species", descending=[True, False])


# --- frames: the years' submission formats -----------------------------------------------


@COMPETITION_METRICS.register("birdclef2021")
def birdclef2021(solution: pl.DataFrame, submission: pl.DataFrame) -> float:
    """Row-wise micro F1 of `birds` label sets (`nocall` is a label)."""
    sol, sub = _aligned(solution, submission, ["birds"], "birds")
    sol_sets, sub_sets = _label_sets(sol["birds"]), _label_sets(sub["birds"])
    vocab = sorted(set().union(*sol_sets, *sub_sets))
    return _samples_f1(_binarize(sol_sets, vocab), _binarize(sub_sets, vocab))


@COMPETITION_METRICS.register("birdclef2022")
def birdclef2022(solution: pl.DataFrame, submission: pl.DataFrame) -> float:
    """Weighted accuracy over (window, scored bird) rows, row_id `<file>_<bird>_<end_s>`."""
    sol, sub = _aligned(solution, submission, ["target"], "target")
    parts = sol[ROW_ID].str.split("_")
    bad = sol.filter(parts.list.len() < 3)[ROW_ID]
    if len(bad):
        raise ValueError(f"2022 row_id must be <file>_<bird>_<end_s>; got {_names(bad)}")
    bird = parts.list.get(-2)
    truth, pred = _booleans(sol["target"], "solution"), _booleans(sub["target"], "submission")
    scores = []
    for name in bird.unique().sort():
        mask = (bird == name).to_numpy()
        scores.append(species_balanced_accuracy(truth[mask, None], pred[mask, None])[0])
    return _nanmean(np.array(scores), "2022 weighted accuracy")


@COMPETITION_METRICS.register("birdclef2023")
def birdclef2023(solution: pl.DataFrame, submission: pl.DataFrame) -> float:
    """Padded cmAP over the species columns."""
    return padded_cmap(*_wide_matrices(solution, submission))


@COMPETITION_METRICS.register("birdclef2024")
def birdclef2024(solution: pl.DataFrame, submission: pl.DataFrame) -> float:
    """Macro ROC-AUC over species columns with positives."""
    return macro_auc(*_wide_matrices(solution, submission))


birdclef2025 = COMPETITION_METRICS.register("birdclef2025")(birdclef2024)


def score(metric: str, solution, submission) -> float:
    """`metric` (a COMPETITION_METRICS name, or just the year) on two frames (polars or pandas)."""
    return _metric(metric)(_polars(solution, "solution"), _polars(submission, "submission"))


def score_files(solution_csv: Path, submission_csv: Path, metric: str) -> float:
    """Score two CSV files; every problem is a ValueError saying which input and what is wrong."""
    fn = _metric(metric)
    text_cols = fn in (birdclef2021, birdclef2022)
    frames = [_read_csv(Path(p), text_cols) for p in (solution_csv, submission_csv)]
    return fn(*frames)


# --- validation helpers ------------------------------------------------------------------


def _metric(name: str) -> Callable[[pl.DataFrame, pl.DataFrame], float]:
    """A registered metric by name or by year (`2025` -> `birdclef2025`)."""
    return COMPETITION_METRICS.get(f"birdclef{name}" if f"birdclef{name}" in COMPETITION_METRICS else name)


def _read_csv(path: Path, as_text: bool) -> pl.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        df = pl.read_csv(path, infer_schema=not as_text, infer_schema_length=None)
    except pl.exceptions.PolarsError as exc:
        raise ValueError(f"{path}: not a readable CSV: {exc}") from None
    if ROW_ID not in df.columns:
        raise ValueError(f"{path}: no 'row_id' column (columns: {_names(df.columns)})")
    return df.with_columns(pl.col(ROW_ID).cast(pl.String))


def _polars(df, what: str) -> pl.DataFrame:
    df = df if isinstance(df, pl.DataFrame) else pl.from_pandas(df)
    if ROW_ID not in df.columns:
        raise ValueError(f"{what}: no 'row_id' column (columns: {_names(df.columns)})")
    return df.with_columns(pl.col(ROW_ID).cast(pl.String))


def _aligned(
    solution: pl.DataFrame, submission: pl.DataFrame, columns: list[str] | None, value: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Both frames with the same columns and rows, submission in solution row order.

    `columns`: the expected value columns (None: the solution's). Raises a ValueError that
    names missing or unknown columns, duplicated, missing or unmatched row ids, and nulls.
    """
    solution, submission = _polars(solution, "solution"), _polars(submission, "submission")
    expected = columns if columns is not None else [c for c in solution.columns if c != ROW_ID]
    for what, df in (("solution", solution), ("submission", submission)):
        missing = [c for c in expected if c not in df.columns]
        unknown = [c for c in df.columns if c != ROW_ID and c not in expected]
        if missing or unknown:
            raise ValueError(
                f"{what}: {value} columns do not match; "
                + "; ".join(f"{k}: {_names(v)}" for k, v in (("missing", missing), ("unknown", unknown)) if v)
            )
        dup = df.filter(pl.col(ROW_ID).is_duplicated())[ROW_ID].unique()
        if len(dup):
            raise ValueError(f"{what}: duplicated row_id {_names(dup)}")
        _no_nulls(df, what)
    sol_ids, sub_ids = set(solution[ROW_ID]), set(submission[ROW_ID])
    missing, extra = sorted(sol_ids - sub_ids), sorted(sub_ids - sol_ids)
    if missing or extra:
        raise ValueError(
            "row ids do not match: "
            + "; ".join(
                f"{msg} {_names(v)} ({len(v)})"
                for msg, v in (("missing from submission", missing), ("not in solution", extra))
                if v
            )
        )
    order = solution.select(ROW_ID).with_row_index("_order")
    submission = submission.join(order, on=ROW_ID).sort("_order").drop("_order")
    return solution.select(ROW_ID, *expected), submission.select(ROW_ID, *expected)


def _no_nulls(df: pl.DataFrame, what: str) -> None:
    for name in df.columns:
        col = df[name]
        bad = col.is_null() | col.is_nan() if col.dtype.is_float() else col.is_null()
        if bad.any():
            rows = df.filter(bad)[ROW_ID] if name != ROW_ID else ["(row_id)"]
            raise ValueError(f"{what}: missing or NaN values in column {name!r} at row_id {_names(rows)}")


def _wide_matrices(solution: pl.DataFrame, submission: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    sol, sub = _aligned(solution, submission, None, "species")
    species = sol.columns[1:]
    if not species:
        raise ValueError("solution: no species columns besides row_id")
    for what, df in (("solution", sol), ("submission", sub)):
        text = [c for c in species if not df[c].dtype.is_numeric() and df[c].dtype != pl.Boolean]
        if text:
            raise ValueError(f"{what}: non-numeric values in column(s) {_names(text)}")
    y_true = sol.select(species).to_numpy().astype(np.float64)
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("solution: species columns must hold 0/1 labels")
    outside = sub.filter(pl.any_horizontal((pl.col(c) < 0) | (pl.col(c) > 1) for c in species))
    if outside.height:
        columns = [c for c in species if ((outside[c] < 0) | (outside[c] > 1)).any()]
        raise ValueError(f"submission: probabilities outside [0, 1] in column(s) {_names(columns)} at row_id {_names(outside[ROW_ID])}")
    return y_true, sub.select(species).to_numpy().astype(np.float64)


def _label_sets(col: pl.Series) -> list[set[str]]:
    """Space-separated codes; a whitespace-only cell means `nocall`."""
    return [set(str(v).split()) or {NOCALL} for v in col.cast(pl.String)]


def _binarize(sets: list[set[str]], vocab: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(vocab)}
    out = np.zeros((len(sets), len(vocab)), dtype=np.int8)
    for r, labels in enumerate(sets):
        out[r, [index[x] for x in labels]] = 1
    return out


def _booleans(col: pl.Series, what: str) -> np.ndarray:
    text = col.cast(pl.String).str.strip_chars().str.to_lowercase()
    mapping = {"true": True, "1": True, "1.0": True, "false": False, "0": False, "0.0": False}
    bad = ~text.is_in(list(mapping))
    if bad.any():
        raise ValueError(f"{what}: target must be True/False; got {_names(col.filter(bad).unique())}")
    return text.replace_strict(mapping, return_dtype=pl.Boolean).to_numpy()


def _with_nocall(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.int8)
    return np.hstack([y, (y.sum(axis=1) == 0).astype(np.int8)[:, None]])


def check_matrices(y_true, y_prob, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Labels as 0/1 int8 and finite float64 probabilities, both `[n, len(classes)]`."""
    y_true, y_prob = np.asarray(y_true, dtype=np.float64), np.asarray(y_prob, dtype=np.float64)
    if y_true.shape != y_prob.shape or y_true.ndim != 2 or y_true.shape[1] != len(classes):
        raise ValueError(f"y_true {y_true.shape} and y_prob {y_prob.shape} must both be [n, {len(classes)}]")
    if not np.isfinite(y_prob).all():
        raise ValueError("y_prob holds NaN or infinite values")
    return (y_true > 0.5).astype(np.int8), y_prob


def _nanmean(values: np.ndarray, what: str) -> float:
    if np.isnan(values).all():
        raise ValueError(f"{what}: no species has positives")
    return float(np.nanmean(values))


def _names(values) -> str:
    values = [str(v) for v in values]
    shown = ", ".join(values[:_SHOW])
    return shown + (", ..." if len(values) > _SHOW else "")
