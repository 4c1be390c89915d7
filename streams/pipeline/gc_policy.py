"""The garbage collector in a process with an event loop (the worker's, each join process's): young collections
only, so no collection holds the loop for long.

Every collection holds every thread for as long as it walks its generations, ~0.35 us an object on the 2-core
bench machine. A worker with 10,000 keys x 3 models holds ~300,000 long-lived tracked objects (the join's
calibrators and histograms, the aggregator's states, the published maps) and makes ~7,000 more a second that
live for a while (maps replaced, calibrators renewed); with the thresholds (50,000, 5, 20) a young collection
walked ~120,000 objects (30-40 ms), a generation-1 one ~340,000 (0.12-0.26 s), a full one the whole heap
(bench_refresh_worker; docs/pipeline.md). Here the young generation is collected every 10,000 net allocations
and generation 1 every 5 of those (~40,000 objects: 14 ms at most in the same bench); a full collection never
runs on its own.

What that costs: reference cycles among objects that survived two collections (lived for seconds) are never
freed while the process runs; what this project holds in cycles is young (the asyncio futures, exceptions and
tracebacks of one fetch); at stop each process makes one full collection (`collect_at_stop`) and logs how much
there was: 268 objects after a 5-minute bench_refresh_worker run.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("recal.gc")

YOUNG = 10_000  # net allocations of tracked objects between young collections
GENERATION_1 = 5  # young collections between generation-1 ones
NEVER = 1_000_000_000  # generation-1 collections between full ones: none while running


def collect_young_only() -> None:
    """At the start of the loop's work: what exists now (modules, configuration, clients) is frozen out of
    collection, and from now on only the young generations are collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, GENERATION_1, NEVER)


def collect_at_stop() -> int:
    """At stop, once the loop monitor and its stall log have stopped (a pause the process asked for is not a
    stall): one full collection of everything, frozen or not; logs and returns the objects it found unreachable
    (what running without full collections kept)."""
    gc.unfreeze()
    unreachable = gc.collect()
    log.info("full collection at stop: %d unreachable objects, kept while running", unreachable)
    return unreachable
