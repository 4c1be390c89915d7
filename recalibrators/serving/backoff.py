"""Capped exponential backoff with jitter, for the reader's and the publisher's Redis reconnects."""

from __future__ import annotations

import random


class Backoff:
    """Capped exponential backoff with jitter: delay k is uniform in [d/2, d], d = min(cap, base * 2**k)."""

    def __init__(self, base: float = 0.05, cap: float = 5.0) -> None:
        self.base, self.cap = base, cap
        self.failures = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * 2 ** min(self.failures, 32))
        self.failures += 1
        return delay * (0.5 + random.random() / 2)  # jitter: clients that failed together spread out

    def reset(self) -> None:
        self.failures = 0
