"""Process pools for per-file decoding work (probing, caching) that survive a dying worker.

`imap_unordered(fn, items, workers, on_failure=..., timeout_s=...)` runs `fn` over `items` in
spawned worker processes, one item per worker at a time, and yields results as they finish.
A decoder library can kill its process (a segfault in libsndfile / libvorbis / mpg123, the
OOM killer's SIGKILL) or hang; that costs the one item, never the run:

- a worker that dies is replaced and the pool goes on; its item is retried at the end, alone
  in a fresh process (the neighbours' memory may have been the cause); if it kills that
  process too, `on_failure(item, "decoder process died: signal 11 (SIGSEGV)")` (or `exit
  code N`) is yielded in its place;
- a worker still busy with one item after `timeout_s` is killed and replaced, and
  `on_failure(item, "decoder timed out after N s")` is yielded (no retry: it would hang again);
- every other result is yielded as usual, so a caller that writes as it goes keeps all it
  has written, and turns the failure into its own quarantine record.

An exception raised by `fn` is not a crash: it is raised to the caller, as from `map`.
Workers die with their parent (Linux `PR_SET_PDEATHSIG`; they also exit when their pipe
closes), so a killed run leaves no orphans; they ignore SIGINT (the parent stops them).

`workers=1` runs `fn` in this process, without a pool: simplest to debug, profile or
monkeypatch, but not crash-safe (a segfault ends the run) and without the timeout. Every
other value, including 0 ("one per core") on a one-core machine, uses worker processes.

Test hook: `BIRDPIPE_FAULTS="a.ogg=segv,b.ogg=kill,c.ogg=hang"` makes `inject_fault(key)`,
which worker functions call with their file's name, crash, kill or hang a pool worker on
those files. It does nothing when the variable is unset, and never in the parent process.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any

FAULTS_ENV = "BIRDPIPE_FAULTS"
#: Seconds a stopping worker gets to exit before it is killed.
_STOP_GRACE_S = 5.0
#: Seconds a new worker may take to start up, on top of an item's timeout.
_START_S = 120.0
_IN_WORKER = False


def resolve_workers(workers: int) -> int:
    """0 means one process per CPU core this process may use."""
    return workers if workers > 0 else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def imap_unordered(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    workers: int,
    *,
    on_failure: Callable[[Any, str], Any],
    timeout_s: float | None = None,
) -> Iterator[Any]:
    """`fn(item)` for every item, in `workers` spawned processes (0: one per core; 1: in this
    process), results as they finish; for an item whose process died or hung,
    `on_failure(item, reason)` instead (see the module docstring)."""
    if workers == 1:
        yield from map(fn, items)
        return
    died: list[Any] = []
    yield from _run(fn, iter(items), resolve_workers(workers), on_failure, timeout_s, died)
    for item in died:  # alone, each in a fresh process
        yield from _run(fn, iter([item]), 1, on_failure, timeout_s, None)


def died_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        return f"decoder process died: signal {-exitcode} ({name})"
    return f"decoder process died: exit code {exitcode}"


def timeout_reason(timeout_s: float) -> str:
    return f"decoder timed out after {timeout_s:g} s"


class _RemoteError(Exception):
    """The worker's traceback, chained to the exception raised again in the parent."""

    def __init__(self, trace: str):
        super().__init__(f"in the worker process:\n{trace}")


# --- the pool --------------------------------------------------------------------------------

_NOTHING = object()
#: A worker's first message: it started (a death before it is a setup error, not an item's).
_READY = "ready"


class _Worker:
    """One spawned process serving items over a pipe, one at a time."""

    def __init__(self, fn: Callable[[Any], Any]):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(fn, child, os.getpid()), daemon=True, name="birdpipe-worker")
        self.process.start()
        child.close()
        self.ready = False
        self.item: Any = _NOTHING
        self.deadline = math.inf

    @property
    def busy(self) -> bool:
        return self.item is not _NOTHING

    def start(self, item: Any, timeout_s: float | None) -> bool:
        """Hand `item` over; False if the (idle) worker is gone. The clock starts once the
        worker has started up (a loaded machine may take long to spawn a process)."""
        try:
            self.conn.send(item)
        except OSError:
            return False
        self.item = item
        self.deadline = time.monotonic() + timeout_s + (0 if self.ready else _START_S) if timeout_s else math.inf
        return True

    def collect(self, timeout_s: float | None) -> tuple[bool, Any] | None:
        """After the pipe or the process became ready: (True, result), (False, why it died),
        or None while still working."""
        try:
            msg = self.conn.recv()
            if isinstance(msg, str) and msg == _READY:
                self.ready = True
                if timeout_s:
                    self.deadline = time.monotonic() + timeout_s
                if not self.conn.poll():
                    return None
                msg = self.conn.recv()
        except (EOFError, OSError):
            self.process.join()
            reason = died_reason(self.process.exitcode)
            if not self.ready:
                raise RuntimeError(f"a worker process failed to start ({reason}); see its error above") from None
            return False, reason
        self.item = _NOTHING
        ok, payload = msg
        if not ok:
            exc, trace = payload
            raise exc from _RemoteError(trace)
        return True, payload

    def stop(self, kill: bool = False) -> None:
        _stop_all([self], kill)


def _run(
    fn: Callable[[Any], Any],
    items: Iterator[Any],
    n: int,
    on_failure: Callable[[Any, str], Any],
    timeout_s: float | None,
    died: list[Any] | None,
) -> Iterator[Any]:
    """One pass of up to `n` workers over `items`. A death appends the item to `died` (to
    retry), or, when `died` is None (the retry pass), yields its failure."""
    run = _Pass(fn, items, n, timeout_s)
    try:
        run.dispatch()
        while run.busy():
            out = []
            for item, kind, value in run.step():
                if kind == "ok":
                    out.append(value)
                elif kind == "died" and died is not None:
                    died.append(item)
                else:
                    out.append(on_failure(item, value))
            # Idle workers get their next item before the caller spends time on these results.
            run.dispatch()
            yield from out
    finally:
        _stop_all(run.pool)


def _stop_all(workers: list[_Worker], kill: bool = False) -> None:
    """Ask idle workers to exit (all at once), kill busy or slow ones, and reap them."""
    for w in workers:
        if not (kill or w.busy):
            try:
                w.conn.send(None)
            except OSError:
                pass
    deadline = time.monotonic() + _STOP_GRACE_S
    for w in workers:
        if not (kill or w.busy):
            w.process.join(max(0.0, deadline - time.monotonic()))
        if w.process.is_alive():
            w.process.kill()
        w.process.join()
        w.conn.close()


class _Pass:
    def __init__(self, fn: Callable[[Any], Any], items: Iterator[Any], n: int, timeout_s: float | None):
        self.fn, self.items, self.n, self.timeout_s = fn, items, n, timeout_s
        self.pool: list[_Worker] = []
        #: Items handed to a worker that turned out to be gone while idle (not their fault).
        self.again: list[Any] = []

    def busy(self) -> bool:
        return any(w.busy for w in self.pool)

    def dispatch(self) -> None:
        """Give every idle worker an item, starting workers (up to `n`) while items remain."""
        while True:
            idle = next((w for w in self.pool if not w.busy), None)
            if idle is None and len(self.pool) >= self.n:
                return
            item = self.again.pop() if self.again else next(self.items, _NOTHING)
            if item is _NOTHING:
                return
            if idle is None:
                idle = _Worker(self.fn)
                self.pool.append(idle)
            if not idle.start(item, self.timeout_s):
                if not idle.ready:
                    idle.collect(self.timeout_s)  # raises: it died while starting up
                self._drop(idle)
                self.again.append(item)

    def step(self) -> list[tuple[Any, str, Any]]:
        """Wait for results, deaths or a deadline: (item, "ok", result), or (item, "died" or
        "timeout", reason)."""
        busy = [w for w in self.pool if w.busy]
        left = min(w.deadline for w in busy) - time.monotonic()
        ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], None if left == math.inf else max(left, 0.0)))
        done = []
        for w in busy:
            item = w.item
            if w.conn in ready or w.process.sentinel in ready:
                outcome = w.collect(self.timeout_s)
                if outcome is not None:
                    ok, value = outcome
                    if not ok:
                        self._drop(w)
                    done.append((item, "ok" if ok else "died", value))
            elif time.monotonic() >= w.deadline:
                self._drop(w)
                done.append((item, "timeout", timeout_reason(self.timeout_s or 0)))
        return done

    def _drop(self, worker: _Worker) -> None:
        """Kill a dead or hung worker; `dispatch` starts a fresh one when there is work."""
        worker.stop(kill=True)
        self.pool.remove(worker)


# --- in the worker ---------------------------------------------------------------------------


def _serve(fn: Callable[[Any], Any], conn: Connection, parent_pid: int) -> None:
    global _IN_WORKER
    _IN_WORKER = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    _keep_freed_memory()
    conn.send(_READY)
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if item is None:
            return
        try:
            reply = (True, fn(item))
        except Exception as exc:  # noqa: BLE001 - raised again in the parent
            reply = (False, (exc, traceback.format_exc()))
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return
        except Exception as exc:  # noqa: BLE001 - an unpicklable result or exception
            error = RuntimeError(f"{fn.__name__}: could not send the result back: {exc!r}")
            conn.send((False, (error, traceback.format_exc())))


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (even by SIGKILL). Strictly, when
    the parent's thread that started it ends: the pool lives inside one call, in that thread."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # it died before the request took effect
        os._exit(1)


#: glibc `mallopt` parameters and the values workers use: up to 64 MB of freed memory stays
#: with the process, and blocks below 32 MB come from its heap rather than fresh mappings.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_FREE_BYTES, _MMAP_ABOVE_BYTES = 64 << 20, 32 << 20


def _keep_freed_memory() -> None:
    """Reuse freed memory instead of handing it back to the kernel. With glibc's defaults, the
    arrays of a few MB that decoding and transforms allocate per block are mapped, unmapped
    and faulted in again page by page: on the mel cache that was 7x the page faults and a
    tenth of the workers' CPU time spent in the kernel. A no-op on another libc."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_TRIM_THRESHOLD, _KEEP_FREE_BYTES)
        mallopt(_M_MMAP_THRESHOLD, _MMAP_ABOVE_BYTES)


def inject_fault(key: str) -> None:
    """Test hook: crash, kill or hang this pool worker if $BIRDPIPE_FAULTS names `key`."""
    spec = os.environ.get(FAULTS_ENV)
    if not spec or not _IN_WORKER:
        return
    faults = dict(pair.rsplit("=", 1) for pair in spec.split(",") if "=" in pair)
    kind = faults.get(key)
    if kind == "segv":
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
        os.kill(os.getpid(), signal.SIGSEGV)
    elif kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "hang":
        while True:
            time.sleep(3600)
    elif kind is not None:
        raise ValueError(f"${FAULTS_ENV}: unknown fault {kind!r} for {key!r}; known: segv, kill, hang")
