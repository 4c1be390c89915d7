"""The hot path: a batched aiokafka consumer that validates raw events, joins them per partition,
folds the labeled examples into per-partition calibrators, and writes one labeled record per
partition and batch. Per batch: `routing.route` (decode, check partitions) -> `PartitionJoin.process`
-> `expire` -> `PartitionState.fold` (partials, labeled record); state: `partition_state`.

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
import gc
import logging
import os
import time

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from streams.pipeline import deadletters, join_clients
from streams.pipeline.cardinality import CardinalityGuard
from streams.pipeline.config import Config, ModelConfig
from streams.pipeline.deadletters import DeadLetterWriter
from streams.pipeline.events import CLICK, CONVERSION, IMPRESSION, KIND_NAMES, Invalid, Limits
from streams.pipeline.join import PartitionJoin
from streams.pipeline.join_processes import JoinProcesses
from streams.pipeline.join_stats import Stats
from streams.pipeline.partition_state import PartitionState
from streams.pipeline.routing import KIND_HEADER, Routed, Screen, route
from streams.pipeline.snapshots import Fenced, SnapshotStore
from streams.pipeline.versions import ModelVersions

__all__ = ["JoinWorker", "Stats"]

log = logging.getLogger("recal.join")


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
        self.producer: AIOKafkaProducer | None = None
        self.idempotent = False  # the broker granted a producer id (broker_caps.start_producer)
        self.deadletters: DeadLetterWriter | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self._snapshots: SnapshotStore | None = None
        self._state_reader: AIOKafkaConsumer | None = None
        self.partitioner = config.partitioner
        self.peers: JoinProcesses | None = None  # the other join processes of this worker (the first one's)
        self.guard = CardinalityGuard(config, self._model_config)
        self.versions = ModelVersions(self._model_config)  # live model versions per model, capped
        # refusal hooks for valid impressions (see routing): the cardinality caps, then the version cap
        self.screens: list[Screen] = [self.guard.screen, self._version_screen]

    def _version_screen(self, impressions: list) -> list[str | None]:
        """`too_many_versions` for an impression naming a version beyond its model's live-version cap."""
        admit = self.versions.admit
        return [
            None if all(admit(p.model, p.model_version, e.ts) for p in e.predictions) else "too_many_versions"
            for e in impressions
        ]

    def _model_config(self, name: str) -> ModelConfig:
        if name not in self.config.models and name not in self._reported_default:
            self._reported_default.add(name)
            log.warning("model %r is not in the config: using [defaults]", name)
        return self.config.model(name)

    def report(self) -> dict:
        """This process's counters and partitions, as plain data (what a join process sends the first)."""
        report = self.stats.as_dict()
        report["partitions"] = sorted(self.parts)
        report["pending"] = sum(len(p.join.pending) for p in self.parts.values())
        return report

    def total_stats(self) -> tuple[Stats, list[int], int]:
        """(counters, partitions, pending impressions) over all the join processes of this worker."""
        return Stats.total([self.report(), *(self.peers.poll().values() if self.peers is not None else ())])

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        processes = self.config.processes or os.cpu_count() or 1
        if processes > 1:
            self.peers = JoinProcesses(self.config, processes - 1)
            self.peers.start()
        self.producer, self.idempotent = await join_clients.producer(self.config)
        self.deadletters = DeadLetterWriter.for_config(self.config, self.producer, self.stats.dead_letters)
        self._state_reader = join_clients.state_reader(self.config)
        await self._state_reader.start()
        self._snapshots = SnapshotStore.for_config(self.config, self.producer, self._state_reader)
        self.consumer = join_clients.consumer(self.config)
        await self.consumer.start()
        self.consumer.subscribe(list(self.topics.sources), listener=_Rebalance(self))

    def request_stop(self) -> None:
        """`run` returns after the batch in hand."""
        self._stopping.set()

    async def stop(self) -> None:
        self._stopping.set()
        if self.peers is not None:
            await asyncio.to_thread(self.peers.stop)
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
        # A batch allocates ~10^5 short-lived container objects (fetched records, structs' lists and
        # dicts); with the default thresholds the collector ran every 700 of them and walked the
        # long-lived app state again and again. What exists now is frozen out of collection.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
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
        now_ms = int(time.time() * 1000)
        limits = Limits(
            self.config.max_message_bytes, self.config.max_predictions, now_ms + self.config.max_future_skew_ms
        )
        routed: dict[int, Routed] = {}
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
            self.stats.events_in[tp.topic] += len(messages)
            into = routed.setdefault(tp.partition, Routed())
            kind = self._kinds.get(tp.topic)
            route(tp.partition, messages, kind, self._n_partitions, limits, self.partitioner, self.screens, into)
            state.offsets[tp.topic] = messages[-1].offset + 1
        sends: list[asyncio.Future] = []
        for partition in sorted(routed):
            r, state = routed[partition], self.parts[partition]
            state.join.process(r.impressions, r.actions, now_ms, r.impression_ids)
            for message, invalid in r.refused:
                sends.append(await self._dead_letter(message, invalid))
            for kind, owner, event in r.rekeys:
                sends.append(await self._rekey(kind, owner, event))
            sends.extend(await self._emit(state))
        if sends:
            await asyncio.gather(*sends)
        self.stats.batches += 1
        self.stats.batch_seconds += time.perf_counter() - started

    async def _rekey(self, kind: int, partition: int, event) -> asyncio.Future:
        """To the partition the event belongs to, explicitly: the producer's partitioner may differ."""
        self.stats.rekeyed += 1
        return await self.producer.send(
            self.topics.rekeyed,
            msgspec.json.encode(event),
            key=event.impression_id.encode(),
            partition=partition,
            headers=[(KIND_HEADER, KIND_NAMES[kind].encode())],
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
        expired = self._labels_caught_up(state)
        if expired:
            join.expire()
        else:
            self.stats.expiry_deferred += 1
        state.learn_facts()
        examples, orphans = join.drain()
        for name, count in join.counters.items():
            self.stats.join[name] += count
        join.counters.clear()
        sends = []
        for action in orphans:
            reason = f"orphan_{'click' if action.kind == CLICK else 'conversion'}"
            letter = deadletters.orphan(reason, action.impression_id, action.ts, action.action_id, state.partition)
            sends.append(await self.deadletters.send(letter))
        if len(examples):
            record, per_model = state.fold(examples)
            self.stats.labeled.update(per_model)
            sends.append(await self.producer.send(self.topics.labeled, record, partition=state.partition))
        if expired:
            state.delayed.close_through(join.clock)
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
        partials = [(s.partition, *partial) for s in states for partial in s.take_partials()]
        if partials and self._on_partials is not None:
            await self._on_partials(partials)


class _Rebalance(ConsumerRebalanceListener):
    """Assignment and revocation: restore a partition from its snapshot and seek to its offsets;
    checkpoint the ones that leave."""

    def __init__(self, worker: JoinWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked) -> None:
        w = self.worker
        async with w._lock:
            states = [w.parts.pop(p) for p in sorted({tp.partition for tp in revoked}) if p in w.parts]
            if states and not w._stopping.is_set():
                await w._checkpoint(states, deadline=time.monotonic() + w.config.rebalance_timeout_ms / 2000)
            for state in states:
                w._snapshots.forget(state.partition)

    async def on_partitions_assigned(self, assigned) -> None:
        w = self.worker
        assert w._snapshots is not None and w.consumer is not None
        async with w._lock:
            partitions = sorted({tp.partition for tp in assigned} - set(w.parts))
            w._n_partitions = len(w.consumer.partitions_for_topic(w.topics.impressions) or ()) or w._n_partitions
            for partition in partitions:
                state = w.parts[partition] = await self._restore(partition)
                for topic in w.topics.sources:
                    tp = TopicPartition(topic, partition)
                    if tp not in assigned:
                        continue
                    if topic in state.offsets:
                        w.consumer.seek(tp, state.offsets[topic])
                    else:
                        await w.consumer.seek_to_beginning(tp)
            w.ready.set()

    def _new_join(self, snapshot: bytes | None = None) -> PartitionJoin:
        c = self.worker.config
        args = (self.worker._model_config, c.grace_ms, c.holdout_percent)
        if snapshot is None:
            return PartitionJoin(*args, clock_skew_ms=c.clock_skew_ms)
        return PartitionJoin.restore(snapshot, *args, clock_skew_ms=c.clock_skew_ms)

    async def _restore(self, partition: int) -> PartitionState:
        blob = await self.worker._snapshots.claim(partition)
        state = PartitionState.from_blob(partition, blob, self._new_join, self.worker._model_config)
        self.worker.guard.observe(state.partials.calibrators)
        if blob is not None:
            log.info("partition %d restored at seq %d, offsets %s", partition, state.seq, state.offsets)
        return state
