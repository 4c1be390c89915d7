"""The refresh timer under many keys: `.venv/bin/python bench/bench_refresh.py [--keys 10000] [--changed 1000]`.

Issue #15's scenario in process: an `Aggregator` (product defaults plus `segment_by = [["site"]]`, map
metrics on, as in the worker) holding partials of 2 partitions for `--keys` segment keys x 3 models,
refresh every 1 s; before every tick `--changed` random keys get new partials, fed on the event loop in
chunks of 100 as the Faust agent would. Two ways to run the timer, same aggregator state and changes:

- "on the loop" (before): `take_dirty` of every changed key inside the timer coroutine;
- "process, sliced" (after): `streams.pipeline.refresh.Refresher`, a snapshot on the loop, building in the
  builder process (`streams.pipeline.map_builder`) for at most half the interval, the rest carried to the
  next tick.

Printed per mode: refresh duration per tick (mean / max) against the 1 s interval, keys carried over, and
the longest event-loop stall measured by a concurrent ticker (`LoopMonitor`, 10 ms sleeps), the number the
worker exports as `recal_event_loop_lag_max_seconds`. The bound of issue #15 is 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recalibrators.calibrator import Calibrator
from recalibrators.serving.keys import MapField
from streams.pipeline.aggregator import Aggregator, encode_partial
from streams.pipeline.config import Config, ModelConfig
from streams.pipeline.map_builder import MapBuilder
from streams.pipeline.metrics import LoopMonitor
from streams.pipeline.partials import calibrator_config
from streams.pipeline.refresh import BUDGET_SHARE, Refresher

T0 = 1_790_000_000_000
INTERVAL_S = 1.0
MODELS = ("ctr", "cvr", "ectr")
CFG = ModelConfig(segment_by=(("site",),), min_samples=1)


def blobs(n: int, rng: np.random.Generator, t_ms: int) -> list[bytes]:
    """`n` distinct partial calibrators of 2,000 examples each."""
    out = []
    for _ in range(n):
        s = rng.random(2_000)
        y = (rng.random(2_000) < s * 0.8).astype(np.int8)
        cal = Calibrator(calibrator_config(CFG))
        cal.learn_batch(s, y, ts_ms=t_ms, holdout=np.arange(2_000) % 10 == 0)
        out.append(cal.to_bytes())
    return out


def records(keys: list[str], pool: list[bytes], rng: random.Random) -> list[tuple[str, bytes]]:
    out = []
    for key in keys:
        field = MapField.parse(key)
        for partition in (0, 1):
            blob = pool[rng.randrange(len(pool))]
            calibrator = Calibrator.from_bytes(blob)
            record = encode_partial(partition, field.model, field.model_version, field.segment_key, calibrator)
            out.append((key, record))
    return out


async def run(mode: str, n_keys: int, n_changed: int, ticks: int, budget: float) -> dict[str, float]:
    rng, pyrng = np.random.default_rng(0), random.Random(0)
    keys = [str(MapField(m, "v1", f"site=s{i:05d}")) for m in MODELS for i in range(n_keys)]
    agg = Aggregator(lambda name: CFG)
    pool = blobs(32, rng, T0)
    for key, record in records(keys, pool, pyrng):
        agg.add(key, record)
    agg.dirty.clear()  # the starting state is built and published: only the changes of each tick count
    changes = [records(pyrng.sample(keys, n_changed), pool, pyrng) for _ in range(ticks)]
    builder = MapBuilder(Config(defaults=CFG))
    await builder.start()
    refresher = Refresher(agg, builder, budget_s=INTERVAL_S * budget)
    monitor = LoopMonitor(interval=0.01)
    ticker = asyncio.ensure_future(monitor.run())
    durations, carried = [], []
    try:
        for tick in range(ticks):
            for start in range(0, len(changes[tick]), 100):  # the agent: partials arrive between ticks
                for key, record in changes[tick][start : start + 100]:
                    agg.add(key, record)
                await asyncio.sleep(0)
            await asyncio.sleep(0.05)
            if tick == 1:
                monitor.max_s = 0.0  # the first ticks warm up the ticker and the caches
            started = time.perf_counter()
            now_ms = T0 + tick * 1000
            if mode == "before":
                agg.take_dirty(now_ms)
            else:
                await refresher.refresh(now_ms)
            durations.append(time.perf_counter() - started)
            carried.append(len(agg.dirty))
            await asyncio.sleep(max(0.0, INTERVAL_S - durations[-1]))
    finally:
        ticker.cancel()
        builder.close()
    return {
        "mean": float(np.mean(durations[2:])),
        "max": max(durations[2:]),
        "carried": float(np.mean(carried[2:])),
        "lag": monitor.max_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=10_000, help="segment keys per model")
    parser.add_argument("--changed", type=int, default=1_000, help="keys changed per tick (all models)")
    parser.add_argument("--ticks", type=int, default=10)
    parser.add_argument("--budget", type=float, default=BUDGET_SHARE, help="building time per tick / interval")
    parser.add_argument("--modes", default="before,after", help="before (on the loop), after (process, sliced)")
    args = parser.parse_args()
    print(f"{args.keys:,} segment keys x {len(MODELS)} models, {args.changed:,} changed keys per tick")
    head = ("mode", "refresh mean s", "refresh max s", "interval s", "carried keys", "loop lag max s", "bound s")
    print("{:<16} {:>14} {:>13} {:>10} {:>12} {:>14} {:>7}".format(*head))
    for mode, label in (("before", "on the loop"), ("after", "process, sliced")):
        if mode not in args.modes.split(","):
            continue
        r = asyncio.run(run(mode, args.keys, args.changed, args.ticks, args.budget))
        row = (label, r["mean"], r["max"], INTERVAL_S, r["carried"], r["lag"], 0.1)
        print("{:<16} {:>14.3f} {:>13.3f} {:>10.1f} {:>12.0f} {:>14.3f} {:>7.1f}".format(*row))


if __name__ == "__main__":
    main()
