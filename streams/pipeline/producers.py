"""The one factory for the worker's Kafka producers (the join worker's; anything else that writes the
internal topics should call it too), so acks, batching and idempotence are set in one place."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer

from streams.pipeline.config import Config


def make_producer(config: Config, **overrides: Any) -> AIOKafkaProducer:
    """acks=all, 5 ms linger, 1 MiB batches, requests up to 4 MiB; `[worker] idempotent_producer` turns on
    idempotence (brokers that refuse InitProducerId, like the embedded dev broker, need it off). Duplicates
    from retries are harmless either way: snapshot runs skip duplicated chunks, partials are absolute states,
    labeled records carry (partition, seq)."""
    args: dict[str, Any] = {
        **config.kafka_client_args(),
        "linger_ms": 5,
        "max_batch_size": 1 << 20,
        "max_request_size": 4 << 20,
        "acks": "all",
        "enable_idempotence": config.idempotent_producer,
    }
    return AIOKafkaProducer(**(args | overrides))
