"""`PartitionOutput.labels_caught_up` with an aiokafka consumer (not started: `assign` and `highwater` are
local state): a partition a rebalance has taken away counts as lagging instead of raising inside the batch."""

import asyncio
from types import SimpleNamespace

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.pipeline.config import load_config
from streams.pipeline.join_output import PartitionOutput


def test_a_partition_no_longer_assigned_counts_as_lagging_and_does_not_raise():
    async def check() -> tuple[bool, bool]:
        config = load_config(None)
        consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")
        consumer.assign([TopicPartition(topic, 0) for topic in config.topics.sources])
        output = PartitionOutput(config, None, None, consumer, None)
        try:
            lost = output.labels_caught_up(SimpleNamespace(partition=1, offsets={}))  # raised AssertionError before
            no_fetch_yet = output.labels_caught_up(SimpleNamespace(partition=0, offsets={}))
        finally:
            await consumer.stop()
        return lost, no_fetch_yet

    assert asyncio.run(check()) == (False, False)
