"""The refresh's map building, in a process of its own.

Merging, fitting, gating and scoring one key's map takes ~1.3 ms of Python (two fits: the gate's, without the
held-back examples, and the served one, with them), and a tick builds hundreds. In a thread of the worker's
process that work competed with the event loop for the GIL: each time the loop gave it up (a socket call, the
selector) it could wait a switch interval (5 ms) to get it back, and loop steps with many such calls stretched
past 100 ms (`docs/pipeline.md`, "Flat under many keys"). In its own process the builder has its own GIL; the
loop only hands it each tick's snapshot (pickled by the executor's feeder thread) and takes the maps back.

The builder process holds an `Aggregator` that only builds: it owns the build side (what the gate published
and judged, its refusals, the shrinkage fits, drift detectors, map metrics). The worker's aggregator keeps the
rest (partials, changed keys, versions, warm-start priors) and copies what it reads of the build side from each
slice's `Built` (`Aggregator.record`). If the process dies, a new one starts, knowing nothing: the worker then
rebuilds every key it owns (`Refresher`), as after Redis lost its maps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import multiprocessing
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from streams.pipeline import gc_policy, logsafe
from streams.pipeline.aggregator import Aggregator, Built, MapKey
from streams.pipeline.config import Config
from streams.pipeline.map_state import MapState

log = logging.getLogger("recal.refresh")


@dataclasses.dataclass
class Tick:
    """What one refresh tick asks of the builder: build `snapshot`'s keys for at most `budget_s`
    (`Aggregator.build_slice`), after pruning the `retired` keys' shrinkage state and forgetting what was
    published for `unpublished`."""

    snapshot: dict[MapKey, MapState]
    now_ms: int
    budget_s: float
    retired: list[MapKey] = dataclasses.field(default_factory=list)
    unpublished: list[MapKey] = dataclasses.field(default_factory=list)


class BuilderLost(RuntimeError):
    """The builder process died during a build; a new one has been started, with no build-side state."""


class MapBuilder:
    """`await builder.build(tick)`: the tick's build, in the builder process."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.restarts = 0  # builder processes started after the first one died
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")  # never fork a running event loop
        return ProcessPoolExecutor(1, mp_context=context, initializer=_start, initargs=(self.config,))

    async def start(self) -> None:
        """Start the process now (its imports take a second), not in the first tick."""
        await asyncio.get_running_loop().run_in_executor(self._pool, _ready)

    async def build(self, tick: Tick) -> Built:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, _build, tick)
        except BrokenProcessPool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool, self.restarts = self._new_pool(), self.restarts + 1
            raise BuilderLost("the map builder process died; a new one was started") from None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# In the builder process.
_aggregator: Aggregator | None = None
# Its full garbage collections are made at the start of a tick, inside the tick's budget, at most this often;
# automatic ones are off: at 30,000 keys the build side is ~500,000 objects, a collection of them ~0.3 s, which
# came on top of a tick's budget and made ticks overrun the interval.
FULL_GC_EVERY_S = 30.0
_next_full_gc = 0.0


def _start(config: Config) -> None:
    global _aggregator
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the worker stops us
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [map-builder] [%(levelname)s] %(message)s")
    logsafe.install()
    gc.set_threshold(50_000, 20, gc_policy.NEVER)  # no loop to hold: fewer, longer young collections; full: `_build`
    _aggregator = Aggregator(config.model)


def _ready() -> None:
    pass


def _build(tick: Tick) -> Built:
    global _next_full_gc
    assert _aggregator is not None
    started = time.perf_counter()
    if started >= _next_full_gc:
        gc.collect()
        _next_full_gc = time.perf_counter() + FULL_GC_EVERY_S
    return build_in(_aggregator, dataclasses.replace(tick, budget_s=tick.budget_s - (time.perf_counter() - started)))


def build_in(aggregator: Aggregator, tick: Tick) -> Built:
    """`tick` built in `aggregator`, the builder's (what the builder process runs; tests run it in theirs)."""
    deadline = time.perf_counter() + tick.budget_s
    aggregator.unpublish(tick.unpublished)
    aggregator.retired_keys.extend(tick.retired)
    built = aggregator.build_slice(tick.snapshot, tick.now_ms, deadline)
    aggregator.carried = set(built.left)  # built first next time (`build_slice`'s order)
    return built
