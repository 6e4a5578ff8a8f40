"""The audio manifest: what every recording of the metadata holds on disk, or why it cannot
be read. Probing decodes each file through (in parallel) because damaged frames and NaNs
only show when decoding."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import polars as pl

from birdpipe.audio import probe

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


def resolve_workers(workers: int) -> int:
    """0 means one process per CPU core this process may use."""
    return workers if workers > 0 else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def imap_unordered(fn: Callable[[Any], Any], items: Iterable[Any], workers: int) -> Iterator[Any]:
    """`fn` over `items` in a spawn process pool, results as they finish, at most 2 tasks
    per worker in flight (results do not pile up); in-process when `workers` is 1."""
    workers = resolve_workers(workers)
    if workers == 1:
        yield from map(fn, items)
        return
    items = iter(items)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = {pool.submit(fn, it) for it in _take(items, 2 * workers)}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            pending |= {pool.submit(fn, it) for it in _take(items, len(done))}
            for fut in done:
                yield fut.result()


def _take(items: Iterator[Any], n: int) -> list[Any]:
    return [x for _, x in zip(range(n), items)]


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
