"""Progress lines for long loops (cache builds, predictions): a user watching the Dagster run's
log (or a terminal) sees how far a stage is, how fast it goes and when it will end."""

from __future__ import annotations

import time
from collections.abc import Callable


class Progress:
    """Calls `log("<label>: done/total units (pct), rate units/s, ETA ...")` every `every` items
    and at least every `interval_s` seconds while items keep coming, and once at the end."""

    def __init__(
        self, total: int, log: Callable[[str], None], label: str, unit: str = "files", every: int = 100, interval_s: float = 30.0
    ):
        self.total, self.log, self.label, self.unit = total, log, label, unit
        self.every, self.interval_s = max(every, 1), interval_s
        self.done = 0
        self.start = self.last = time.perf_counter()

    def update(self, n: int = 1, extra: str = "") -> None:
        self.done += n
        now = time.perf_counter()
        if self.done >= self.total or self.done % self.every < n or now - self.last >= self.interval_s:
            self.last = now
            self.log(self.line(now) + (f", {extra}" if extra else ""))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.perf_counter()) - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = "done" if self.done >= self.total else f"ETA {_duration(left)}"
        return f"{self.label}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), {rate:.2f} {self.unit}/s, {eta}"


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown"
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s" if m else f"{s}s"
