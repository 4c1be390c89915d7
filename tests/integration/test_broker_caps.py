"""Capability detection (streams.pipeline.broker_caps) against the broker under test: the worker's producer is
idempotent exactly when the broker grants a producer id, and either way its records arrive once."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import IncompatibleBrokerVersion, KafkaError

from streams.pipeline.broker_caps import start_producer
from streams.pipeline.config import load_config
from streams.pipeline.topics import ensure_topics
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


async def partials_topic_seen_at_once(config, create_first: bool) -> tuple[int, str | None]:
    """(partitions, cleanup.policy) of the partials topic as a client started right after `ensure_topics` sees
    them; `create_first`: an older worker created it with the broker's default retention."""
    admin = AIOKafkaAdminClient(bootstrap_servers=config.broker)
    await admin.start()
    try:
        if create_first:
            await admin.create_topics([NewTopic(config.topics.partials, config.partitions, 1)])
        await ensure_topics(config, create_sources=True)
        (described,) = await admin.describe_topics([config.topics.partials])
        (configs,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, config.topics.partials)])
        policy = next((c[1] for c in configs.resources[0][4] if c[0] == "cleanup.policy"), None)
        return len(described["partitions"]), policy
    finally:
        await admin.close()


async def alters_topic_configs(broker: str, topic: str) -> bool:
    """Independently of ensure_topics: does the broker take an AlterConfigs request?"""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {"retention.ms": "3600000"})])
    except IncompatibleBrokerVersion:
        return False
    finally:
        await admin.close()
    return True


@pytest.mark.parametrize("created_before", [False, True], ids=["new", "created-by-an-older-worker"])
def test_ensure_topics_makes_the_partials_topic_compacted_and_visible_with_all_its_partitions(
    stack, tmp_path, created_before, caplog
):
    """The partials topic is the aggregator's state: compacted, or cold maps lose their partials to retention. A
    partials topic an older worker created is altered to compacted, or, where the broker cannot alter topic
    configs, the worker says what to set and runs on."""
    path = tmp_path / "recal.toml"
    path.write_text(config_text(new_ns()))
    config = load_config(path, broker=stack.broker_url, redis=stack.redis_url)
    partitions, policy = asyncio.run(partials_topic_seen_at_once(config, created_before))
    assert partitions == config.partitions
    if created_before and not asyncio.run(alters_topic_configs(stack.broker_url, f"{new_ns()}-alter")):
        assert policy != "compact" and "set cleanup.policy=compact on it" in caplog.text
    else:
        assert policy == "compact"
