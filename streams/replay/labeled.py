"""The labeled source (fast path): the `recal-labeled` records the join workers wrote, replayed per partition
with supersession (`streams.replay.partition`), then merged in partition order (`streams.replay.merge`).
Interruptible and resumable through a checkpoint file."""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.pipeline.aggregator import Aggregator
from streams.pipeline.broker_caps import partitions_for
from streams.pipeline.config import Config
from streams.replay.checkpoint import load_checkpoint, save_checkpoint
from streams.replay.merge import merge_partitions
from streams.replay.offsets import end_offsets, replay_consumer
from streams.replay.partition import LabeledPartition, row_filter
from streams.replay.progress import Progress
from streams.replay.result import ReplayRange, ReplayResult

log = logging.getLogger("recal.replay")


async def replay_labeled(
    config: Config,
    rng: ReplayRange | None = None,
    models: set[str] | None = None,
    checkpoint: str | None = None,
    checkpoint_every_s: float = 10.0,
    progress: Progress | None = None,
    stop: asyncio.Event | None = None,
    now_ms: int | None = None,
    partitions: list[int] | None = None,
) -> ReplayResult:
    """Rebuild maps from the labeled topic (module doc). Interruptible through `stop`; resumable through
    `checkpoint` (written every `checkpoint_every_s` and when stopped)."""
    rng = rng or ReplayRange()
    topic = config.topics.labeled
    filt = row_filter(models, rng.from_ms, rng.to_ms)
    identity = {
        "source": "labeled",
        "topic": topic,
        "start": rng.start_offset,
        "end": rng.end_offset,
        "from": rng.from_ms,
        "to": rng.to_ms,
        "models": sorted(models or ()),
    }
    started = time.monotonic()
    consumer = replay_consumer(config)
    await consumer.start()
    try:
        loaded = load_checkpoint(checkpoint, identity, config.model, filt) if checkpoint else None
        if loaded is not None:
            parts, ends, complete = loaded
            log.info("resuming from %s at offsets %s", checkpoint, {p: s.next_offset for p, s in parts.items()})
        else:
            complete = False
            all_parts = await partitions_for(consumer, topic)
            if not all_parts:
                raise RuntimeError(f"topic {topic} not found")
            chosen = [p for p in all_parts if partitions is None or p in partitions]
            tps = [TopicPartition(topic, p) for p in chosen]
            begin, end = await consumer.beginning_offsets(tps), await end_offsets(consumer, tps)
            parts, ends = {}, {}
            for tp in tps:
                part = LabeledPartition(tp.partition, config.model, filt)
                lo, hi = begin[tp], end[tp]
                part.next_offset = max(lo, rng.start_offset) if rng.start_offset is not None else lo
                ends[tp.partition] = min(hi, rng.end_offset) if rng.end_offset is not None else hi
                parts[tp.partition] = part
        total = sum(max(0, ends[p] - parts[p].next_offset) for p in parts)
        progress = progress or Progress(total)
        progress.total = total
        interrupted = False
        if not complete:
            interrupted = await _consume(
                consumer, topic, parts, ends, progress, stop, checkpoint, identity, checkpoint_every_s
            )
        progress.update(0, 0, force=True)
        if interrupted:
            if checkpoint:
                save_checkpoint(checkpoint, identity, parts, ends)
            return ReplayResult(
                [], Aggregator(config.model), interrupted=True, partitions=parts, seconds=time.monotonic() - started
            )
        if checkpoint:
            save_checkpoint(checkpoint, identity, parts, ends, complete=True)
        for part in parts.values():
            part.finish()
    finally:
        await consumer.stop()
    maps, aggregator = merge_partitions(parts, config.model, now_ms)
    return ReplayResult(
        maps,
        aggregator,
        records=sum(s.records for s in parts.values()),
        examples=sum(s.examples for s in parts.values()),
        superseded=sum(s.superseded for s in parts.values()),
        conflicts=sum(s.conflicts for s in parts.values()),
        seconds=time.monotonic() - started,
        partitions=parts,
    )


async def _consume(
    consumer: AIOKafkaConsumer,
    topic: str,
    parts: dict[int, LabeledPartition],
    ends: dict[int, int],
    progress: Progress,
    stop: asyncio.Event | None,
    checkpoint: str | None,
    identity: dict,
    checkpoint_every_s: float,
) -> bool:
    """Read every partition up to its end; True when stopped early."""
    todo = {TopicPartition(topic, p) for p, s in parts.items() if s.next_offset < ends[p]}
    consumer.assign(sorted(todo))
    for tp in todo:
        consumer.seek(tp, parts[tp.partition].next_offset)
    last_checkpoint = time.monotonic()
    while todo:
        if stop is not None and stop.is_set():
            return True
        batch = await consumer.getmany(*todo, timeout_ms=500, max_records=2_000)
        for tp, messages in batch.items():
            part, end = parts[tp.partition], ends[tp.partition]
            before = part.read_examples
            for message in messages:
                if message.offset < part.next_offset:
                    continue
                if message.offset >= end or (stop is not None and stop.is_set()):
                    break
                part.add(message.value)
                part.next_offset = message.offset + 1
                progress.update(1, part.read_examples - before)
                before = part.read_examples
            if part.next_offset >= end:
                todo.discard(tp)
                consumer.pause(tp)
        if checkpoint and time.monotonic() - last_checkpoint >= checkpoint_every_s:
            save_checkpoint(checkpoint, identity, parts, ends)
            last_checkpoint = time.monotonic()
    return False
