"""BirdCLEF recording metadata and the class list: read, parse, validate.

A row that cannot be trained on (unknown primary label, malformed list literal, no file
name, a file name leading outside the audio folder, a repeated file) is not dropped silently:
it goes to a quarantine table with the file and the reason, and the rest of the dataset goes
on. Of identical repeated rows the first is kept; rows naming one file with different values
are all quarantined (which one is right is unknown). Labels are kept as strings throughout:
BirdCLEF 2025 names 60 classes by numeric iNaturalist ids.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from birdpipe.data.layout import DatasetLayout
from birdpipe.paths import inside

REQUIRED_METADATA = ("primary_label", "filename")
REQUIRED_TAXONOMY = ("primary_label",)
LIST_COLUMNS = ("secondary_labels", "type")
QUARANTINE_SCHEMA = {"row": pl.Int64, "filename": pl.String, "reason": pl.String}
#: A list literal of plain single-quoted strings (nearly every row): parsed by polars; any
#: other text goes through `ast.literal_eval` one row at a time.
_PLAIN_LIST = r"^\[\s*(?:'[^'\\\"]*'\s*(?:,\s*'[^'\\\"]*'\s*)*,?\s*)?\]$"


@dataclass(frozen=True)
class Metadata:
    """Trainable rows, quarantined rows, and labels that were not in the taxonomy (with counts)."""

    recordings: pl.DataFrame
    quarantine: pl.DataFrame
    unknown_secondary: dict[str, int]
    #: Primary labels of quarantined rows that the taxonomy lacks.
    unknown_primary: dict[str, int]


@dataclass(frozen=True)
class Classes:
    """The class list in model order (`primary_label`, plus names where the source has them) and where it came from."""

    frame: pl.DataFrame
    source: str

    @property
    def labels(self) -> list[str]:
        return self.frame["primary_label"].to_list()


def read_csv(path: Path, required: tuple[str, ...], n_rows: int | None = None) -> pl.DataFrame:
    """Read a CSV as strings, failing with the file's name when it or a column is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        df = pl.read_csv(path, infer_schema=False, n_rows=n_rows)
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


def parse_list_column(texts: pl.Series) -> tuple[pl.Series, dict[int, str]]:
    """A column of list literals as lists of stripped strings (`[]`, `['']`, empty -> `[]`),
    and the reason for each row index that is not a list of strings (its value null)."""
    df = pl.DataFrame({"text": texts.str.strip_chars()}).with_row_index("i")
    text = pl.col("text")
    plain = text.is_null() | (text == "") | text.str.contains(_PLAIN_LIST)
    item = pl.element().str.strip_chars("'").str.strip_chars()
    items = text.str.extract_all(r"'[^']*'").list.eval(item.filter(item != "")).fill_null(pl.lit([], pl.List(pl.String)))
    df = df.with_columns(pl.when(plain).then(items).alias("items"), plain.alias("plain"))
    errors: dict[int, str] = {}
    odd: dict[int, list[str] | None] = {}
    for i, value in df.filter(~pl.col("plain")).select("i", "text").iter_rows():
        try:
            odd[i] = parse_list_literal(value)
        except (ValueError, SyntaxError) as exc:
            odd[i], errors[i] = None, str(exc)
    if odd:
        fallback = pl.DataFrame({"i": list(odd), "parsed": list(odd.values())}, schema={"i": pl.UInt32, "parsed": pl.List(pl.String)})
        df = df.join(fallback, on="i", how="left").with_columns(pl.coalesce("items", "parsed").alias("items"))
    return df["items"].alias(texts.name), errors


def parse_list_literal(text: str | None) -> list[str]:
    """`"['a', 'b']"` -> `['a', 'b']`; empty or missing -> `[]`; anything else raises ValueError."""
    if text is None or text.strip() in ("", "[]"):
        return []
    value = ast.literal_eval(text.strip())
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"not a list of strings: {text!r}")
    return [v.strip() for v in value if v.strip()]


def load_train_metadata(path: Path, taxonomy: pl.DataFrame, label_folders: bool = False) -> Metadata:
    """Parse list literals and ratings, validate labels against the class list, quarantine bad rows.

    `label_folders`: a file name without a folder (2021) is read as `<primary_label>/<name>`.
    """
    df = raw = read_csv(path, REQUIRED_METADATA).with_row_index("row")
    classes = set(taxonomy["primary_label"].to_list())
    problems: list[dict] = []
    for column in (c for c in LIST_COLUMNS if c in df.columns):
        values, errors = parse_list_column(df[column])
        df = df.with_columns(values.alias(column))
        problems += [_problem(df, row, f"{column}: {reason}") for row, reason in errors.items()]
    df = df.with_columns(pl.col("primary_label").str.strip_chars(), _filename_column(label_folders))
    if "secondary_labels" in df.columns:  # a recording's own species listed as secondary too
        own = pl.element() != pl.element().first()
        df = df.with_columns(pl.concat_list("primary_label", "secondary_labels").list.eval(pl.element().filter(own)).alias("secondary_labels"))
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
    problems += [_problem(df, row, reason) for row, reason in _repeated_rows(raw.with_columns(_filename_column(label_folders)))]
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


def _filename_column(label_folders: bool) -> pl.Expr:
    name = pl.col("filename").str.strip_chars()
    if not label_folders:
        return name
    return pl.when(name.str.contains("/")).then(name).otherwise(pl.format("{}/{}", "primary_label", name)).alias("filename")


def load_classes(layout: DatasetLayout) -> Classes:
    """The class list from the first source the dataset has: a taxonomy, the columns of
    `sample_submission.csv` after `row_id`, or the sorted primary labels (2021, 2022).

    Without a taxonomy, names come from the metadata (its first row per label), so BirdNET
    can match classes by scientific name in every year.
    """
    if layout.taxonomy:
        return Classes(load_taxonomy(layout.taxonomy), layout.class_source)
    if layout.sample_has_classes:
        header = read_csv_header(layout.sample_submission, ("row_id",))
        labels = pl.DataFrame({"primary_label": [c.strip() for c in header if c != "row_id"]})
        if labels.height == 0 or labels["primary_label"].is_duplicated().any():
            raise ValueError(f"{layout.sample_submission}: expected row_id then one distinct column per class, got {header[:6]}")
    else:
        labels = read_csv(layout.metadata, REQUIRED_METADATA).select(pl.col("primary_label").str.strip_chars())
        labels = labels.filter(pl.col("primary_label").is_not_null() & (pl.col("primary_label") != "")).unique().sort("primary_label")
    meta = pl.read_csv(layout.metadata, infer_schema=False)
    names = [c for c in ("scientific_name", "common_name") if c in meta.columns]
    if names:
        first = meta.select(pl.col("primary_label").str.strip_chars(), *(pl.col(c).str.strip_chars() for c in names))
        labels = labels.join(first.unique("primary_label", keep="first"), on="primary_label", how="left", maintain_order="left")
    return Classes(labels, layout.class_source)


def read_csv_header(path: Path, required: tuple[str, ...]) -> list[str]:
    """The column names of a CSV (strings, numeric-looking or not), checked like `read_csv`."""
    return read_csv(path, required, n_rows=0).columns


def load_dataset_metadata(layout: DatasetLayout) -> tuple[Classes, Metadata]:
    """The class list and the validated recordings of a dataset, as every entry point reads them."""
    classes = load_classes(layout)
    return classes, load_train_metadata(layout.metadata, classes.frame, label_folders=layout.label_folders)


def read_recordings(layout: DatasetLayout) -> pl.DataFrame:
    """The dataset's trainable recordings (see `read_metadata` for the rows left out)."""
    return read_metadata(layout).recordings


def read_metadata(layout: DatasetLayout) -> Metadata:
    """The dataset's metadata, validated against its class list; the quarantine says which
    rows are left out and why."""
    return load_dataset_metadata(layout)[1]
