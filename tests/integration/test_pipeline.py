"""End to end against the real broker and Redis: events in, labels joined, maps published.

Every test uses its own topics, consumer groups and Redis prefix on the shared stack. Half-lives are
set so long that decay is negligible over the test's event-time span: a map's effective sample size
`n` and `positives` are then exact label counts, which is what "nothing lost, nothing counted twice"
is checked against.
"""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from recalibrators.calibration_map import CalibrationMap
from streams.dev.devstack import namespace_toml
from streams.pipeline.topics import ids_covering_partitions

T0 = 1_790_000_000_000
PARTITIONS = 2


def config_text(ns: str) -> str:
    return """
[defaults]
window = "10s"
allowed_lateness = "1s"
segment_by = [["placement"]]
half_life = "100000d"
refresh_interval = "1s"
min_samples = 1

[models.ctr]
label = "click"

[models.cvr]
label = "conversion"
population = "click"
click_window = "10s"
window = "20s"

""" + namespace_toml(
        ns,
        partitions=PARTITIONS,
        grace="5s",
        checkpoint_interval="1s",
        partials_interval="500ms",
        holdout_percent=0,
        max_future_skew="100000d",
        session_timeout="6s",
    )


def impression(iid: str, ts: int, placement: str = "search") -> dict:
    return {
        "impression_id": iid,
        "ts": ts,
        "segment": {"placement": placement, "platform": "ios"},
        "predictions": [
            {"model": "ctr", "version": "v1", "score": 0.02},
            {"model": "cvr", "version": "v1", "score": 0.1},
        ],
    }


async def produce(broker: str, messages: list[tuple[str, str | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=5)
    await producer.start()
    try:
        for topic, key, value in messages:
            await producer.send(topic, value, key=key.encode() if key else None)
        await producer.flush()
    finally:
        await producer.stop()


async def consume_all(broker: str, topic: str, expect: int, timeout_s: float = 20.0) -> list:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=broker, auto_offset_reset="earliest", group_id=f"check-{uuid.uuid4()}"
    )
    await consumer.start()
    records: list = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(records) < expect and loop.time() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


class Scenario:
    """Hand-built traffic with known labels: 200 impressions (ctr + cvr predictions each)."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.ctr_positives = 0
        self.cvr_examples = 0
        self.cvr_positives = 0
        self.messages: list[tuple[str, str | None, bytes]] = []
        for i in range(200):
            iid = f"{ns}-imp-{i}"
            ts = T0 + i * 10
            click = (f"{ns}-clicks", iid, orjson.dumps({"click_id": f"c{i}", "impression_id": iid, "ts": ts + 2000}))
            conversion = (
                f"{ns}-conversions",
                iid,
                orjson.dumps({"conversion_id": f"v{i}", "impression_id": iid, "ts": ts + 5000}),
            )
            imp = (f"{ns}-impressions", iid, orjson.dumps(impression(iid, ts)))
            if i % 4 == 0:  # clicked
                self.ctr_positives += 1
                self.cvr_examples += 1
                if i % 8 == 0:  # the click arrives before its impression
                    self.messages += [click, imp]
                else:
                    self.messages += [imp, click, click]  # and a duplicate
                if i % 12 == 0:  # converted
                    self.cvr_positives += 1
                    self.messages.append(conversion)
            elif i % 4 == 1:  # a click after the 10 s window: late, not a positive
                late = orjson.dumps({"click_id": f"c{i}", "impression_id": iid, "ts": ts + 15_000})
                self.messages += [imp, (f"{ns}-clicks", iid, late)]
            else:
                self.messages.append(imp)
        self.n = 200

    def ticks(self, ts: int) -> list[tuple[str, str, bytes]]:
        return [
            (f"{self.ns}-impressions", iid, orjson.dumps(impression(iid, ts, placement="tick")))
            for iid in ids_covering_partitions(f"{self.ns}-tick-{ts}", PARTITIONS)
        ]


def read_map(redis_url: str, ns: str, model: str, segment: str) -> CalibrationMap | None:
    raw = redis.Redis.from_url(redis_url).get(f"{ns}:map:{model}:v1:{segment}")
    return CalibrationMap.from_json(raw) if raw else None


def wait_for_map(stack, ns, model, segment, n, positives, worker, timeout_s=60.0) -> CalibrationMap:
    def done(_stats) -> bool:
        m = read_map(stack.redis_url, ns, model, segment)
        return m is not None and round(m.n) == n and round(m.positives) == positives

    worker.wait_for(done, timeout_s, f"{model}:{segment} map with n={n}, positives={positives}")
    return read_map(stack.redis_url, ns, model, segment)


def test_join_labels_and_publishes_exact_counts(stack, start_worker):
    ns = f"t{uuid.uuid4().hex[:8]}"
    scenario = Scenario(ns)
    worker = start_worker(config_text(ns))
    worker.wait_ready()
    asyncio.run(produce(stack.broker_url, scenario.messages + scenario.ticks(T0 + 60_000)))

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
    ns = f"t{uuid.uuid4().hex[:8]}"
    scenario = Scenario(ns)
    worker = start_worker(config_text(ns))
    worker.wait_ready()
    bad = [(f"{ns}-impressions", "bad", value) for value in BAD_MESSAGES]
    mixed = list(scenario.messages)
    for i, message in enumerate(bad):  # spread between the good ones
        mixed.insert(i * 30, message)
    asyncio.run(produce(stack.broker_url, mixed + scenario.ticks(T0 + 60_000)))

    wait_for_map(stack, ns, "ctr", "*", scenario.n, scenario.ctr_positives, worker)
    letters = asyncio.run(consume_all(stack.broker_url, f"{ns}-deadletter", len(bad)))
    by_value = {r.value: dict(r.headers) for r in letters}
    assert len(letters) == len(bad)
    for value, reason in BAD_MESSAGES.items():
        headers = by_value[value]
        assert headers["recal-reason"].decode() == reason
        assert headers["recal-topic"].decode() == f"{ns}-impressions"
        assert int(headers["recal-offset"]) >= 0
    assert sum(worker.stats()["dead_letters"].values()) == len(bad)


def test_restart_recovers_join_state_without_losing_or_double_counting(stack, start_worker):
    ns = f"t{uuid.uuid4().hex[:8]}"
    scenario = Scenario(ns)
    config = config_text(ns)
    first = start_worker(config)
    first.wait_ready()
    half = len(scenario.messages) // 2
    asyncio.run(produce(stack.broker_url, scenario.messages[:half]))
    first.wait_for(lambda s: sum(s["events_in"].values()) >= half, 30, "first half consumed")
    first.wait_for(lambda s: s["snapshots"] >= 2 * PARTITIONS, 30, "a checkpoint")
    first.kill()  # SIGKILL: no shutdown hook runs

    asyncio.run(produce(stack.broker_url, scenario.messages[half:] + scenario.ticks(T0 + 60_000)))
    second = start_worker(config)
    second.wait_ready(90)
    wait_for_map(stack, ns, "ctr", "*", scenario.n, scenario.ctr_positives, second, timeout_s=90)
    wait_for_map(stack, ns, "cvr", "*", scenario.cvr_examples, scenario.cvr_positives, second, timeout_s=30)
