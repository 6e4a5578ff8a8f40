"""BirdCLEF `train_metadata.csv` and `taxonomy.csv`: read, parse, validate.

A row that cannot be trained on (unknown primary label, malformed list literal, no file
name, a file name leading outside the audio folder, a repeated file) is not dropped silently:
it goes to a quarantine table with the file and the reason, and the rest of the dataset goes
on. Of identical repeated rows the first is kept; rows naming one file with different values
are all quarantined (which one is right is unknown).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from birdpipe.paths import DatasetLayout, inside

REQUIRED_METADATA = ("primary_label", "filename")
REQUIRED_TAXONOMY = ("primary_label",)
LIST_COLUMNS = ("secondary_labels", "type")
QUARANTINE_SCHEMA = {"row": pl.Int64, "filename": pl.String, "reason": pl.String}


@dataclass(frozen=True)
class Metadata:
    """Trainable rows, quarantined rows, and labels that were not in the taxonomy (with counts)."""

    recordings: pl.DataFrame
    quarantine: pl.DataFrame
    unknown_secondary: dict[str, int]
    #: Primary labels of quarantined rows that the taxonomy lacks.
    unknown_primary: dict[str, int]


def read_csv(path: Path, required: tuple[str, ...]) -> pl.DataFrame:
    """Read a CSV as strings, failing with the file's name when it or a column is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        df = pl.read_csv(path, infer_schema=False)
    except pl.exceptions.PolarsError as exc:
        raise ValueError(f"{path}: not a readable CSV: {exc}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing required column(s) {missing}; found {df.columns}")
    return df


def load_taxonomy(path: Path) -> pl.DataFrame:
    """Taxonomy rows in file order; that order is the class order of every model output."""
    df = read_csv(path, REQUIRED_TAXONOMY).with_columns(pl.col("primary_label").str.strip_chars())
    dupes = df.filter(pl.col("primary_label").is_duplicated())["primary_label"].unique().to_list()
    if dupes:
        raise ValueError(f"{path}: duplicate primary_label(s) {sorted(dupes)}")
    if df["primary_label"].is_null().any() or (df["primary_label"] == "").any():
        raise ValueError(f"{path}: empty primary_label in row(s) {_empty_rows(df)}")
    return df


def parse_list_literal(text: str | None) -> list[str]:
    """`"['a', 'b']"` -> `['a', 'b']`; empty or missing -> `[]`; anything else raises ValueError."""
    if text is None or text.strip() in ("", "[]"):
        return []
    value = ast.literal_eval(text.strip())
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"not a list of strings: {text!r}")
    return [v.strip() for v in value if v.strip()]


def load_train_metadata(path: Path, taxonomy: pl.DataFrame) -> Metadata:
    """Parse list literals and ratings, validate labels against the taxonomy, quarantine bad rows."""
    df = raw = read_csv(path, REQUIRED_METADATA).with_row_index("row")
    classes = set(taxonomy["primary_label"].to_list())
    problems: list[dict] = []
    parsed: dict[str, list[list[str] | None]] = {c: [] for c in LIST_COLUMNS if c in df.columns}
    for column, values in parsed.items():
        for row, text in zip(df["row"], df[column]):
            try:
                values.append(parse_list_literal(text))
            except (ValueError, SyntaxError) as exc:
                values.append(None)
                problems.append(_problem(df, row, f"{column}: {exc}"))
    df = df.with_columns(
        [pl.Series(c, v, dtype=pl.List(pl.String)) for c, v in parsed.items()]
        + [pl.col("primary_label").str.strip_chars(), pl.col("filename").str.strip_chars()]
    )
    for c in LIST_COLUMNS:
        if c not in df.columns:
            df = df.with_columns(pl.lit([], dtype=pl.List(pl.String)).alias(c))
    df = df.with_columns(
        [_rating_column(df)]
        + [pl.col(c).cast(pl.Float64, strict=False) for c in ("latitude", "longitude") if c in df.columns]
    )
    unknown_primary: dict[str, int] = {}
    for row, label, filename in df.select("row", "primary_label", "filename").iter_rows():
        if not filename:
            problems.append(_problem(df, row, "empty filename"))
        elif _leaves_audio_folder(filename):
            problems.append(_problem(df, row, "filename leads outside the audio folder"))
        elif label not in classes:
            problems.append(_problem(df, row, f"primary_label {label!r} is not in the taxonomy"))
            unknown_primary[label] = unknown_primary.get(label, 0) + 1
    problems += [_problem(df, row, reason) for row, reason in _repeated_rows(raw)]
    quarantine = pl.DataFrame(problems, schema=QUARANTINE_SCHEMA).unique("row", keep="first").sort("row")
    good = df.filter(~pl.col("row").is_in(quarantine["row"].implode()))
    secondary = good["secondary_labels"].explode().drop_nulls()
    unknown = secondary.filter(~secondary.is_in(list(classes))).value_counts(sort=True)
    good = good.with_columns(pl.col("secondary_labels").list.eval(pl.element().filter(pl.element().is_in(list(classes)))))
    return Metadata(
        recordings=good.drop("row"),
        quarantine=quarantine,
        unknown_secondary=dict(zip(unknown[unknown.columns[0]].to_list(), unknown["count"].to_list())),
        unknown_primary=unknown_primary,
    )


def _leaves_audio_folder(filename: str) -> bool:
    try:
        inside(Path("."), filename)
    except ValueError:
        return True
    return False


def _repeated_rows(raw: pl.DataFrame) -> list[tuple[int, str]]:
    """(row, reason) for rows naming a file an earlier row names: a repeat of an identical row
    (the first copy stays), or every row of a file named with different values."""
    named = raw.filter(pl.col("filename").str.strip_chars().is_duplicated() & pl.col("filename").is_not_null())
    found = []
    for (_,), rows in named.group_by(pl.col("filename").str.strip_chars(), maintain_order=True):
        values = rows.drop("row")
        if values.unique().height == 1:
            first = rows["row"][0]
            found += [(int(r), f"repeats row {first} (identical; that one is kept)") for r in rows["row"][1:]]
        else:
            differ = [c for c in values.columns if values[c].n_unique() > 1]
            found += [(int(r), f"filename also in row(s) {[int(o) for o in rows['row'] if o != r]} with other {', '.join(differ)}")
                      for r in rows["row"]]  # fmt: skip
    return found


def _rating_column(df: pl.DataFrame) -> pl.Expr:
    """Rating as float, missing or unparsable as 0 (BirdCLEF 2025's "no rating")."""
    if "rating" not in df.columns:
        return pl.lit(0.0).alias("rating")
    return pl.col("rating").cast(pl.Float64, strict=False).fill_null(0.0).alias("rating")


def _problem(df: pl.DataFrame, row: int, reason: str) -> dict:
    return {"row": int(row), "filename": df["filename"][int(row)], "reason": reason}


def _empty_rows(df: pl.DataFrame) -> list[int]:
    mask = df["primary_label"].is_null() | (df["primary_label"] == "")
    return [i for i, bad in enumerate(mask.to_list()) if bad]


def read_recordings(layout: DatasetLayout) -> pl.DataFrame:
    """The dataset's trainable recordings (see `read_metadata` for the rows left out)."""
    return read_metadata(layout).recordings


def read_metadata(layout: DatasetLayout) -> Metadata:
    """The dataset's metadata, validated against the taxonomy, or without one against the
    metadata's own primary labels; the quarantine says which rows are left out and why."""
    if layout.taxonomy.exists():
        return load_train_metadata(layout.train_metadata, load_taxonomy(layout.taxonomy))
    labels = read_csv(layout.train_metadata, REQUIRED_METADATA)["primary_label"].str.strip_chars()
    return load_train_metadata(layout.train_metadata, pl.DataFrame({"primary_label": labels.drop_nulls().unique(maintain_order=True)}))
