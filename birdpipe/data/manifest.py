"""The audio manifest: what every recording of the metadata holds on disk, or why it cannot
be read. The pipeline's probe decodes each file through (in parallel) because damaged frames
and NaNs only show when decoding; `birdpipe validate` reads headers only, for a first look
at a new dataset in seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from birdpipe.data.audio import AudioInfo, probe
from birdpipe.parallel import imap_unordered, inject_fault
from birdpipe.paths import inside

MANIFEST_SCHEMA = {
    "filename": pl.String,
    "path": pl.String,
    "exists": pl.Boolean,
    "readable": pl.Boolean,
    "reason": pl.String,
    "damaged": pl.Boolean,
    #: What the C decoder printed while reading the file ("Note: Illegal Audio-MPEG-Header ..."), " | "-joined.
    "decoder_notes": pl.String,
    "duration_s": pl.Float64,
    "sample_rate": pl.Int64,
    "channels": pl.Int64,
    "size_bytes": pl.Int64,
    "mtime": pl.Float64,
}


def _probe_row(args: tuple[str, str, bool]) -> dict[str, Any]:
    inject_fault(args[0])
    return _row(args, probe(Path(args[1]), decode=args[2]))


def _failed_row(args: tuple[str, str, bool], reason: str) -> dict[str, Any]:
    """The row of a file whose probe killed or hung its worker process."""
    return _row(args, AudioInfo(args[1], False, reason, 0.0, 0, 0, 0, False))


def _row(args: tuple[str, str, bool], info: AudioInfo) -> dict[str, Any]:
    filename, path, _ = args
    p = Path(path)
    stat = p.stat() if p.is_file() else None
    return {
        "filename": filename,
        "path": path,
        "exists": stat is not None,
        "readable": info.readable,
        "reason": info.reason,
        "damaged": info.damaged,
        "decoder_notes": " | ".join(info.notes) or None,
        "duration_s": info.duration_s if info.readable else None,
        "sample_rate": info.sample_rate or None,
        "channels": info.channels or None,
        "size_bytes": stat.st_size if stat else None,
        "mtime": stat.st_mtime if stat else None,
    }


def build_manifest(
    metadata: pl.DataFrame, audio_root: Path, workers: int = 0, timeout_s: float | None = None, decode: bool = True
) -> pl.DataFrame:
    """One row per metadata row (same order); a bad file gets readable=False and a reason,
    also one whose decoder kills its worker process or runs past `timeout_s`.
    `decode=False` reads headers only (damage inside the stream goes unseen)."""
    filenames = metadata["filename"].to_list()
    jobs, rows = [], {}
    for f in filenames:
        try:
            jobs.append((f, str(inside(Path(audio_root), f)), decode))
        except ValueError as exc:  # never opened: no stat, no probe
            rows[f] = {**dict.fromkeys(MANIFEST_SCHEMA), "filename": f, "exists": False, "readable": False, "reason": str(exc), "damaged": False}
    probed = imap_unordered(_probe_row, jobs, workers, on_failure=_failed_row, timeout_s=timeout_s)
    rows |= {r["filename"]: r for r in probed}
    return pl.DataFrame([rows[f] for f in filenames], schema=MANIFEST_SCHEMA)
