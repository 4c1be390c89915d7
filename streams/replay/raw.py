"""The raw source: the impression/click/conversion topics re-joined in process by
`streams.pipeline.join.PartitionJoin`, one join per partition (events routed to the partition their
impression_id hashes to, ordered by record timestamp). Counts match the live join; batch boundaries, hence
decayed floats, may differ. Holds the range's events in memory."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.pipeline.broker_caps import partitions_for
from streams.pipeline.config import Config
from streams.pipeline.events import CLICK, CONVERSION, IMPRESSION, Action, ImpressionEvent, Invalid, Limits
from streams.pipeline.events import decode as decode_events
from streams.pipeline.join import PartitionJoin
from streams.pipeline.join.partition import impression_event
from streams.pipeline.topics import partition_of
from streams.replay.merge import merge_partitions
from streams.replay.offsets import end_offsets, offset_for_time, replay_consumer
from streams.replay.partition import LabeledPartition, RowFilter, row_filter
from streams.replay.progress import Progress
from streams.replay.result import ReplayRange, ReplayResult

log = logging.getLogger("recal.replay")

RawRecord = tuple[int, int, int, bytes]  # (record timestamp, read order, event kind, value)
JOIN_CHUNK = 20_000  # events per join step (expire + drain), like a live worker batch


async def replay_raw(
    config: Config,
    rng: ReplayRange | None = None,
    models: set[str] | None = None,
    progress: Progress | None = None,
    now_ms: int | None = None,
) -> ReplayResult:
    """Re-join the source topics in process (module doc)."""
    rng = rng or ReplayRange()
    started = time.monotonic()
    consumer = replay_consumer(config)
    await consumer.start()
    try:
        per_partition, total, progress = await _read(consumer, config, rng, progress)
    finally:
        await consumer.stop()
    routed = _route(per_partition, config, rng)
    filt = row_filter(models, None, None)
    parts = {p: _rejoin(p, events, config, filt) for p, events in enumerate(routed)}
    examples = sum(part.examples for part in parts.values())
    maps, aggregator = merge_partitions(parts, config.model, now_ms)
    progress.update(0, examples, force=True)
    return ReplayResult(
        maps, aggregator, records=total, examples=examples, seconds=time.monotonic() - started, partitions=parts
    )


async def _read(
    consumer: AIOKafkaConsumer, config: Config, rng: ReplayRange, progress: Progress | None
) -> tuple[list[list[RawRecord]], int, Progress]:
    """The range's records of the three source topics, by source partition, in read order."""
    topics = config.topics
    n = len(await partitions_for(consumer, topics.impressions))
    if not n:
        raise RuntimeError(f"topic {topics.impressions} not found")
    horizon = (
        max(
            [m.horizon_ms + m.allowed_lateness_ms for m in config.models.values()]
            + [config.defaults.horizon_ms + config.defaults.allowed_lateness_ms]
        )
        + config.grace_ms
    )
    sources = [(topics.impressions, IMPRESSION), (topics.clicks, CLICK), (topics.conversions, CONVERSION)]
    tps = [TopicPartition(t, p) for t, _ in sources for p in range(n)]
    begin, end = await consumer.beginning_offsets(tps), await end_offsets(consumer, tps)
    ranges: dict[TopicPartition, tuple[int, int]] = {}
    for tp in tps:  # event times -> offsets, on the same (group-less) consumer
        lo, hi = begin[tp], end[tp]
        if rng.start_offset is not None:
            lo = max(lo, rng.start_offset)
        if rng.end_offset is not None:
            hi = min(hi, rng.end_offset)
        if rng.from_ms is not None:
            lo = await offset_for_time(consumer, tp, rng.from_ms, lo, hi)
        if rng.to_ms is not None:
            until = rng.to_ms if tp.topic == topics.impressions else rng.to_ms + horizon
            hi = await offset_for_time(consumer, tp, until, lo, hi)
        ranges[tp] = (lo, hi)
    kinds = dict(sources)
    per_partition: list[list[RawRecord]] = [[] for _ in range(n)]
    total = sum(hi - lo for lo, hi in ranges.values())
    progress = progress or Progress(total)
    progress.total = total
    todo = {tp for tp, (lo, hi) in ranges.items() if lo < hi}
    consumer.assign(sorted(todo))
    for tp in todo:
        consumer.seek(tp, ranges[tp][0])
    seq = 0
    while todo:
        batch = await consumer.getmany(*todo, timeout_ms=500, max_records=20_000)
        for tp, messages in batch.items():
            lo, hi = ranges[tp]
            kept = [m for m in messages if lo <= m.offset < hi]
            for m in kept:
                per_partition[tp.partition].append((m.timestamp, seq, kinds[tp.topic], m.value))
                seq += 1
            progress.update(len(kept), 0)
            if messages[-1].offset >= hi - 1:
                todo.discard(tp)
                consumer.pause(tp)
    return per_partition, total, progress


def _route(per_partition: list[list[RawRecord]], config: Config, rng: ReplayRange) -> list[list[tuple]]:
    """Decoded events per owning partition (the one their impression_id hashes to); invalid ones counted."""
    n = len(per_partition)
    limits = Limits(
        config.max_message_bytes, config.max_predictions, int(time.time() * 1000) + config.max_future_skew_ms
    )
    routed: list[list[tuple[int, int, int, object]]] = [[] for _ in range(n)]
    invalid = 0
    for records in per_partition:
        for ts, order, kind, value in records:
            for event in decode_events(value, kind, limits):
                if type(event) is Invalid:
                    invalid += 1
                    continue
                if kind == IMPRESSION and (
                    (rng.from_ms is not None and event.ts < rng.from_ms)
                    or (rng.to_ms is not None and event.ts >= rng.to_ms)
                ):
                    continue
                owner = partition_of(event.impression_id.encode(), n)
                routed[owner].append((ts, order, kind, event))
    if invalid:
        log.info("raw replay: %d invalid events skipped", invalid)
    return routed


def _rejoin(p: int, routed: list[tuple], config: Config, filt: RowFilter | None) -> LabeledPartition:
    """One partition's events through a fresh join, in record-timestamp order; its labels learned."""
    part = LabeledPartition(p, config.model, filt)
    join = PartitionJoin(config.model, config.grace_ms, config.holdout_percent)
    events = sorted(routed, key=lambda e: (e[0], e[1]))
    late_after = min(
        [m.horizon_ms + m.allowed_lateness_ms for m in config.models.values()]
        + [config.defaults.horizon_ms + config.defaults.allowed_lateness_ms]
    )
    for start in range(0, len(events), JOIN_CHUNK):
        for impressions, actions in _batches(join, events[start : start + JOIN_CHUNK], late_after):
            join.process(impressions, actions)
        join.expire()
        batch, _ = join.drain()
        if len(batch):
            columns = batch.arrays()
            header = {"models": join.models.items, "versions": join.versions.items}
            if filt is not None and (mask := filt(header, columns)) is not None:
                columns = {k: v[mask] for k, v in columns.items()}
            if len(columns["label"]):
                for model_idx in np.unique(columns["model"]):
                    rows = columns["model"] == model_idx
                    for version_idx in np.unique(columns["version"][rows]):
                        key = (join.models.items[model_idx], join.versions.items[version_idx])
                        ts = int(columns["ts"][rows & (columns["version"] == version_idx)].min())
                        part.version_first_ts[key] = min(ts, part.version_first_ts.get(key, ts))
                part.partials.learn(columns, join.models.items, join.versions.items, join.segments.items)
                part.examples += len(columns["label"])
    return part


def _batches(
    join: PartitionJoin, events: list[tuple], late_after: int
) -> Iterator[tuple[list[ImpressionEvent], list[Action]]]:
    """The events as `PartitionJoin.process` batches (impressions, then the actions after them) that join
    exactly as one event at a time would. A batch judges its late actions and impressions by the clock before
    it, so a batch ends before an impression that follows its actions, before an impression an earlier one of
    the batch would make late (`late_after`: the smallest horizon + lateness of any model), and before an
    action the batch's impressions would make late. Read lazily: `join.clock` is the clock before the batch."""
    impressions: list[ImpressionEvent] = []
    actions: list[Action] = []
    newest = 0  # newest impression time of the batch
    for _, _, kind, event in events:
        if kind == IMPRESSION:
            if actions or (impressions and event.ts + late_after <= newest):
                yield impressions, actions
                impressions, actions = [], []
            newest = max(newest, event.ts) if impressions else event.ts
            impressions.append(impression_event(event))
        else:
            if impressions and join.clock < event.ts + join.grace_ms <= newest:
                yield impressions, actions
                impressions, actions = [], []
            actions.append(event)
    if impressions or actions:
        yield impressions, actions
