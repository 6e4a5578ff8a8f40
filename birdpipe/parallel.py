"""Process pools for per-file work (probing, caching): spawned workers, bounded in-flight tasks."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any


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
