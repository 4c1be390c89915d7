"""Offsets on a group-less consumer: the replay's Kafka client, the first offset at an event time, and a
partition's true end."""

from __future__ import annotations

import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.pipeline.config import Config

log = logging.getLogger("recal.replay")


def replay_consumer(config: Config) -> AIOKafkaConsumer:
    """`assign` + `seek` only (no consumer group): replay never disturbs live workers' assignments."""
    return AIOKafkaConsumer(
        **config.kafka_client_args(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=64 << 20,
    )


async def _timestamp_at(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> int | None:
    """The record timestamp at `offset` (or the first record after it), None past the end."""
    consumer.seek(tp, offset)
    for _ in range(50):
        batch = await consumer.getmany(tp, timeout_ms=200, max_records=1)
        for message in batch.get(tp, ()):
            if message.offset >= offset:
                return message.timestamp
    return None


async def offset_for_time(consumer: AIOKafkaConsumer, tp: TopicPartition, ts_ms: int, low: int, high: int) -> int:
    """The first offset in [low, high] whose record timestamp is >= ts_ms (high if none).

    Asks the broker (`offsets_for_times`) and verifies its answer by reading the record timestamps around it;
    the embedded broker answers 0 for every timestamp, so a wrong answer falls back to a binary search over
    offsets. Both assume timestamps that grow with the offset (roughly: the range is then as good as the
    data's order; labeled-topic replays filter on the examples' own ts column anyway)."""
    consumer.assign([tp])
    if low >= high:
        return high
    try:
        answer = (await consumer.offsets_for_times({tp: ts_ms})).get(tp)
    except Exception as exc:  # brokers without the API
        log.info("offsets_for_times failed (%s); binary search", exc)
        answer = None
    candidate = high if answer is None else min(max(answer.offset, low), high)
    if await _verified(consumer, tp, ts_ms, candidate, low, high):
        return candidate
    lo, hi = low, high  # invariant: records before lo are < ts_ms; the record at hi is >= ts_ms (or hi = end)
    while lo < hi:
        mid = (lo + hi) // 2
        ts = await _timestamp_at(consumer, tp, mid)
        if ts is not None and ts >= ts_ms:
            hi = mid
        else:
            lo = mid + 1
    return lo


async def _verified(consumer, tp, ts_ms: int, candidate: int, low: int, high: int) -> bool:
    if candidate < high:
        ts = await _timestamp_at(consumer, tp, candidate)
        if ts is None or ts < ts_ms:
            return False
    if candidate > low:
        before = await _timestamp_at(consumer, tp, candidate - 1)
        if before is not None and before >= ts_ms:
            return False
    return True


async def end_offsets(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The current end of each partition. ListOffsets alone is not trusted: the embedded broker's answer
    lags the log, so the end is max(its answer, the high watermark of a fetch at that point)."""
    hint = await consumer.end_offsets(tps)
    begin = await consumer.beginning_offsets(tps)
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, max(begin[tp], hint[tp] - 1))
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(consumer.highwater(tp) is None for tp in tps):
        await consumer.getmany(*tps, timeout_ms=200, max_records=1)
    return {tp: max(hint[tp], consumer.highwater(tp) or 0) for tp in tps}
