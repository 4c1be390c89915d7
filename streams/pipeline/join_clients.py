"""The worker's Kafka clients: a join's producer (labeled records, re-keys, dead letters, snapshots), the
group-less reader of its snapshots, its consumer in the `{app_id}-join` group, and the aggregator's consumer of
the partials topic in the `{app_id}-aggregate` group."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from streams.pipeline.broker_caps import start_producer
from streams.pipeline.config import Config


async def producer(config: Config) -> tuple[AIOKafkaProducer, bool]:
    """A started producer, and whether the broker granted it idempotence (`broker_caps`)."""
    return await start_producer(
        **config.kafka_client_args(), linger_ms=5, max_batch_size=1 << 20, max_request_size=4 << 20, acks="all"
    )


def state_reader(config: Config) -> AIOKafkaConsumer:
    """Point reads only (a header, then a snapshot's run). Each seek of a read waits out the fetch already in
    flight, which a broker holds up to `fetch_max_wait_ms` when it has nothing new: at the default 500 ms a claim
    of four snapshots took 2.1 s on Apache Kafka (up to 9.6 s in CI, long enough for a rebalance to expel the
    worker); at 10 ms, 0.15 s."""
    return AIOKafkaConsumer(**config.kafka_client_args(), group_id=None, enable_auto_commit=False, fetch_max_wait_ms=10)


def _group_member(config: Config) -> dict:
    """What the worker's two consumer groups share: membership timeouts and large fetches."""
    return {
        **config.kafka_client_args(),
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": 4 << 20,
        "fetch_max_bytes": 32 << 20,
        "session_timeout_ms": config.session_timeout_ms,
        "rebalance_timeout_ms": config.rebalance_timeout_ms,  # revoke snapshots are bounded by half of it
        "heartbeat_interval_ms": max(500, config.session_timeout_ms // 5),
    }


def consumer(config: Config) -> AIOKafkaConsumer:
    """The broker's group join waits for other members (on the embedded broker: half the session
    timeout); the range assignor gives one member the same partition of every source topic."""
    return AIOKafkaConsumer(
        **_group_member(config),
        group_id=f"{config.app_id}-join",
        partition_assignment_strategy=(RangePartitionAssignor,),  # co-partitions the sources
    )


def partials_consumer(config: Config) -> AIOKafkaConsumer:
    """Commits nothing: each partition assigned is read from its start (`streams.pipeline.partials_consumer`)."""
    return AIOKafkaConsumer(**_group_member(config), group_id=f"{config.app_id}-aggregate")
