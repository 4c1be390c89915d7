"""`JoinClock`: a partition's event time, robust to impressions dated in the future (#13 item 1).

Without a wall clock (tests, replays of history) the clock is the newest impression time, never
moving back. With one (the worker), an impression ahead of wall time plus `skew_ms` moves it only as
far as the 99th percentile of the last 4,096 impression times, and an impression not ahead of it moves
it as before: one impression an hour ahead (an ad server with a fast clock) no longer closes every
window at once, neither in real time nor while the worker catches up on a backlog (the outlier does not
pull the clock to wall time), while a stream that runs ahead of wall time as a whole (a simulation at
60x) still moves it, and so does an impression that is not ahead of wall time (a tool's tick).

>>> clock = JoinClock(skew_ms=1_000)
>>> clock.advance(np.arange(1_000, 2_000), now_ms=0)  # the stream is ahead of wall time
1990
>>> clock.advance(np.array([10**9]), now_ms=0)  # one outlier among the last 4,096: not followed
1990
>>> backlog = JoinClock(skew_ms=1_000)
>>> backlog.advance(np.append(np.arange(4_000), 10**9), now_ms=60_000)  # nor pulled to wall time in a backlog
3999
>>> clock.advance(np.array([10**9]))  # without a wall clock: the newest impression
1000000000
"""

from __future__ import annotations

import math

import numpy as np

WINDOW = 4_096
QUANTILE = 0.99


class JoinClock:
    def __init__(self, skew_ms: int = 1_000) -> None:
        self.skew_ms = skew_ms
        self.value = 0
        self.recent = np.zeros(0, np.int64)

    def advance(self, ts: np.ndarray, now_ms: int | None = None) -> int:
        """Move the clock with a batch's impression times (`now_ms`: wall time); return it."""
        ts = np.asarray(ts, np.int64)
        self.recent = np.concatenate([self.recent, ts])[-WINDOW:]
        candidate = int(ts.max())
        if now_ms is not None and candidate > now_ms + self.skew_ms:
            bound = now_ms + self.skew_ms
            k = math.ceil(QUANTILE * (len(self.recent) - 1))
            quantile = min(candidate, int(np.partition(self.recent, k)[k]))
            in_bound = ts[ts <= bound]
            candidate = max(int(in_bound.max()) if in_bound.size else self.value, quantile)
        self.value = max(self.value, candidate)
        return self.value
