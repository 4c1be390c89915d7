"""The hot path: a batched aiokafka consumer that validates raw events, joins them per partition,
folds the labeled examples into per-partition calibrators, and writes one labeled record per
partition and batch.

Why not a Faust agent: Faust pushes each record through several asyncio tasks (~5,000 records/s
per process); here one `getmany` hands over thousands of records that are decoded with orjson and
joined in a plain loop. Faust still runs the app around it (aggregation agent, tables, timers,
web server, worker CLI).

Exactly-once without Kafka transactions: a partition's join state, its partial calibrators and the
input offsets they reflect are snapshotted together (`SnapshotStore`). After a crash the partition
restarts from its last snapshot and re-reads its inputs from the offsets stored in it; nothing the
crashed process did after that snapshot survives in the state, so no label is lost or counted
twice. Labeled records carry (partition, seq, durable) so a replay can drop the superseded ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from streams.pipeline import deadletters
from streams.pipeline.broker_caps import start_producer
from streams.pipeline.cardinality import CardinalityGuard
from streams.pipeline.config import Config, ModelConfig
from streams.pipeline.deadletters import DeadLetterWriter
from streams.pipeline.events import CLICK, CONVERSION, IMPRESSION, KIND_NAMES, Action, Impression, Invalid, Limits
from streams.pipeline.events import decode as decode_events
from streams.pipeline.join import PartitionJoin
from streams.pipeline.partials import PartialCalibrators
from streams.pipeline.records import pack, pack_examples, unpack
from streams.pipeline.snapshots import Fenced, SnapshotStore
from streams.pipeline.topics import partition_of
from streams.pipeline.versions import ModelVersions

log = logging.getLogger("recal.join")

_KIND_HEADER = "recal-kind"


@dataclass
class Stats:
    """Counters since process start, read by the metrics endpoint and the demo's progress line."""

    events_in: Counter[str] = field(default_factory=Counter)  # per source topic
    dead_letters: Counter[str] = field(default_factory=Counter)  # per reason
    join: Counter[str] = field(default_factory=Counter)  # late, duplicate, early, orphan, ...
    labeled: Counter[str] = field(default_factory=Counter)  # per model
    rekeyed: int = 0
    expiry_deferred: int = 0  # batches that held windows open because label topics lagged
    snapshots: int = 0
    snapshots_skipped: int = 0  # revoke snapshots that did not fit before the rebalance deadline
    fenced: int = 0  # partitions dropped because another worker claimed them
    batches: int = 0
    batch_seconds: float = 0.0


@dataclass
class PartitionState:
    partition: int
    join: PartitionJoin
    partials: PartialCalibrators
    offsets: dict[str, int]  # source topic -> next offset to read
    seq: int = 0  # labeled records written
    durable: int = 0  # seq covered by the last snapshot

    def snapshot_blob(self) -> bytes:
        keys, blobs = self.partials.to_blobs()
        header = {"partition": self.partition, "seq": self.seq, "offsets": self.offsets, "keys": keys}
        return pack(header, [self.join.snapshot(), *blobs])


class JoinWorker:
    """Owns the join partitions assigned to this process by the `{app_id}-join` consumer group."""

    def __init__(self, config: Config, on_partials=None) -> None:
        self.config = config
        self.topics = config.topics
        self.stats = Stats()
        self.parts: dict[int, PartitionState] = {}
        self._kinds = {
            self.topics.impressions: IMPRESSION,
            self.topics.clicks: CLICK,
            self.topics.conversions: CONVERSION,
        }
        self._on_partials = on_partials  # async callable(list of (partition, key, calibrator))
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._n_partitions = 0
        self.ready = asyncio.Event()
        self._reported_default: set[str] = set()
        self.guard = CardinalityGuard(config, self._model_config)
        self.versions = ModelVersions(self._model_config)  # live model versions: the cap's dead letters
        self.producer: AIOKafkaProducer | None = None
        self.idempotent = False  # the broker granted a producer id (broker_caps.start_producer)
        self.consumer: AIOKafkaConsumer | None = None
        self.deadletters: DeadLetterWriter | None = None
        self._snapshots: SnapshotStore | None = None
        self._state_reader: AIOKafkaConsumer | None = None

    def _model_config(self, name: str) -> ModelConfig:
        if name not in self.config.models and name not in self._reported_default:
            self._reported_default.add(name)
            log.warning("model %r is not in the config: using [defaults]", name)
        return self.config.model(name)

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        kafka = self.config.kafka_client_args()
        self.producer, self.idempotent = await start_producer(
            **kafka, linger_ms=5, max_batch_size=1 << 20, max_request_size=4 << 20, acks="all"
        )
        self.deadletters = DeadLetterWriter.for_config(self.config, self.producer, self.stats.dead_letters)
        self._state_reader = AIOKafkaConsumer(**kafka, group_id=None, enable_auto_commit=False)
        await self._state_reader.start()
        self._snapshots = SnapshotStore.for_config(self.config, self.producer, self._state_reader)
        self.consumer = AIOKafkaConsumer(
            **kafka,
            group_id=f"{self.config.app_id}-join",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            partition_assignment_strategy=(RangePartitionAssignor,),  # co-partitions the sources
            max_partition_fetch_bytes=4 << 20,
            fetch_max_bytes=32 << 20,
            session_timeout_ms=self.config.session_timeout_ms,
            rebalance_timeout_ms=self.config.rebalance_timeout_ms,  # revoke snapshots are bounded by half of it
            heartbeat_interval_ms=max(500, self.config.session_timeout_ms // 5),
        )
        await self.consumer.start()
        self.consumer.subscribe(list(self.topics.sources), listener=_Rebalance(self))

    async def stop(self) -> None:
        self._stopping.set()
        if self.consumer is not None:
            async with self._lock:
                await self._checkpoint(list(self.parts.values()))
            await self.consumer.stop()
        for client in (self._state_reader, self.producer):
            if client is not None:
                await client.stop()

    async def run(self) -> None:
        """Consume until stopped: batches in, labeled records and snapshots out."""
        assert self.consumer is not None
        last_checkpoint = last_partials = time.monotonic()
        while not self._stopping.is_set():
            batch = await self.consumer.getmany(timeout_ms=200, max_records=20_000)
            async with self._lock:
                if batch:
                    await self._process(batch)
                now = time.monotonic()
                if now - last_checkpoint >= self.config.checkpoint_interval_ms / 1000:
                    last_checkpoint = last_partials = now
                    await self._checkpoint(list(self.parts.values()))
                elif now - last_partials >= self.config.partials_interval_ms / 1000:
                    last_partials = now
                    await self._send_partials(list(self.parts.values()))

    # -- one batch -----------------------------------------------------------------------------
    async def _process(self, batch: dict[TopicPartition, list]) -> None:
        started = time.perf_counter()
        sends: list[asyncio.Future] = []
        limits = Limits(
            self.config.max_message_bytes,
            self.config.max_predictions,
            int(time.time() * 1000) + self.config.max_future_skew_ms,
        )
        touched: set[int] = set()
        for tp, messages in batch.items():
            state = self.parts.get(tp.partition)
            if state is None:  # revoked while the fetch was in flight
                continue
            expected = state.offsets.get(tp.topic)
            if expected is not None and messages[0].offset < expected:
                # fetched before an assignment seeked back (or a refetch): already in the state
                messages = [m for m in messages if m.offset >= expected]
                if not messages:
                    continue
            touched.add(tp.partition)
            for message in messages:
                kind = self._kinds.get(tp.topic)
                if kind is None:
                    kind = _header_kind(message.headers)
                self.stats.events_in[tp.topic] += 1
                invalid: list[Invalid] = []
                for event in (
                    decode_events(message.value, kind, limits)
                    if kind is not None
                    else [Invalid("bad_header:recal-kind", -1)]
                ):
                    if type(event) is Invalid:
                        invalid.append(event)
                    elif not self._owned_here(message, event, tp.partition):
                        sends.append(await self._rekey(event, kind))
                    elif kind == IMPRESSION:
                        if (capped := self.guard.admit(event)) is not None:  # cardinality caps
                            invalid.append(Invalid(capped, -1))
                        elif not all(self.versions.admit(m, v, event.ts) for m, v, _ in event.predictions):
                            invalid.append(Invalid("too_many_versions", -1))
                        else:
                            state.join.add_impression(event)
                    else:
                        state.join.add_action(event)
                if invalid:
                    sends.append(await self._dead_letter(message, invalid))
            state.offsets[tp.topic] = messages[-1].offset + 1
        for partition in sorted(touched):
            sends.extend(await self._emit(self.parts[partition]))
        if sends:
            await asyncio.gather(*sends)
        self.stats.batches += 1
        self.stats.batch_seconds += time.perf_counter() - started

    def _owned_here(self, message, event: Impression | Action, partition: int) -> bool:
        """Events are co-partitioned by impression_id; a producer that keyed otherwise (or batched
        events of several impressions in one message) gets its events re-keyed."""
        key = event.impression_id.encode()
        if message.key == key:
            return True
        return partition_of(key, self._n_partitions) == partition

    async def _rekey(self, event: Impression | Action, kind: int) -> asyncio.Future:
        self.stats.rekeyed += 1
        if kind == IMPRESSION:
            doc = {
                "impression_id": event.impression_id,
                "ts": event.ts,
                "segment": event.segment,
                "predictions": [{"model": m, "version": v, "score": s} for m, v, s in event.predictions],
            }
        else:
            id_field = "click_id" if kind == CLICK else "conversion_id"
            doc = {id_field: event.action_id, "impression_id": event.impression_id, "ts": event.ts}
        return await self.producer.send(
            self.topics.rekeyed,
            orjson.dumps(doc),
            key=event.impression_id.encode(),
            headers=[(_KIND_HEADER, KIND_NAMES[kind].encode())],
        )

    async def _dead_letter(self, message, invalid: list[Invalid]) -> asyncio.Future:
        """The original bytes, once per message however many of its events are bad (an array cannot
        amplify into the dead-letter topic); headers and size limit: `streams.pipeline.deadletters`."""
        return await self.deadletters.send(deadletters.refused_message(message, invalid), (i.reason for i in invalid))

    def _labels_caught_up(self, state: PartitionState) -> bool:
        """Whether the partition's click/conversion inputs are read up to (nearly) their end. While
        they lag, windows stay open: expiring now would turn unread clicks into late ones. An unknown end (no
        fetch answered for that partition yet, e.g. just after an assignment) counts as lagging."""
        assert self.consumer is not None
        for topic in self.topics.sources[1:]:
            highwater = self.consumer.highwater(TopicPartition(topic, state.partition))
            if highwater is None or highwater - state.offsets.get(topic, 0) > self.config.max_label_lag:
                return False
        return True

    async def _emit(self, state: PartitionState) -> list[asyncio.Future]:
        join = state.join
        if self._labels_caught_up(state):
            join.expire()
        else:
            self.stats.expiry_deferred += 1
        examples, orphans = join.drain()
        for name, count in join.counters.items():
            self.stats.join[name] += count
        join.counters.clear()
        sends = []
        for action in orphans:
            reason = f"orphan_{'click' if action.kind == CLICK else 'conversion'}"
            letter = deadletters.orphan(reason, action.impression_id, action.ts, action.action_id, state.partition)
            sends.append(await self.deadletters.send(letter))
        if not len(examples):
            return sends
        columns = examples.arrays()
        models, versions, segments = join.models.items, join.versions.items, join.segments.items
        state.partials.learn(columns, models, versions, segments)
        for model_idx, count in zip(*np.unique(columns["model"], return_counts=True), strict=True):
            self.stats.labeled[models[model_idx]] += int(count)
        state.seq += 1
        header = {
            "type": "examples",
            "partition": state.partition,
            "seq": state.seq,
            "durable": state.durable,
            "models": models,
            "versions": versions,
            "segments": segments,
        }
        record = pack_examples(header, columns)
        sends.append(await self.producer.send(self.topics.labeled, record, partition=state.partition))
        return sends

    # -- checkpoints and rebalancing -----------------------------------------------------------
    async def _checkpoint(self, states: list[PartitionState], deadline: float | None = None) -> None:
        """Snapshot state + offsets, hand changed partials to the aggregator, commit for lag metrics. Before
        a `deadline` (revoke) only the snapshots that fit (the rest re-read from their last one); a fenced
        partition (claimed by another worker) is dropped, its snapshot and partials unwritten."""
        assert self._snapshots is not None and self.consumer is not None
        kept = []
        for state in states:
            if deadline is not None and time.monotonic() + self._snapshots.estimate_s(state.partition) > deadline:
                self.stats.snapshots_skipped += 1
                log.warning("partition %d: no time left to snapshot before the rebalance deadline", state.partition)
                continue
            try:
                await self._snapshots.write(state.partition, state.snapshot_blob)
            except Fenced as exc:
                self.stats.fenced += 1
                self.parts.pop(state.partition, None)
                log.warning("partition %d dropped: %s", state.partition, exc)
                continue
            state.durable = state.seq
            self.stats.snapshots += 1
            kept.append(state)
        states = kept
        await self._send_partials(states)
        offsets = {
            TopicPartition(topic, state.partition): offset
            for state in states
            for topic, offset in state.offsets.items()
        }
        if offsets:
            try:
                await self.consumer.commit(offsets)
            except Exception as exc:
                log.info("offset commit skipped (%s); snapshots hold the offsets of record", exc)

    async def _send_partials(self, states: list[PartitionState]) -> None:
        """Changed partial calibrators go to the aggregator. They are absolute states, so one sent
        ahead of a snapshot that a crash then loses is simply replaced by its recomputation."""
        partials = [(s.partition, key, cal) for s in states for key, cal in s.partials.take_dirty()]
        if partials and self._on_partials is not None:
            await self._on_partials(partials)

    async def _assigned(self, assigned: set[TopicPartition]) -> None:
        assert self._snapshots is not None and self.consumer is not None
        async with self._lock:
            partitions = sorted({tp.partition for tp in assigned} - set(self.parts))
            self._n_partitions = (
                len(self.consumer.partitions_for_topic(self.topics.impressions) or ()) or self._n_partitions
            )
            for partition in partitions:
                state = await self._restore(partition)
                self.parts[partition] = state
                for topic in self.topics.sources:
                    tp = TopicPartition(topic, partition)
                    if tp not in assigned:
                        continue
                    if topic in state.offsets:
                        self.consumer.seek(tp, state.offsets[topic])
                    else:
                        await self.consumer.seek_to_beginning(tp)
            self.ready.set()

    async def _restore(self, partition: int) -> PartitionState:
        blob = await self._snapshots.claim(partition)
        if blob is None:
            return PartitionState(
                partition,
                PartitionJoin(self._model_config, self.config.grace_ms, self.config.holdout_percent),
                PartialCalibrators(self._model_config),
                offsets={},
            )
        header, blobs = unpack(blob)
        join = PartitionJoin.restore(
            bytes(blobs[0]), self._model_config, self.config.grace_ms, self.config.holdout_percent
        )
        partials = PartialCalibrators.from_blobs(self._model_config, header["keys"], blobs[1:])
        self.guard.observe(partials.calibrators)
        log.info("partition %d restored at seq %d, offsets %s", partition, header["seq"], header["offsets"])
        return PartitionState(partition, join, partials, header["offsets"], header["seq"], header["seq"])

    async def _revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._lock:
            states = [self.parts.pop(p) for p in sorted({tp.partition for tp in revoked}) if p in self.parts]
            if states and not self._stopping.is_set():
                await self._checkpoint(states, deadline=time.monotonic() + self.config.rebalance_timeout_ms / 2000)
            for state in states:
                self._snapshots.forget(state.partition)


def _header_kind(headers) -> int | None:
    for name, value in headers or ():
        if name == _KIND_HEADER:
            try:
                return KIND_NAMES.index(value.decode())
            except ValueError:
                return None
    return None


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: JoinWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked) -> None:
        await self.worker._revoked(set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        await self.worker._assigned(set(assigned))
