"""The audio manifest: what every recording of the metadata holds on disk, or why it cannot
be read. Probing decodes each file through (in parallel) because damaged frames and NaNs
only show when decoding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from birdpipe.data.audio import probe
from birdpipe.parallel import imap_unordered

MANIFEST_SCHEMA = {
    "filename": pl.String,
    "path": pl.String,
    "exists": pl.Boolean,
    "readable": pl.Boolean,
    "reason": pl.String,
    "damaged": pl.Boolean,
    "duration_s": pl.Float64,
    "sample_rate": pl.Int64,
    "channels": pl.Int64,
    "size_bytes": pl.Int64,
    "mtime": pl.Float64,
}


def _probe_row(args: tuple[str, str]) -> dict[str, Any]:
    filename, path = args
    p = Path(path)
    stat = p.stat() if p.is_file() else None
    info = probe(p)
    return {
        "filename": filename,
        "path": path,
        "exists": stat is not None,
        "readable": info.readable,
        "reason": info.reason,
        "damaged": info.damaged,
        "duration_s": info.duration_s if info.readable else None,
        "sample_rate": info.sample_rate or None,
        "channels": info.channels or None,
        "size_bytes": stat.st_size if stat else None,
        "mtime": stat.st_mtime if stat else None,
    }


def build_manifest(metadata: pl.DataFrame, audio_root: Path, workers: int = 0) -> pl.DataFrame:
    """One row per metadata row (same order); a bad file gets readable=False and a reason."""
    filenames = metadata["filename"].to_list()
    jobs = [(f, str(Path(audio_root) / f)) for f in filenames]
    rows = {r["filename"]: r for r in imap_unordered(_probe_row, jobs, workers)}
    return pl.DataFrame([rows[f] for f in filenames], schema=MANIFEST_SCHEMA)
