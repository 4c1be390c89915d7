"""What the worker finds out about its broker instead of assuming it, and the one list of embedded-broker detours.

The code runs unchanged on Apache Kafka (production, and CI via `streams.dev.kafka`) and on Tansu (the
embedded dev broker). Where Tansu deviates, the main path detects it or verifies the answer; nothing asks
which broker it is. The detours, all of them:

1. **Idempotent producer** (`start_producer`, below): tried first; a broker that refuses `InitProducerId`
   (Tansu) gets a plain producer. Correctness never depended on it (snapshots carry the input offsets,
   partials are absolute states, labeled records carry (partition, seq): docs/pipeline.md); with it, a
   retried send no longer writes a duplicate labeled record, snapshot chunk or dead letter.
2. **offsets_for_times** (`streams.replay.replay.offset_for_time`): the broker's answer is used when the
   records around it confirm it; Tansu answers offset 0 for every timestamp, which falls back to a binary
   search over offsets.
3. **End offsets** (`streams.replay.replay.end_offsets`): max(ListOffsets(latest), a fetch's high
   watermark); Tansu's ListOffsets lags the log after multi-record batches. On Apache Kafka both agree.
4. **Topic metadata** (`partitions_for`, below): a consumer with no subscription caches the metadata of no
   topic on Apache Kafka (an empty topic list means none), of every topic on Tansu (it means all); the replay
   relied on the latter until it ran on Apache Kafka. `partitions_for` asks for the cluster's metadata.
5. **Group joins**: not worked around. Tansu delays a join by about half the session timeout, the tests'
   configs use 6 s; Apache Kafka's `group.initial.rebalance.delay.ms` is 0 in the dev broker and in
   docker-compose.yml (`deploy/kafka/server.properties`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

log = logging.getLogger("recal.broker")


async def start_producer(timeout_s: float = 30.0, **kwargs: Any) -> tuple[AIOKafkaProducer, bool]:
    """A started producer, idempotent if the broker grants a producer id; returns (producer, idempotent)."""
    producer = AIOKafkaProducer(**kwargs, enable_idempotence=True)
    try:
        await asyncio.wait_for(producer.start(), timeout_s)
        return producer, True
    except (KafkaError, TimeoutError) as exc:
        await producer.stop()
        log.warning("broker refused InitProducerId (%r): producing without idempotence", exc)
    producer = AIOKafkaProducer(**kwargs, enable_idempotence=False)
    await producer.start()
    return producer, False


async def partitions_for(consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    """The partitions of `topic` from a fresh metadata request of the whole cluster ([] if it does not exist)."""
    cluster = await consumer._client.fetch_all_metadata()  # what consumer.topics() asks, with its partitions
    return sorted(cluster.partitions_for_topic(topic) or ())
