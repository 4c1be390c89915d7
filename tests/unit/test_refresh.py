"""The refresh off the event loop: builds from snapshots, in slices, oldest first, in a builder that holds its own
aggregator (the worker's is a process: `test_map_builder`; here the same work in a thread of the test)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from recalibrators import Calibrator
from recalibrators.serving.keys import MapField
from streams.pipeline.aggregator import Aggregator, encode_partial
from streams.pipeline.config import ModelConfig
from streams.pipeline.map_builder import build_in
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


class ThreadBuilder:
    """The builder process's work (`build_in` on an aggregator of its own), in a thread of this process."""

    restarts = 0

    def __init__(self) -> None:
        self.aggregator = Aggregator(lambda name: CFG)

    async def build(self, tick):
        return await asyncio.to_thread(build_in, self.aggregator, tick)


def refresher_of(agg: Aggregator, budget_s: float, **kwargs) -> tuple[Refresher, Aggregator]:
    """A refresher of `agg` and the aggregator its builder builds in."""
    builder = ThreadBuilder()
    return Refresher(agg, builder, budget_s=budget_s, **kwargs), builder.aggregator


def test_maps_are_built_from_snapshots_and_what_the_loop_reads_is_copied_back():
    agg = Aggregator(lambda name: CFG)
    ks = keys(6)
    for key in ks:
        agg.add(key, partial(key, 500))
    refresher, built_in = refresher_of(agg, budget_s=60.0)

    async def main():
        first = await refresher.refresh(T0)
        agg.add(ks[0], partial(ks[0], 600, seed=1, partition=1))
        return first + await refresher.refresh(T0 + 1000)

    maps = asyncio.run(main())
    assert len(maps) == 7 and not agg.dirty
    assert built_in.states == {}  # the builder's aggregator holds the build side only
    # The loop's aggregator holds what it reads of the build side: the published maps (warm starts, the Redis
    # check), as the builder published them.
    assert agg.published.keys() == built_in.published.keys() == set(ks)
    assert agg.published[ks[0]] is maps[-1] and agg.published[ks[0]].n == 1100
    assert agg.judged == {}  # the gate's baselines stay with the builder


def test_refusals_counters_and_republishing_cross_to_the_builder_and_back():
    agg = Aggregator(lambda name: CFG)
    (key,) = keys(1)
    agg.add(key, partial(key, 500))
    refresher, built_in = refresher_of(agg, budget_s=60.0)
    reason = "held for the test"
    real = built_in.build

    def refuse(key, now_ms=None, state=None):
        built_in.refused[key] = reason
        built_in.gate_refusals += 1
        return None

    async def main():
        assert len(await refresher.refresh(T0)) == 1
        built_in.build = refuse
        agg.add(key, partial(key, 600, seed=1))
        assert await refresher.refresh(T0 + 1000) == []
        assert agg.refused == {key: reason} and agg.gate_refusals == 1
        built_in.build = real
        assert refresher.republish_all() == 1  # Redis lost its maps
        assert agg.published == {} and list(agg.dirty) == [key]
        (republished,) = await refresher.refresh(T0 + 2000)
        return republished

    republished = asyncio.run(main())
    assert agg.refused == {} and agg.published == {key: republished}
    assert built_in.judged.keys() == {key}  # gated against nothing, then the new baseline


def test_a_partial_arriving_during_the_build_is_not_raced_and_not_lost():
    agg = Aggregator(lambda name: CFG)
    (key,) = keys(1)
    agg.add(key, partial(key, 500))
    refresher, built_in = refresher_of(agg, budget_s=60.0)
    started, go_on, real = threading.Event(), threading.Event(), built_in.build

    def build(key, now_ms=None, state=None):
        started.set()
        assert go_on.wait(10)
        return real(key, now_ms, state)

    built_in.build = build

    async def main():
        task = asyncio.ensure_future(refresher.refresh(T0))
        assert await asyncio.to_thread(started.wait, 10)
        agg.add(key, partial(key, 900, seed=1, partition=1))  # the partials consumer, while the builder builds
        go_on.set()
        (built,) = await task
        assert list(agg.dirty) == [key]  # changed again: the next tick builds the new partial
        (rebuilt,) = await refresher.refresh(T0 + 1000)
        return built, rebuilt

    built, rebuilt = asyncio.run(main())
    assert built.n == 500 and rebuilt.n == 1400


def test_slices_carry_the_rest_oldest_first_so_no_key_starves():
    agg = Aggregator(lambda name: CFG)
    ks = keys(8)
    for key in ks[:5]:
        agg.add(key, partial(key, 200))
    refresher, built_in = refresher_of(agg, budget_s=0.0, max_keys=3)  # deadline at once: one key per tick
    built, real = [], built_in.build

    def build(key, now_ms=None, state=None):  # counted here: the gate may hold a map back
        built.append(MapField.parse(key).segment_key)
        return real(key, now_ms, state)

    built_in.build = build

    async def main():
        for tick in range(8):
            await refresher.refresh(T0 + tick)
            agg.add(ks[4], partial(ks[4], 200, seed=tick))  # a hot key, changed every tick
            if tick < 3:
                agg.add(ks[5 + tick], partial(ks[5 + tick], 200))  # and newcomers

    asyncio.run(main())
    assert refresher.carried == 1 and list(agg.dirty) == [ks[4]]  # the last slice [s007, s004] left s004
    order = [MapField.parse(k).segment_key for k in ks]
    # The oldest first, every key once, although a hot key (s004) and newcomers kept arriving.
    assert built == order


def test_a_slice_that_fails_outside_a_key_is_carried_not_lost():
    agg = Aggregator(lambda name: CFG)
    for key in keys(3):
        agg.add(key, partial(key, 200))
    refresher, built_in = refresher_of(agg, budget_s=60.0)
    real, calls = built_in.shrinkage.prepare, []

    def prepare(keys, merge):
        calls.append(list(keys))
        if len(calls) == 1:
            raise RuntimeError("pooling failed")
        return real(keys, merge)

    built_in.shrinkage.prepare = prepare

    async def main():
        failed = await refresher.refresh(T0)
        assert failed == [] and agg.build_errors == 1 and len(agg.dirty) == 3
        return await refresher.refresh(T0 + 1000)

    maps = asyncio.run(main())
    assert sorted(MapField.of(m).segment_key for m in maps) == [MapField.parse(k).segment_key for k in keys(3)]


def test_a_slice_holds_what_two_budgets_build_at_the_measured_rate():
    agg = Aggregator(lambda name: CFG)
    for key in keys(40):
        agg.add(key, partial(key, 200))
    refresher, _ = refresher_of(agg, budget_s=0.5, max_keys=30)
    assert refresher.slice_keys() == 30  # nothing measured yet: the cap
    asyncio.run(refresher.refresh(T0))
    assert refresher.keys_per_s > 0
    refresher.keys_per_s = 100.0  # 100 keys/s x 0.5 s x 2 budgets
    assert refresher.slice_keys() == 30  # capped
    refresher.max_keys = 1_000
    assert refresher.slice_keys() == 100
    refresher.keys_per_s = 1.0
    assert refresher.slice_keys() == 50  # at least MIN_KEYS
