"""Replay progress on stderr: records read / total, rate, ETA."""

from __future__ import annotations

import sys
import time


class Progress:
    """A progress line on stderr at most once per `every` seconds: records read / total, rate, ETA."""

    def __init__(self, total: int, stream=None, every: float = 1.0) -> None:
        self.total, self.stream, self.every = total, stream or sys.stderr, every
        self.started = self._last = time.monotonic()
        self.done = 0
        self.examples = 0

    def update(self, records: int, examples: int, force: bool = False) -> None:
        self.done += records
        self.examples += examples
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        print(
            f"replay: {self.done:,}/{self.total:,} records ({pct:.1f}%), {self.examples:,} examples, "
            f"{self.examples / elapsed:,.0f} examples/s, {rate:,.0f} records/s, ETA {eta:.0f}s",
            file=self.stream,
            flush=True,
        )
