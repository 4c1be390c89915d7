"""Issue #6.2: Redis stopped while traffic flows, then restarted EMPTY on the same port.

The worker keeps consuming during the outage, nothing crashes, every map comes back after Redis returns,
and a ranker's MapReader keeps serving its cached (calibrated, not raw) maps throughout.
"""

from __future__ import annotations

import os
import random
import time

import numpy as np
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from recalibrators.calibration_map import CalibrationMap
from recalibrators.serving.backoff import Backoff
from recalibrators.serving.reader import MapReader
from streams.dev import devstack
from streams.pipeline.publisher import MapPublisher, RetryingPublisher
from tests.support.kit import (
    PacedProducer,
    Scenario,
    config_text,
    index_fields,
    labels_counted,
    new_ns,
    wait_for_counts,
)

OUTAGE_S = float(os.environ.get("FAULT_REDIS_OUTAGE_S", "10"))
REFRESH_S = 1.0
SLACK_S = 2.0
BACKOFF_CAP_S = 30.0  # RetryingPublisher's default cap: today's real bound on the republish delay


@pytest.fixture
def stack(private_stack):
    """Redis is stopped and restarted empty: a broker and Redis of this test's own."""
    return private_stack


@pytest.mark.slow
def test_redis_outage_and_empty_restart(stack, start_worker, record):
    ns = new_ns()
    scenario = Scenario(ns, n=6_000, step_ms=10)
    fields = {f"{m}:v1:{k}" for m, k in scenario.expected}
    worker = start_worker(config_text(ns))
    worker.wait_ready()
    traffic = PacedProducer(stack.broker_url, scenario.messages, rate=len(scenario.messages) / (OUTAGE_S + 25))
    traffic.start()
    worker.wait_for(lambda s: fields <= index_fields(stack.redis_url, ns), 60, "every map published once")

    reader = MapReader(
        stack.redis_url,
        prefix=ns,
        segment_by={"ctr": [["placement"]], "cvr": [["placement"]]},
        check_interval=0.5,
        socket_timeout=0.5,
        max_backoff=1.0,
    )
    probes = [("ctr", {"placement": p}, 0.02) for p in ("search", "feed", "related")] + [("cvr", {}, 0.1)]

    def calibrated_everywhere() -> bool:
        for model, segment, raw in probes:
            m = reader.lookup(model, segment, "v1")
            got = reader.calibrate(model, segment, np.array([raw]), model_version="v1")
            if m is None or got[0] == raw or got[0] != m.apply(np.array([raw]))[0]:
                return False
        return True

    deadline = time.monotonic() + 10
    while not calibrated_everywhere() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert calibrated_everywhere(), "the reader never served calibrated values"

    port = stack.redis.port
    before = worker.stats()
    sentinel = f"{ns}:sentinel"  # only this test writes it: gone after the restart means Redis came back empty
    redis.Redis.from_url(stack.redis_url).set(sentinel, 1)
    stack.redis.stop()
    down_at = time.monotonic()
    samples = []
    while time.monotonic() - down_at < OUTAGE_S:
        assert worker.alive(), f"worker died during the Redis outage, see {worker.log_path}"
        assert calibrated_everywhere(), "MapReader stopped serving its cached maps during the outage"
        samples.append(sum(worker.stats().get("events_in", {}).values()))
        worker.rss_mb()
        time.sleep(1.0)
    during = worker.stats()
    assert sum(during["events_in"].values()) > sum(before["events_in"].values()), "the worker stopped consuming"
    assert during["publish_failures"] > before["publish_failures"], "publishes did not even fail?"

    stack.redis = devstack.redis_server(port=port).start()  # same port, EMPTY (no persistence)
    back_at = time.monotonic()
    # not the map index: the worker may republish the moment Redis listens, before this line runs
    assert not redis.Redis.from_url(stack.redis_url).exists(sentinel)
    worker.wait_for(
        lambda s: fields <= index_fields(stack.redis_url, ns),
        BACKOFF_CAP_S + REFRESH_S + SLACK_S,
        "every map republished",
        poll_s=0.1,
    )
    republish_s = time.monotonic() - back_at
    assert worker.alive()

    traffic.finish()
    scenario.finish(stack.broker_url, worker)
    counts = wait_for_counts(stack.redis_url, ns, scenario.expected, worker, timeout_s=60)
    deadline = time.monotonic() + 10  # the reader resynchronises from the new Redis as well
    while not calibrated_everywhere() and time.monotonic() < deadline:
        time.sleep(0.2)
    record(
        scenario=f"redis: down {OUTAGE_S:.0f}s, back empty",
        faults=1,
        events_sent=len(scenario.messages),
        labels_expected=scenario.labels_expected,
        labels_counted=labels_counted(counts),
        max_rss_mb=round(worker.max_rss_mb),
        detail={
            "republish_s": round(republish_s, 1),
            "events_in_during_outage": samples,
            "publish_failures": during["publish_failures"],
        },
    )
    assert counts == {k: list(v) for k, v in scenario.expected.items()}
    assert calibrated_everywhere()
    reader.close()
    print(f"maps republished {republish_s:.1f} s after Redis returned (refresh {REFRESH_S:.0f} s)")


def test_publisher_retries_within_a_refresh_interval_after_an_outage():
    """Deterministic: a fake clock ticks the refresh timer (1 s) through a 30 s outage of a real Redis."""
    random.seed(6)
    server = devstack.redis_server()
    port = server.port  # not started yet: connection refused, as during an outage
    client = redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    now = [0.0]
    publisher = RetryingPublisher(
        MapPublisher(client, prefix="outage"), backoff=Backoff(base=0.1, cap=30.0), clock=lambda: now[0]
    )
    m = CalibrationMap(
        x=np.array([0.0, 0.5, 1.0]),
        y=np.array([0.0, 0.4, 1.0]),
        method="isotonic",
        n=10.0,
        positives=4.0,
        last_event_ms=1,
        model="ctr",
        model_version="v1",
        map_version=1,
        updated_at=1,
    )
    publisher.submit([m])
    while now[0] < 30.0:  # the refresh timer keeps ticking during the outage
        publisher.flush()
        now[0] += REFRESH_S
    assert publisher.failures > 0 and publisher.pending
    server.start()
    try:
        results = []
        for _ in range(2):  # Redis is back: within one refresh interval (+ one tick of slack)
            results += publisher.flush()
            now[0] += REFRESH_S
        assert [r.status for r in results] == ["published"], f"still backing off ({publisher.failures} failures)"
    finally:
        client.close()
        server.stop()
