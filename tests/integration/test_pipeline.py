"""End to end against the real broker and Redis: events in, labels joined, maps published.

Every test uses its own topics, consumer groups and Redis prefix on the shared stack. Half-lives are
set so long that decay is negligible over the test's event-time span: a map's effective sample size
`n` and `positives` are then exact label counts, which is what "nothing lost, nothing counted twice"
is checked against.
"""

from __future__ import annotations

import orjson
import pytest

from tests.support.kit import (
    PARTITIONS,
    T0,
    Scenario,
    config_text,
    consume_all,
    new_ns,
    produce,
    produce_then_ticks,
    wait_for_map,
)


def traffic(ns: str) -> Scenario:
    """200 impressions, all on placement=search, no closers: the ticks close the windows."""
    return Scenario(ns, placements=("search",), closers=False)


def test_join_labels_and_publishes_exact_counts(stack, start_worker):
    ns = new_ns()
    scenario = traffic(ns)
    worker = start_worker(config_text(ns))
    worker.wait_ready()
    produce_then_ticks(stack.broker_url, scenario.messages, scenario.ticks(T0 + 60_000))

    ctr = wait_for_map(stack, ns, "ctr", "*", scenario.n, scenario.ctr_positives, worker)
    wait_for_map(stack, ns, "ctr", "placement=search", scenario.n, scenario.ctr_positives, worker)
    cvr = wait_for_map(stack, ns, "cvr", "*", scenario.cvr_examples, scenario.cvr_positives, worker)
    assert ctr.model == "ctr" and ctr.model_version == "v1" and ctr.segment_dict == {}
    assert cvr.n == pytest.approx(scenario.cvr_examples, rel=1e-6)
    stats = worker.stats()
    assert stats["join"]["duplicate_click"] == scenario.ctr_positives // 2
    assert stats["join"]["late_click"] == 50


BAD_MESSAGES = {
    b"{not json": "invalid_json",
    b"\xff\xfe": "invalid_json",
    b"[]": "empty_batch",
    b"42": "not_an_object",
    orjson.dumps({"ts": T0, "predictions": []}): "bad_field:impression_id",
    orjson.dumps(
        {"impression_id": "x", "ts": 12, "predictions": [{"model": "ctr", "version": "v", "score": 0.1}]}
    ): "bad_timestamp:too_old",
    orjson.dumps(
        {"impression_id": "x", "ts": T0, "predictions": [{"model": "ctr", "version": "v", "score": 1.5}]}
    ): "bad_score",
    orjson.dumps({"impression_id": "x", "ts": T0, "predictions": []}): "empty_predictions",
    orjson.dumps({"impression_id": "x", "ts": "soon", "predictions": []}): "bad_type:ts",
}


def test_bad_messages_are_dead_lettered_while_good_ones_flow(stack, start_worker):
    ns = new_ns()
    scenario = traffic(ns)
    worker = start_worker(config_text(ns))
    worker.wait_ready()
    bad = [(f"{ns}-impressions", "bad", value) for value in BAD_MESSAGES]
    mixed = list(scenario.messages)
    for i, message in enumerate(bad):  # spread between the good ones
        mixed.insert(i * 30, message)
    produce_then_ticks(stack.broker_url, mixed, scenario.ticks(T0 + 60_000))

    wait_for_map(stack, ns, "ctr", "*", scenario.n, scenario.ctr_positives, worker)
    letters = consume_all(stack.broker_url, f"{ns}-deadletter", len(bad))
    by_value = {r.value: dict(r.headers) for r in letters}
    assert len(letters) == len(bad)
    for value, reason in BAD_MESSAGES.items():
        headers = by_value[value]
        assert headers["recal-reason"].decode() == reason
        assert headers["recal-topic"].decode() == f"{ns}-impressions"
        assert int(headers["recal-offset"]) >= 0
    assert sum(worker.stats()["dead_letters"].values()) == len(bad)


def test_restart_recovers_join_state_without_losing_or_double_counting(stack, start_worker):
    ns = new_ns()
    scenario = traffic(ns)
    config = config_text(ns)
    first = start_worker(config)
    first.wait_ready()
    half = len(scenario.messages) // 2
    produce(stack.broker_url, scenario.messages[:half])
    first.wait_for(lambda s: sum(s["events_in"].values()) >= half, 30, "first half consumed")
    first.wait_for(lambda s: s["snapshots"] >= 2 * PARTITIONS, 30, "a checkpoint")
    first.kill()  # SIGKILL: no shutdown hook runs

    produce_then_ticks(stack.broker_url, scenario.messages[half:], scenario.ticks(T0 + 60_000))
    second = start_worker(config)
    second.wait_ready(90)
    wait_for_map(stack, ns, "ctr", "*", scenario.n, scenario.ctr_positives, second, timeout_s=90)
    wait_for_map(stack, ns, "cvr", "*", scenario.cvr_examples, scenario.cvr_positives, second, timeout_s=30)
