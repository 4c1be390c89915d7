"""Careless producers at the event level (#13 items 1, 2, 8), against real `recal worker` processes, every
count exact:

- impressions dated 1-23 h ahead of wall time (0.1%): within `max_future_skew` they wait for their own
  windows, the clock does not follow them; beyond it they are dead-lettered `bad_timestamp:future`;
- a librdkafka producer (keyed by impression id, partitioned by crc32): re-keyed, exactly the events off
  their murmur2 partition, with the default check; accepted in place with `partitioner = "crc32"`;
- impressions listing a model 2 or 63 times: dead-lettered `duplicate_model`, their clicks `orphan_click`.
"""

from __future__ import annotations

import os
import random
import time
import zlib

import orjson
import pytest

from streams.pipeline.partitioners import partition_of
from streams.pipeline.topics import ids_covering_partitions
from tests.faults.exact import run_exact
from tests.support.kit import (
    PARTITIONS,
    PLACEMENTS,
    T0,
    Scenario,
    config_text,
    impression,
    new_ns,
)

SEED = int(os.environ.get("FAULT_SEED", "6"))


# -- impressions dated 1-23 h ahead of wall time (#13 item 1) ----------------------------------------------
N_FUTURE_PER_PARTITION = 2  # 4 of the 4,000 impressions: 0.1%


def future_messages(ns: str, rng: random.Random) -> list:
    """Impressions 1-23 h ahead of wall time (an ad server whose clock runs fast), each clicked 1 s later."""
    now_ms, out = int(time.time() * 1000), []
    for k in range(N_FUTURE_PER_PARTITION):
        for iid in ids_covering_partitions(f"{ns}-future-{k}", PARTITIONS):
            ts = now_ms + rng.randrange(3_600_000 + 60_000, 23 * 3_600_000)
            out.append((f"{ns}-impressions", iid, orjson.dumps(impression(iid, ts, "search"))))
            click = {"click_id": f"fc-{iid}", "impression_id": iid, "ts": ts + 1_000}
            out.append((f"{ns}-clicks", iid, orjson.dumps(click)))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("skew", ["1d", "30m"])
def test_impressions_dated_hours_ahead_leave_every_other_count_exact(stack, start_worker, record, skew):
    """The traffic is months behind wall time (a backlog being caught up): before, one impression 1-23 h
    ahead of wall time pulled the clock to wall time, closing every window and turning the rest late.
    Within `max_future_skew` (1d) they wait for their own windows; beyond it (30m) they and their
    clicks are dead-lettered `bad_timestamp:future`."""
    ns = new_ns()
    scenario = Scenario(ns, n=4_000, step_ms=10)
    future = future_messages(ns, random.Random(SEED))
    n_future = len(future) // 2
    accepted = skew == "1d"
    letters_expected = {} if accepted else {"bad_timestamp:future": len(future)}
    config = config_text(ns).replace('max_future_skew = "100000d"', f'max_future_skew = "{skew}"')
    name = f"future-dated: {n_future} of {scenario.n + n_future:,} impressions 1-23 h ahead (max_future_skew {skew})"
    options = {"waiting": n_future * accepted, "faults": n_future}
    stats = run_exact(start_worker(config), stack, scenario, future, letters_expected, record, name, **options)
    assert stats["join"].get("late_impression", 0) == 0
    assert stats["pending"] == PARTITIONS + n_future * accepted  # the ticks, and the futures waiting


# -- a librdkafka producer: keyed by impression id, partitioned by crc32 (#13 item 8) -----------------------
def crc32_partitioner(key: bytes, all_partitions: list[int], available: list[int]) -> int:
    return all_partitions[zlib.crc32(key) % len(all_partitions)]


def crc32_covering_namespace(n: int, step_ms: int) -> str:
    """A namespace whose closers and ticks (one id per murmur2 partition) also cover every crc32
    partition: accepted in place under `partitioner = "crc32"`, they still close every partition's windows."""
    end_ms = T0 + n * step_ms
    while True:
        ns = new_ns()
        prefixes = [f"{ns}-closer-{p}" for p in PLACEMENTS] + [f"{ns}-tick-{end_ms + 120_000}"]
        ids = [ids_covering_partitions(prefix, PARTITIONS) for prefix in prefixes]
        if all(len({zlib.crc32(i.encode()) % PARTITIONS for i in group}) == PARTITIONS for group in ids):
            return ns


@pytest.mark.slow
@pytest.mark.parametrize("partitioner", ["murmur2", "crc32"])
def test_a_crc32_partitioned_producer_joins_exactly(stack, start_worker, record, partitioner):
    """Every message on crc32(key) % n, as confluent-kafka puts it. With the default check (murmur2) the
    events on the other partition are re-keyed, exactly those; with `partitioner = "crc32"` none is."""
    n, step_ms = 500, 20  # 10 s of event time, sent about in real time
    ns = crc32_covering_namespace(n, step_ms)
    scenario = Scenario(ns, n=n, step_ms=step_ms)
    everything = scenario.messages + scenario.closers() + scenario.ticks()
    differ = sum(zlib.crc32(k.encode()) % PARTITIONS != partition_of(k.encode(), PARTITIONS) for _, k, _ in everything)
    rekeyed_expected = differ if partitioner == "murmur2" else 0
    config = config_text(ns).replace(
        'max_future_skew = "100000d"', f'max_future_skew = "100000d"\npartitioner = "{partitioner}"'
    )
    name = f"crc32-partitioned producer, worker partitioner {partitioner}: {differ:,} of {len(everything):,} events"
    # about real time (1 s of event time a second): a re-keyed event's detour stays well within the 10 s window
    options = {"faults": differ, "per_second": 1_000 // step_ms, "partitioner": crc32_partitioner}
    stats = run_exact(start_worker(config), stack, scenario, [], {}, record, name + " off murmur2", **options)
    assert stats["rekeyed"] == rekeyed_expected


# -- a model listed many times in one impression (#13 item 2) -----------------------------------------------
N_DUPLICATED = 40


@pytest.mark.slow
def test_impressions_listing_a_model_twice_are_dead_lettered_exactly(stack, start_worker, record):
    """Before, one impression with 64 ctr predictions and a click gave 64 positives (here 63 and a cvr
    one). Now the impression is dead-lettered `duplicate_model` (which score is the model's?) and its
    click, whose impression never comes, `orphan_click`; every other count is exact."""
    ns = new_ns()
    scenario = Scenario(ns, n=2_000, step_ms=10)
    bad = []
    for i in range(N_DUPLICATED):
        iid, ts = f"{ns}-dup-{i}", T0 + i * 400
        doc = impression(iid, ts, PLACEMENTS[i % 3], models=("ctr",) * (63 if i % 2 else 2) + ("cvr",))  # 64: the cap
        bad.append((f"{ns}-impressions", iid, orjson.dumps(doc)))
        bad.append((f"{ns}-clicks", iid, orjson.dumps({"click_id": f"d{i}", "impression_id": iid, "ts": ts + 500})))
    letters_expected = {"duplicate_model": N_DUPLICATED, "orphan_click": N_DUPLICATED}
    name = f"duplicate models: {N_DUPLICATED} impressions listing ctr 2 or 63 times, each clicked"
    run_exact(start_worker(config_text(ns)), stack, scenario, bad, letters_expected, record, name, faults=N_DUPLICATED)
