"""Issue #6.1: `kill -9` a worker at seeded random points while traffic streams; after restart and drain,
every calibrator's counts equal those of an uninterrupted run (zero labels lost, zero counted twice)."""

from __future__ import annotations

import os
import random
import time

import pytest

from tests.support.kit import (
    PARTITIONS,
    PacedProducer,
    Scenario,
    config_text,
    index_fields,
    labels_counted,
    new_ns,
    wait_for_counts,
)

SEED = int(os.environ.get("FAULT_SEED", "6"))
# Where each kill lands. "after_checkpoint": right after the snapshot counter moved; "mid_batch": while a
# backlog is being consumed (the traffic produced while the worker was down); "mid_publish": right after
# a refresh published maps (partials and the next refresh in flight); "between": a seeded random delay after readiness.
# A restart costs ~15 s (two consumer-group joins), so five kills are what fits the suite's budget.
KILL_MODES = ("after_checkpoint", "mid_batch", "mid_publish", "between", "after_checkpoint")


@pytest.mark.slow
def test_sigkill_at_random_points_loses_and_duplicates_nothing(stack, start_worker, record):
    rng = random.Random(SEED)
    ns = new_ns()
    scenario = Scenario(ns, n=9_000, step_ms=10)
    config = config_text(ns)
    traffic = PacedProducer(stack.broker_url, scenario.messages, rate=len(scenario.messages) / 80)
    kills = []
    worker = start_worker(config)
    worker.wait_ready()
    traffic.start()
    for mode in KILL_MODES:
        if mode == "after_checkpoint":
            base = worker.wait_for(lambda s: s["snapshots"] >= PARTITIONS, 30, "a first checkpoint")["snapshots"]
            worker.wait_for(lambda s, b=base: s["snapshots"] > b, 30, "the next checkpoint", poll_s=0.05)
        elif mode == "mid_batch":
            worker.wait_for(lambda s: sum(s["events_in"].values()) > 0, 30, "events flowing", poll_s=0.02)
            time.sleep(rng.uniform(0.0, 0.2))
        elif mode == "mid_publish":
            base = worker.wait_for(lambda s: True, 30)["maps_published"]
            worker.wait_for(lambda s, b=base: s["maps_published"] > b, 30, "a publish", poll_s=0.05)
        else:
            time.sleep(rng.uniform(0.3, 3.0))
        assert traffic.error is None and (traffic.is_alive() or traffic.sent == len(scenario.messages)), traffic.error
        kills.append((mode, traffic.sent))
        worker.kill()
        worker = start_worker(config)
        worker.wait_ready()

    traffic.finish()
    scenario.finish(stack.broker_url, worker)
    counts = wait_for_counts(stack.redis_url, ns, scenario.expected, worker, timeout_s=120)
    record(
        scenario=f"crash: kill -9 x{len(kills)}",
        faults=len(kills),
        events_sent=len(scenario.messages),
        labels_expected=scenario.labels_expected,
        labels_counted=labels_counted(counts),
        max_rss_mb=round(worker.max_rss_mb),
        detail=kills,
    )
    assert counts == {k: list(v) for k, v in scenario.expected.items()}, f"kills at {kills}"
    published = {f for f in index_fields(stack.redis_url, ns)}
    assert published == {f"{m}:v1:{k}" for m, k in scenario.expected}
