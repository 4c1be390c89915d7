"""The refresh timer's map building, off the event loop and in bounded slices.

Each tick takes the oldest changed keys (at most `max_keys`) with a snapshot of their states on the loop,
has the builder (`streams.pipeline.map_builder`: a process of its own) build their maps (merge, gate,
metrics) until `budget_s` has passed, and carries the keys it did not reach to the next tick, in front of
the newer ones. The loop only pays for the snapshot, which grows with the keys that changed; one builder
means builds never overlap.
"""

from __future__ import annotations

import logging
import time

from recalibrators.calibration_map import CalibrationMap
from streams.pipeline.aggregator import Aggregator, Built, MapKey
from streams.pipeline.map_builder import BuilderLost, MapBuilder, Tick

# ~1.3 ms per key (two fits since #12's held-back gate): a slice of 5,000 is ~6.5 s of building, more than any
# sane interval's budget, while its snapshot (one dict copy per key) holds the loop for a few ms.
MAX_KEYS = 5_000
# A slice holds about this many budgets' worth of keys at the rate the last slices were built: the pass
# before the budgeted loop (shrinkage's merge of every key of the slice) grows with the slice, and a fixed
# 5,000 made a tick take 1.8 s at a 0.5 s budget in a loaded worker (bench_refresh_worker).
SLICE_BUDGETS = 2.0
MIN_KEYS = 50
BUDGET_SHARE = 0.5  # of the refresh interval: building time per tick

log = logging.getLogger("recal.refresh")


class Refresher:
    """`await refresher.refresh(now_ms)` -> the maps built this tick; `carried`: keys left for the next."""

    def __init__(self, aggregator: Aggregator, builder: MapBuilder, budget_s: float, max_keys: int = MAX_KEYS) -> None:
        self.aggregator = aggregator
        self.builder = builder
        self.budget_s = budget_s  # building time per tick: keep it below the interval
        self.max_keys = max_keys
        self.unpublished: list[MapKey] = []  # keys whose published maps the builder is to forget (republish_all)
        self.carried = 0  # keys the last tick left for the next
        self.last_seconds = 0.0  # the last tick's building time
        self.max_seconds = 0.0  # the longest tick's, since start
        self.keys_per_s = 0.0  # building rate of the last slices (0: not measured yet)

    def republish_all(self) -> int:
        """Redis lost its maps: every key this worker owns is rebuilt and published without a change bound.
        Returns the number of keys to rebuild."""
        self.unpublished += self.aggregator.republish_all()
        return len(self.aggregator.dirty)

    async def refresh(self, now_ms: int) -> list[CalibrationMap]:
        snapshot = self.aggregator.take_slice(self.slice_keys())
        if not snapshot:
            self.carried, self.last_seconds = 0, 0.0
            return []
        retired, self.aggregator.retired_keys = self.aggregator.retired_keys, []
        unpublished, self.unpublished = self.unpublished, []
        started = time.perf_counter()
        try:
            built = await self.builder.build(Tick(snapshot, now_ms, self.budget_s, retired, unpublished))
        except BuilderLost:  # its build side is gone: rebuild every key, as if Redis had lost the maps
            self.aggregator.build_errors += 1
            log.error("the map builder died building %d keys; rebuilding every key in a new one", len(snapshot))
            self.aggregator.republish_all()
            built = Built({}, list(snapshot), {}, {})
        except Exception:  # outside any one key's build (the pooling pass): retried next tick, never fatal
            self.aggregator.build_errors += 1
            log.exception("refresh slice of %d keys failed; carried to the next tick", len(snapshot))
            built = Built({}, list(snapshot), {}, {})
        self.aggregator.record(built)
        self.aggregator.carry(built.left)
        self.carried, self.last_seconds = len(built.left), time.perf_counter() - started
        self.max_seconds = max(self.max_seconds, self.last_seconds)
        done = len(snapshot) - len(built.left)
        if done and self.last_seconds > 0:
            rate = done / self.last_seconds
            self.keys_per_s = rate if not self.keys_per_s else 0.5 * self.keys_per_s + 0.5 * rate
        return list(built.maps.values())

    def slice_keys(self) -> int:
        """Keys to take this tick: what ~SLICE_BUDGETS budgets build at the measured rate, within
        [MIN_KEYS, max_keys] (max_keys until a rate is measured)."""
        if not self.keys_per_s:
            return self.max_keys
        return max(
            min(MIN_KEYS, self.max_keys), min(self.max_keys, int(self.keys_per_s * self.budget_s * SLICE_BUDGETS))
        )
