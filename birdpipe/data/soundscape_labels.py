"""Per-window labels of labelled soundscapes, in one shape whatever file they come from.

2021's `train_soundscape_labels.csv` names windows by audio_id, site and end second, while its
files are `<audio_id>_<site>_<date>.ogg`; the demo's `test_soundscape_labels.csv` names them by
file stem. Both become (soundscape_id = file stem, end_seconds, birds), the keys predictions use.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from birdpipe.data.metadata import read_csv, read_csv_header
from birdpipe.paths import list_audio

LABEL_COLUMNS = ("soundscape_id", "end_seconds", "birds")
#: 2021's columns: the file is found by `<audio_id>_<site>` among the folder's file stems.
SITE_COLUMNS = ("audio_id", "site", "seconds", "birds")


def read_soundscape_labels(labels_csv: Path, soundscape_dir: Path) -> pl.DataFrame:
    """soundscape_id, end_seconds, birds (space-separated, `nocall` for none), one row per
    labelled window; a window whose soundscape file is not in `soundscape_dir` fails, naming it."""
    header = read_csv_header(labels_csv, ())
    by_site = all(c in header for c in SITE_COLUMNS)
    df = read_csv(labels_csv, SITE_COLUMNS if by_site else LABEL_COLUMNS)
    stems = [p.stem for p in list_audio(soundscape_dir)]
    if by_site:
        files = pl.DataFrame({"soundscape_id": stems}).with_columns(
            pl.col("soundscape_id").str.extract(r"^([^_]+_[^_]+)", 1).alias("key")
        )
        df = df.with_columns(pl.format("{}_{}", pl.col("audio_id").str.strip_chars(), pl.col("site").str.strip_chars()).alias("key"))
        df = df.join(files, on="key", how="left", maintain_order="left").rename({"seconds": "end_seconds"})
    missing = df.filter(pl.col("soundscape_id").is_null() | ~pl.col("soundscape_id").is_in(stems))
    if missing.height:
        names = missing.select(pl.coalesce(*(c for c in ("key", "soundscape_id") if c in missing.columns))).to_series().unique().to_list()
        raise ValueError(f"{labels_csv}: {missing.height} labelled window(s) of soundscapes not in {soundscape_dir}: {sorted(map(str, names))[:5]}")
    return df.select(
        "soundscape_id",
        pl.col("end_seconds").cast(pl.Float64).cast(pl.Int64),
        pl.col("birds").str.strip_chars().replace("", None).fill_null("nocall"),
    )
