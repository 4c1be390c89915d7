"""The refresh off the event loop: builds in one other thread, from snapshots, in slices, oldest first."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from recalibrators import Calibrator
from recalibrators.serving.keys import MapField
from streams.pipeline.aggregator import Aggregator, encode_partial
from streams.pipeline.config import ModelConfig
from streams.pipeline.metrics import LoopMonitor
from streams.pipeline.partials import calibrator_config
from streams.pipeline.refresh import Refresher

T0 = 1_790_000_000_000
CFG = ModelConfig(segment_by=(("site",),), min_samples=1)


def partial(key: str, n: int, seed: int = 0, partition: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    s = rng.random(n)
    cal = Calibrator(calibrator_config(CFG))
    cal.learn_batch(s, (rng.random(n) < s).astype(np.int8), ts_ms=T0)
    field = MapField.parse(key)
    return encode_partial(partition, field.model, field.model_version, field.segment_key, cal)


def keys(n: int) -> list[str]:
    return [str(MapField("ctr", "v1", f"site=s{i:03d}")) for i in range(n)]


def test_maps_are_built_in_one_thread_that_is_not_the_loops():
    agg = Aggregator(lambda name: CFG)
    for key in keys(6):
        agg.add(key, partial(key, 500))
    threads, real = [], agg.build

    def build(key, now_ms=None, state=None):
        threads.append(threading.get_ident())
        return real(key, now_ms, state)

    agg.build = build
    refresher = Refresher(agg, budget_s=60.0)

    async def main():
        first = await refresher.refresh(T0)
        agg.add(keys(1)[0], partial(keys(1)[0], 600, seed=1))
        return first + await refresher.refresh(T0 + 1000), threading.get_ident()

    maps, loop_thread = asyncio.run(main())
    refresher.close()
    assert len(maps) == 7 and len(threads) == 7
    assert loop_thread not in threads and len(set(threads)) == 1


def test_a_partial_arriving_during_the_build_is_not_raced_and_not_lost():
    agg = Aggregator(lambda name: CFG)
    (key,) = keys(1)
    agg.add(key, partial(key, 500))
    started, go_on, real = threading.Event(), threading.Event(), agg.build

    def build(key, now_ms=None, state=None):
        started.set()
        assert go_on.wait(10)
        return real(key, now_ms, state)

    agg.build = build
    refresher = Refresher(agg, budget_s=60.0)

    async def main():
        task = asyncio.ensure_future(refresher.refresh(T0))
        assert await asyncio.to_thread(started.wait, 10)
        agg.add(key, partial(key, 900, seed=1, partition=1))  # the agent, while the thread builds
        go_on.set()
        (built,) = await task
        assert list(agg.dirty) == [key]  # changed again: the next tick builds the new partial
        (rebuilt,) = await refresher.refresh(T0 + 1000)
        return built, rebuilt

    built, rebuilt = asyncio.run(main())
    refresher.close()
    assert built.n == 500 and rebuilt.n == 1400


def test_slices_carry_the_rest_oldest_first_so_no_key_starves():
    agg = Aggregator(lambda name: CFG)
    ks = keys(8)
    for key in ks[:5]:
        agg.add(key, partial(key, 200))
    refresher = Refresher(agg, budget_s=0.0, max_keys=3)  # deadline at once: one key per tick
    built, real = [], agg.build

    def build(key, now_ms=None, state=None):  # counted here: the gate may hold a map back
        built.append(MapField.parse(key).segment_key)
        return real(key, now_ms, state)

    agg.build = build

    async def main():
        for tick in range(8):
            await refresher.refresh(T0 + tick)
            agg.add(ks[4], partial(ks[4], 200, seed=tick))  # a hot key, changed every tick
            if tick < 3:
                agg.add(ks[5 + tick], partial(ks[5 + tick], 200))  # and newcomers

    asyncio.run(main())
    refresher.close()
    assert refresher.carried == 1 and list(agg.dirty) == [ks[4]]  # the last slice [s007, s004] left s004
    order = [MapField.parse(k).segment_key for k in ks]
    # The oldest first, every key once, although a hot key (s004) and newcomers kept arriving.
    assert built == order


def test_the_loop_keeps_ticking_while_a_big_refresh_builds():
    agg = Aggregator(lambda name: CFG)
    for key in keys(300):
        agg.add(key, partial(key, 300))
    refresher = Refresher(agg, budget_s=60.0)
    monitor = LoopMonitor(interval=0.005)

    async def main():
        ticker = asyncio.ensure_future(monitor.run())
        await asyncio.sleep(0.05)
        monitor.max_s = 0.0
        started = time.perf_counter()
        maps = await refresher.refresh(T0)
        work = time.perf_counter() - started
        ticker.cancel()
        return maps, work

    maps, work = asyncio.run(main())
    refresher.close()
    assert len(maps) == 300
    # On the loop the stall would be the whole build (`work`); in the thread the loop waits at most a GIL
    # switch interval or a numpy call at a time. Generous: half the work.
    assert monitor.max_s < work / 2, (monitor.max_s, work)


def test_a_slice_that_fails_outside_a_key_is_carried_not_lost():
    agg = Aggregator(lambda name: CFG)
    for key in keys(3):
        agg.add(key, partial(key, 200))
    real, calls = agg.shrinkage.prepare, []

    def prepare(keys, merge):
        calls.append(list(keys))
        if len(calls) == 1:
            raise RuntimeError("pooling failed")
        return real(keys, merge)

    agg.shrinkage.prepare = prepare
    refresher = Refresher(agg, budget_s=60.0)

    async def main():
        failed = await refresher.refresh(T0)
        assert failed == [] and agg.build_errors == 1 and len(agg.dirty) == 3
        return await refresher.refresh(T0 + 1000)

    maps = asyncio.run(main())
    refresher.close()
    assert sorted(MapField.of(m).segment_key for m in maps) == [MapField.parse(k).segment_key for k in keys(3)]


def test_a_slice_holds_what_two_budgets_build_at_the_measured_rate():
    agg = Aggregator(lambda name: CFG)
    for key in keys(40):
        agg.add(key, partial(key, 200))
    refresher = Refresher(agg, budget_s=0.5, max_keys=30)
    assert refresher.slice_keys() == 30  # nothing measured yet: the cap
    asyncio.run(refresher.refresh(T0))
    assert refresher.keys_per_s > 0
    refresher.keys_per_s = 100.0  # 100 keys/s x 0.5 s x 2 budgets
    assert refresher.slice_keys() == 30  # capped
    refresher.max_keys = 1_000
    assert refresher.slice_keys() == 100
    refresher.keys_per_s = 1.0
    assert refresher.slice_keys() == 50  # at least MIN_KEYS
    refresher.close()
