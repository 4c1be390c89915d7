"""The hot path: a batched aiokafka consumer that validates raw events, joins them per partition,
folds the labeled examples into per-partition calibrators, and writes one labeled record per
partition and fetch. Per slice of a fetch: `routing.route` (decode, check partitions) -> `PartitionJoin.process`;
per fetch and partition: `join_output` (dead letters, re-keys, `expire`, `PartitionState.fold`: partials, labeled
record); state:
`partition_state`; snapshots, partials and commits: `join_checkpoints`; assignment and restore: `_Rebalance`.

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
import sys
import time
from collections.abc import Callable, Iterator

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from streams.pipeline import gc_policy, join_clients, startup
from streams.pipeline.cardinality import CardinalityGuard
from streams.pipeline.config import Config, ModelConfig
from streams.pipeline.deadletters import DeadLetterWriter
from streams.pipeline.events import CLICK, CONVERSION, IMPRESSION, Limits
from streams.pipeline.join import PartitionJoin
from streams.pipeline.join_checkpoints import Checkpoints
from streams.pipeline.join_output import PartitionOutput
from streams.pipeline.join_processes import JoinProcesses, process_count
from streams.pipeline.join_stats import Stats, process_report
from streams.pipeline.partition_state import PartitionState
from streams.pipeline.routing import Routed, Screen, route
from streams.pipeline.snapshots import SnapshotStore
from streams.pipeline.versions import ModelVersions

__all__ = ["JoinWorker", "Stats", "slices"]

# One fetch is joined in slices sized by time: each holds the event loop (decode, validate, join) for about
# SLICE_TARGET_S at the rate the last slice ran. A fixed 2,000 records held it 0.2-0.3 s in a backlog of new
# segment keys (a calibrator per key and level) and ~15 ms in steady state; the size follows the cost, and the
# first slice is small: it may be the first of such a backlog (500 records of one held the loop 110 ms).
# 25 ms, not 40: the first slice of new keys after cheap ones costs ~3x the rate it was sized by (0.12 s in the
# 20,000-segment flood of test_fault_producers, 54 ms at 25 ms), for ~8% of one process's backlog throughput.
FETCH_RECORDS, FIRST_SLICE_RECORDS, MIN_SLICE_RECORDS = 20_000, 200, 50
SLICE_TARGET_S = 0.025
# A fetch is at most FETCH_SLICES slices at the last slice's rate (~0.6 s of joining): a rebalance or `stop` waits
# for the fetch in hand (`run`), so a slow one (new keys) must not be 20,000 records long.
FETCH_SLICES = 25


def slices(batch: dict[TopicPartition, list], size: Callable[[], int]) -> Iterator[dict[TopicPartition, list]]:
    """`batch` (a getmany result) in consecutive pieces of about `size()` records (read again before each piece),
    each taking the same share of what is left of every topic partition's records (in offset order): clicks
    keep pace with their impressions.

    >>> a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    >>> [(len(p.get(a, ())), len(p.get(b, ()))) for p in slices({a: list(range(6)), b: [0, 1]}, lambda: 4)]
    [(3, 1), (3, 1)]
    >>> sizes = iter([2, 8])  # the join's next slice is larger when the last one was quick
    >>> [(len(p.get(a, ())), len(p.get(b, ()))) for p in slices({a: list(range(6)), b: [0, 1]}, lambda: next(sizes))]
    [(2, 1), (4, 1)]
    """
    start = dict.fromkeys(batch, 0)
    left = sum(len(messages) for messages in batch.values())
    while left:
        k = -(-left // max(1, size()))  # pieces still to come at this size
        part = {}
        for tp, messages in batch.items():
            take = -(-(len(messages) - start[tp]) // k)
            if take:
                part[tp] = messages[start[tp] : start[tp] + take]
                start[tp] += take
                left -= take
        yield part


log = logging.getLogger("recal.join")


class JoinWorker:
    """Owns the join partitions assigned to this process by the `{app_id}-join` consumer group."""

    def __init__(self, config: Config, on_partials=None) -> None:
        self.config = config
        self.topics = config.topics
        self.stats = Stats()
        self._slice_records = FIRST_SLICE_RECORDS  # records per slice of a fetch (`_size_slices`)
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
        self._closed = False  # set by `stop` with its final checkpoint
        self._reported_default: set[str] = set()
        self.producer: AIOKafkaProducer | None = None
        self.idempotent = False  # the broker granted a producer id (broker_caps.start_producer)
        self.deadletters: DeadLetterWriter | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.checkpoints: Checkpoints | None = None  # and `output`: made in `start`, with the clients
        self.output: PartitionOutput | None = None
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
        return [None if ok else "too_many_versions" for ok in self.versions.admit_impressions(impressions)]

    def _model_config(self, name: str) -> ModelConfig:
        if name not in self.config.models and name not in self._reported_default:
            self._reported_default.add(name)
            log.warning("model %r is not in the config: using [defaults]", name)
        return self.config.model(name)

    def report(self) -> dict:
        """This process's counters and partitions, as plain data (what a join process sends the first)."""
        return process_report(self)

    def reports(self) -> list[dict]:
        """The reports of all the join processes of this worker, this one first."""
        return [self.report(), *(self.peers.poll().values() if self.peers is not None else ())]

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        processes = process_count(self.config.processes)
        if processes > 1:
            self.peers = JoinProcesses(self.config, processes - 1)
            self.peers.start()
        self.producer, self.idempotent = await join_clients.producer(self.config)
        startup.mark("producer")
        self.deadletters = DeadLetterWriter.for_config(self.config, self.producer, self.stats.dead_letters)
        self._state_reader = join_clients.state_reader(self.config)
        await self._state_reader.start()
        self._snapshots = SnapshotStore.for_config(self.config, self.producer, self._state_reader)
        self.consumer = join_clients.consumer(self.config)
        self.checkpoints = Checkpoints(self._snapshots, self.consumer, self.stats, self.parts, self._on_partials)
        self.output = PartitionOutput(self.config, self.producer, self.deadletters, self.consumer, self.stats)
        await self.consumer.start()
        startup.mark("consumer")
        self.consumer.subscribe(list(self.topics.sources), listener=_Rebalance(self))
        await self._snapshots.warm()  # while the broker holds the group join

    def request_stop(self) -> None:
        """`run` returns after the batch in hand."""
        self._stopping.set()

    async def stop(self) -> None:
        self._stopping.set()
        if self.peers is not None:
            await asyncio.to_thread(self.peers.stop)
        if self.consumer is not None:
            async with self._lock:
                await self.checkpoints.write(list(self.parts.values()))
                self._closed = True  # `run`, waiting for the lock, must not touch the state past this checkpoint
            await self.consumer.stop()
        for client in (self._state_reader, self.producer):
            if client is not None:
                await client.stop()

    async def run(self) -> None:
        """Consume until stopped: batches in, labeled records and snapshots out."""
        assert self.consumer is not None
        gc_policy.collect_young_only()  # no collection walks the long-lived state while the loop runs
        # The loop waits for the GIL after each system call while a thread (snapshot encoding, the publisher)
        # runs Python: up to a switch interval each time. 1 ms, not 5: loop steps of many calls stalled 100 ms.
        sys.setswitchinterval(0.001)
        last_checkpoint = last_partials = time.monotonic()
        while not self._stopping.is_set():
            batch = await self.consumer.getmany(
                timeout_ms=200, max_records=min(FETCH_RECORDS, FETCH_SLICES * self._slice_records)
            )
            if batch:
                startup.mark("first_batch")
            # The lock spans the fetch: a checkpoint, a revocation or `stop` sees its records joined and emitted
            # or not at all (drained examples and facts are not in a snapshot, the offsets moved on).
            async with self._lock:
                if self._closed:  # `stop` wrote the final checkpoint (and closes the producer) meanwhile
                    return
                await self._process(batch)
                now = time.monotonic()
                if now - last_checkpoint >= self.config.checkpoint_interval_ms / 1000:
                    last_checkpoint = last_partials = now
                    await self.checkpoints.write(list(self.parts.values()))
                elif now - last_partials >= self.config.partials_interval_ms / 1000:
                    last_partials = now
                    await self.checkpoints.send_partials(list(self.parts.values()))

    # -- one batch -----------------------------------------------------------------------------
    def _size_slices(self, records: int, held_s: float) -> None:
        """The next slices' size: what holds the loop SLICE_TARGET_S at the rate of this one (routing and joining
        `records` held it `held_s`), within [MIN_SLICE_RECORDS, FETCH_RECORDS]."""
        if records and held_s > 0:
            fit = int(records * SLICE_TARGET_S / held_s)
            self._slice_records = min(FETCH_RECORDS, max(MIN_SLICE_RECORDS, fit))

    async def _process(self, batch: dict[TopicPartition, list]) -> None:
        """Join the fetch slice by slice, handing the loop back between slices; then each partition emits once.
        Emitting (expiry, delay facts, fold, the labeled record) costs per call, not per record: once a slice,
        with slices of a few hundred records, it halved the worker's throughput (docs/pipeline.md). A partition
        whose expiry waited for its label topics emits again on every fetch, with records or without: after the
        last records of a stream nothing else would close its windows."""
        started = time.perf_counter()
        out: dict[int, Routed] = {}  # partition -> the fetch's dead letters and re-keys
        for part in slices(batch, lambda: self._slice_records):
            self._join(part, out)
            await asyncio.sleep(0)  # heartbeats, the agent and the refresh timer between slices
        waiting = {p for p, state in self.parts.items() if state.expiry_deferred}
        sends: list[asyncio.Future] = []
        for partition in sorted(out.keys() | waiting):
            sends += await self.output.batch(out.get(partition, Routed()), self.parts[partition])
            await asyncio.sleep(0)
        if sends:
            await asyncio.gather(*sends)
        if batch:
            self.stats.batches += 1
            self.stats.batch_seconds += time.perf_counter() - started

    def _join(self, batch: dict[TopicPartition, list], out: dict[int, Routed]) -> None:
        """Route and join one slice; its refused and re-keyed events are added to `out` for the fetch's sends."""
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
        for partition in sorted(routed):
            r = routed[partition]
            self.parts[partition].join.process(r.impressions, r.actions, now_ms, r.impression_ids)
            fetch = out.setdefault(partition, Routed())
            fetch.refused += r.refused
            fetch.rekeys += r.rekeys
        self._size_slices(sum(len(messages) for messages in batch.values()), time.perf_counter() - started)


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
                await w.checkpoints.write(states, deadline=time.monotonic() + w.config.rebalance_timeout_ms / 2000)
            for state in states:
                w._snapshots.forget(state.partition)

    async def on_partitions_assigned(self, assigned) -> None:
        w = self.worker
        assert w._snapshots is not None and w.consumer is not None
        startup.mark("assigned")
        async with w._lock:
            partitions = sorted({tp.partition for tp in assigned} - set(w.parts))
            w._n_partitions = len(w.consumer.partitions_for_topic(w.topics.impressions) or ()) or w._n_partitions
            blobs = await w._snapshots.claim_all(partitions)  # one round trip for all, not four per partition
            unread: list[TopicPartition] = []
            for partition in partitions:
                state = w.parts[partition] = self._restore(partition, blobs[partition])
                for topic in w.topics.sources:
                    tp = TopicPartition(topic, partition)
                    if tp not in assigned:
                        continue
                    if topic in state.offsets:
                        w.consumer.seek(tp, state.offsets[topic])
                    else:
                        unread.append(tp)
            if unread:  # one offset reset for all: one each waited out a fetch in turn (4 s for 12 on Apache Kafka)
                await w.consumer.seek_to_beginning(*unread)
            w.ready.set()
            startup.mark("restored")

    def _new_join(self, snapshot: bytes | None = None) -> PartitionJoin:
        c = self.worker.config
        args = (self.worker._model_config, c.grace_ms, c.holdout_percent)
        if snapshot is None:
            return PartitionJoin(*args, clock_skew_ms=c.clock_skew_ms)
        return PartitionJoin.restore(snapshot, *args, clock_skew_ms=c.clock_skew_ms)

    def _restore(self, partition: int, blob: bytes | None) -> PartitionState:
        state = PartitionState.from_blob(partition, blob, self._new_join, self.worker._model_config)
        self.worker.guard.observe(state.partials.calibrators)
        if blob is not None:
            log.info("partition %d restored at seq %d, offsets %s", partition, state.seq, state.offsets)
        return state
