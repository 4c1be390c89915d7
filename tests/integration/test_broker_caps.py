"""Capability detection (streams.pipeline.broker_caps) against the broker under test: the worker's producer is
idempotent exactly when the broker grants a producer id, and either way its records arrive once."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from streams.pipeline.broker_caps import start_producer
from streams.pipeline.config import load_config
from streams.pipeline.topics import ensure_topics, partials_changelog
from tests.support.kit import config_text, consume_all, new_ns


async def grants_producer_id(broker: str) -> bool:
    """Independently of start_producer: does a bare idempotent producer start and get a producer id?"""
    producer = AIOKafkaProducer(bootstrap_servers=broker, enable_idempotence=True)
    try:
        await asyncio.wait_for(producer.start(), 30)
    except (KafkaError, TimeoutError):
        return False
    finally:
        await producer.stop()
    return True


async def produce_ten(broker: str, topic: str) -> bool:
    producer, idempotent = await start_producer(bootstrap_servers=broker, acks="all")
    try:
        if idempotent:
            assert producer._txn_manager is not None and producer._txn_manager.has_pid()
        await asyncio.gather(*[await producer.send(topic, b"%d" % i, partition=0) for i in range(10)])
    finally:
        await producer.stop()
    return idempotent


@pytest.mark.timeout(120)
def test_producer_is_idempotent_exactly_when_the_broker_allows_it(stack):
    topic = f"{new_ns()}-caps"
    idempotent = asyncio.run(produce_ten(stack.broker_url, topic))
    assert idempotent == asyncio.run(grants_producer_id(stack.broker_url))
    assert sorted(int(r.value) for r in consume_all(stack.broker_url, topic, 10)) == list(range(10))


def test_worker_reports_its_producer_mode(stack, start_worker):
    worker = start_worker(config_text(new_ns()))
    worker.wait_ready()
    assert worker.stats()["idempotent_producer"] == asyncio.run(grants_producer_id(stack.broker_url))


async def changelog_partitions_seen_at_once(config) -> int:
    """What a client started right after `ensure_topics` (as Faust's consumer is) sees of the partials changelog."""
    await ensure_topics(config, create_sources=True)
    admin = AIOKafkaAdminClient(bootstrap_servers=config.broker)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([partials_changelog(config)])
        return len(described["partitions"])
    finally:
        await admin.close()


def test_ensure_topics_creates_the_partials_changelog_visible_with_all_its_partitions(stack, tmp_path):
    path = tmp_path / "recal.toml"
    path.write_text(config_text(new_ns()))
    config = load_config(path, broker=stack.broker_url, redis=stack.redis_url)
    assert asyncio.run(changelog_partitions_seen_at_once(config)) == config.partitions
