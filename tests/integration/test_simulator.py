"""The simulator against a real Kafka-protocol broker (Tansu): what it reports sent is on the topics,
keyed and partitioned like Kafka's own producer would, and every message but the malformed ones meets the
event contract."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2

from streams.dev.devstack import DevStack
from streams.dev.simulator import SimulationResult, TrafficScenario, create_missing_topics, run_simulation
from streams.pipeline.config import Topics
from streams.pipeline.events import CLICK, CONVERSION, IMPRESSION, Impression, Invalid, Limits, decode

TOPICS = Topics()
KINDS = {TOPICS.impressions: IMPRESSION, TOPICS.clicks: CLICK, TOPICS.conversions: CONVERSION}
PARTITIONS = 3


@pytest.fixture(scope="module")
def stack(broker_impl: str) -> Iterator[DevStack]:
    with DevStack(broker_impl=broker_impl) as s:
        yield s


async def _consume_all(broker: str) -> list:
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(t, p) for t in KINDS for p in range(PARTITIONS)]
        consumer.assign(parts)
        end = await consumer.end_offsets(parts)
        records = []
        while [tp for tp in parts if await consumer.position(tp) < end[tp]]:
            for tp_records in (await consumer.getmany(timeout_ms=1000, max_records=50_000)).values():
                records += tp_records
        return records
    finally:
        await consumer.stop()


async def _simulate_and_consume(broker: str) -> tuple[SimulationResult, list, list[str]]:
    created = await create_missing_topics(broker, list(KINDS), PARTITIONS)
    scenario = TrafficScenario(
        seed=3, malformed_share=0.02, batched_share=0.1, duplicate_click_share=0.1, reordered_click_share=0.1
    )
    result = await run_simulation(scenario, broker, rate=5000, duration_s=3.0)
    return result, await _consume_all(broker), created


def test_simulated_traffic_lands_on_the_topics_per_contract(stack: DevStack):
    result, records, created = asyncio.run(_simulate_and_consume(stack.broker_url))
    c = result.counters
    assert sorted(created) == sorted(KINDS)
    assert c.impressions == pytest.approx(15_000, rel=0.1)
    assert c.clicks > 100 and c.duplicates > 0 and c.reordered > 0 and c.array_messages > 0

    assert Counter(r.topic for r in records) == c.sent
    invalid, impressions, clicks = 0, set(), 0
    for r in records:
        events = list(decode(r.value, KINDS[r.topic], Limits()))
        if isinstance(events[0], Invalid):
            invalid += 1
            continue
        assert not any(isinstance(e, Invalid) for e in events)
        for e in events:
            # Keyed and partitioned by impression_id, as Kafka's default partitioner does: the join's
            # co-partitioning holds, arrays included.
            assert (murmur2(e.impression_id.encode()) & 0x7FFFFFFF) % PARTITIONS == r.partition
            if isinstance(e, Impression):
                impressions.add(e.impression_id)
            else:
                clicks += e.kind == CLICK
        assert r.timestamp == events[0].ts  # the record timestamp is the event time
    assert invalid == sum(c.malformed.values()) > 0
    # Held-back impressions and delayed clicks that were not due yet are still pending.
    assert c.impressions - result.pending <= len(impressions) <= c.impressions
    assert c.clicks + c.duplicates - result.pending <= clicks <= c.clicks + c.duplicates
    assert result.end_event_ms - result.t0_ms == pytest.approx(3.0 * 60_000, rel=0.1)  # speed 60
    assert sum(s.size for s, _ in result.truth.values()) > 0.5 * c.impressions
