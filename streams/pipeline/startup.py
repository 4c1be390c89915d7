"""The start-up phases of a worker process, as wall-clock marks: where the seconds between `recal worker`
starting and its first joined record go (imports, topic checks, clients, group join, restore, first fetch).

`/stats` shows them as seconds since the process started (`phases`); `bench/bench_startup.py` prints them.
A phase is marked once, the first time it is reached; later rebalances do not move it.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("recal.startup")

_marks: dict[str, float] = {}


def process_start() -> float:
    """Wall-clock time this process started, to 10 ms (Linux: its start in clock ticks since boot, from
    /proc; elsewhere: when this module was imported)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            start_ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - age
    except (OSError, ValueError, IndexError, AttributeError):
        return _IMPORTED


_IMPORTED = time.time()
_START = process_start()


def mark(phase: str) -> None:
    """Record that `phase` is reached now (only its first time) and log it."""
    if phase not in _marks:
        _marks[phase] = now = time.time()
        log.info("startup: %s at %.3f s", phase, now - _START)


def phases() -> dict[str, float]:
    """Seconds from the process start to each phase reached so far, in the order reached."""
    return {phase: round(t - _START, 3) for phase, t in _marks.items()}
