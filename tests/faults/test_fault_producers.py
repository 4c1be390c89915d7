"""Producer-side faults (#13): what careless producers and operators do, against real `recal worker`
processes, with exact counts. The event-level ones (future-dated impressions, a crc32 producer, a model
listed twice) are in test_fault_producer_events.py.

- 20,000 distinct segment values (a request id put in `placement`): the cap admits exactly
  `max_segments` keys per fallback level, the rest are dead-lettered `cardinality:segments`, every other
  count stays exact; the worker's event loop is never held long enough for a rebalance.
- A calibrator config change between two restarts (n_bins, half_life, method, prior_strength): the worker
  restarts, carries its state over, and the final counts are exact (before: a crash loop).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter

import orjson
import pytest

from streams.pipeline.topics import ids_covering_partitions
from tests.faults.exact import LoopLagSampler, finish, rebalances
from tests.support.kit import (
    PARTITIONS,
    PLACEMENTS,
    Scenario,
    config_text,
    consume_all_async,
    impression,
    labels_counted,
    map_counts,
    new_ns,
    positives_counted,
    produce,
    wait_for_counts,
)

N_DISTINCT = 20_000
# small, so the run is quick; the arithmetic is the same at the default 10,000 (`fault_suite.py` runs that)
MAX_SEGMENTS = int(os.environ.get("FAULT_MAX_SEGMENTS", "1000"))


def known_ticks(scenario: Scenario) -> list:
    """Scenario.ticks with a known placement: a new segment value would be refused once the cap is full."""
    ts = scenario.end_ms + 120_000
    return [
        (f"{scenario.ns}-impressions", iid, orjson.dumps(impression(iid, ts, placement="search")))
        for iid in ids_covering_partitions(f"{scenario.ns}-tick-{ts}", PARTITIONS)
    ]


@pytest.mark.slow
def test_distinct_segment_values_beyond_the_cap_are_dead_lettered_exactly(stack, start_worker, record):
    ns = new_ns()
    scenario = Scenario(ns, n=600, step_ms=10)
    flood = []
    for i in range(N_DISTINCT):  # after the scenario in event time, ctr only, never clicked
        iid, ts = f"{ns}-flood-{i}", scenario.end_ms + 1_000 + i
        doc = impression(iid, ts, placement=f"req-{i:05d}", models=("ctr",))
        flood.append((f"{ns}-impressions", iid, orjson.dumps(doc)))
    admitted = MAX_SEGMENTS - 3  # the scenario's three placements hold three of the slots
    refused = N_DISTINCT - admitted
    expected = {k: list(v) for k, v in scenario.expected.items()}
    expected[("ctr", "*")][0] += admitted  # admitted flood impressions are ctr negatives
    config = config_text(ns, worker={"checkpoint_interval": "3s", "stall_log": "100ms"})
    config = config.replace("min_samples = 1", f"min_samples = 1\nmax_segments = {MAX_SEGMENTS}")

    worker = start_worker(config)
    worker.wait_ready()
    produce(stack.broker_url, scenario.messages)
    worker.wait_for(lambda s: sum(s["events_in"].values()) >= len(scenario.messages), 60, "scenario read")
    with LoopLagSampler(worker) as lag:  # from the flood to the last map: joining, capping, map building
        produce(stack.broker_url, flood)
        sent = len(scenario.messages) + len(flood)
        worker.wait_for(lambda s: sum(s["events_in"].values()) >= sent, 120, "flood read", poll_s=0.5)
        finish(scenario, stack.broker_url, worker, known_ticks(scenario))
        counts = wait_for_counts(stack.redis_url, ns, expected, worker, timeout_s=240)
    stats = worker.stats()
    n_rebalances = rebalances(worker.log_path.read_text())
    letters = asyncio.run(consume_all_async(stack.broker_url, f"{ns}-deadletter", refused, timeout_s=60))
    by_reason = Counter(dict(r.headers)["recal-reason"].decode() for r in letters)
    record(
        scenario=f"cardinality: {N_DISTINCT:,} distinct segment values, cap {MAX_SEGMENTS:,}",
        faults=N_DISTINCT,
        events_sent=sent,
        labels_expected=labels_counted(expected),
        labels_counted=labels_counted(counts),
        positives_expected=positives_counted(expected),
        positives_counted=positives_counted(counts),
        dead_letters=dict(by_reason),
        dead_letters_expected={"cardinality:segments": refused},
        max_rss_mb=round(worker.max_rss_mb),
        detail={
            "loop_lag_max_ms (flood to last map)": round(lag.max_ms, 1),
            "loop_lag_max_ms (since start)": stats.get("loop_lag_max_ms"),
            "rebalances": n_rebalances,
            "cardinality": stats.get("cardinality"),
        },
    )
    assert worker.alive()
    assert n_rebalances == 0
    assert by_reason == {"cardinality:segments": refused}
    assert stats["dead_letters"] == {"cardinality:segments": refused}
    assert stats["cardinality"]["ctr"] == MAX_SEGMENTS
    assert counts == expected
    admitted_maps = map_counts(stack.redis_url, ns, [("ctr", f"placement=req-{i:05d}") for i in range(N_DISTINCT)])
    assert sum(1 for c in admitted_maps.values() if c) == admitted


CHANGED = {"n_bins": "128", "half_life": '"50000d"', "method": '"platt"', "prior_strength": "5.0"}


@pytest.mark.slow
@pytest.mark.parametrize("kill", [False, True], ids=["stop", "kill"])
def test_a_calibrator_config_change_between_restarts_keeps_counts_exact(stack, start_worker, record, kill):
    ns = new_ns()
    scenario = Scenario(ns, n=1_200, step_ms=50)  # 60 s of event time: the first half's early windows close
    half = len(scenario.messages) // 2
    before = config_text(ns)
    changed = "\n".join(f"{k} = {v}" for k, v in CHANGED.items())
    after = before.replace('half_life = "100000d"\n', "").replace("min_samples = 1", f"min_samples = 1\n{changed}")

    worker = start_worker(before)
    worker.wait_ready()
    produce(stack.broker_url, scenario.messages[:half])
    worker.wait_for(lambda s: sum(s["events_in"].values()) >= half, 60, "first half read")
    worker.wait_for(lambda s: s["maps_published"] > 0, 60, "maps published before the change")
    base = worker.stats()["snapshots"]
    worker.wait_for(lambda s: s["snapshots"] >= base + PARTITIONS, 30, "a snapshot holding those labels")
    worker.kill() if kill else worker.stop()

    # High scores land in bins the old 96-bin layout does not have (logit > 1): before, learning them into
    # a restored calibrator raised inside the join and the worker crash-looped.
    high = []
    for i in range(30):
        iid, placement = f"{ns}-high-{i}", PLACEMENTS[i % 3]
        doc = impression(iid, scenario.end_ms + i * 10, placement, models=("ctr",))
        doc["predictions"][0]["score"] = 0.95
        high.append((f"{ns}-impressions", iid, orjson.dumps(doc)))
        scenario._count("ctr", placement, 1, False)

    worker = start_worker(after, log_name="worker-after.log")
    worker.wait_ready()
    produce(stack.broker_url, scenario.messages[half:] + high)
    worker.wait_for(lambda s: sum(s["events_in"].values()) > 0, 60, "second half flowing")
    scenario.finish(stack.broker_url, worker)
    counts = wait_for_counts(stack.redis_url, ns, scenario.expected, worker, timeout_s=120)
    log_text = worker.log_path.read_text()
    record(
        scenario=f"config change between restarts ({'kill -9' if kill else 'stop'}): {', '.join(CHANGED)}",
        faults=1,
        events_sent=len(scenario.messages) + len(high),
        labels_expected=scenario.labels_expected,
        labels_counted=labels_counted(counts),
        positives_expected=positives_counted(scenario.expected),
        positives_counted=positives_counted(counts),
        max_rss_mb=round(worker.max_rss_mb),
    )
    assert worker.alive(), f"the worker crashed, see {worker.log_path}"
    assert counts == {k: list(v) for k, v in scenario.expected.items()}
    assert "calibrator settings changed since the snapshot" in log_text and "n_bins 96 -> 128" in log_text
    assert "Traceback" not in log_text
