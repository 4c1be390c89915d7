"""Issue #6.3: a broker outage the clients must ride through.

The embedded broker keeps its data in memory only, so a restart would lose the topics; instead the Tansu
process is frozen (SIGSTOP) for ~15 s and thawed (SIGCONT) while the worker runs and traffic streams. The
worker must resume without manual action (same process, no restart) and the final counts must be exact.
What Apache Kafka guarantees in production (replication, acks=all, min.insync.replicas) is in
docs/reliability.md.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.support.kit import PacedProducer, Scenario, config_text, labels_counted, new_ns, wait_for_counts

PAUSE_S = float(os.environ.get("FAULT_BROKER_PAUSE_S", "15"))


@pytest.fixture
def stack(private_stack):
    """The broker is frozen: a broker and Redis of this test's own."""
    return private_stack


@pytest.mark.slow
def test_broker_frozen_then_thawed(stack, start_worker, record):
    ns = new_ns()
    scenario = Scenario(ns, n=6_000, step_ms=10)
    worker = start_worker(config_text(ns))
    worker.wait_ready()
    traffic = PacedProducer(stack.broker_url, scenario.messages, rate=len(scenario.messages) / (PAUSE_S + 15))
    traffic.start()
    worker.wait_for(lambda s: sum(s["events_in"].values()) > 500 and s["snapshots"] > 0, 30, "traffic flowing")
    pid = worker.proc.pid
    os.kill(stack.broker.proc.pid, signal.SIGSTOP)
    try:
        frozen_at = time.monotonic()
        while time.monotonic() - frozen_at < PAUSE_S:
            assert worker.alive(), f"worker died while the broker was frozen, see {worker.log_path}"
            worker.rss_mb()
            time.sleep(0.5)
    finally:
        os.kill(stack.broker.proc.pid, signal.SIGCONT)
    thawed_at = time.monotonic()
    at_thaw = sum(worker.stats().get("events_in", {}).values())
    worker.wait_for(lambda s: sum(s["events_in"].values()) > at_thaw, 60, "consumption resumed")
    resumed_s = time.monotonic() - thawed_at

    traffic.finish()
    scenario.finish(stack.broker_url, worker)
    counts = wait_for_counts(stack.redis_url, ns, scenario.expected, worker, timeout_s=90)
    assert worker.alive() and worker.proc.pid == pid, "the worker had to be restarted"
    record(
        scenario=f"broker: SIGSTOP {PAUSE_S:.0f}s",
        faults=1,
        events_sent=len(scenario.messages),
        labels_expected=scenario.labels_expected,
        labels_counted=labels_counted(counts),
        max_rss_mb=round(worker.max_rss_mb),
        detail={"resumed_s": round(resumed_s, 1)},
    )
    assert counts == {k: list(v) for k, v in scenario.expected.items()}
