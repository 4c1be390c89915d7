"""The aggregator's input: the compacted partials topic (`streams.pipeline.partials_topic`), read in the
`{app_id}-aggregate` consumer group.

The topic is the aggregator's state. A partition that comes to this worker is read from its start: every map it
owns is rebuilt from the latest partial of each join partition and the prior stored with it, however its previous
owner ended (SIGKILL included). No offsets are committed and no changelog is kept beside it, so nothing can run
ahead of anything else. Partitions that stay through a rebalance keep their state and their position; the ones
that leave are forgotten.

While a partition is read up to the end it had at assignment, new keys wait for their prior (the record of the
one chosen before may follow); then the keys still without one choose it, and every chosen prior is written back.
The records of a retired model version's keys are deleted (tombstones); a tombstone read back removes that state.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from streams.pipeline import join_clients
from streams.pipeline.aggregator import Aggregator
from streams.pipeline.config import Config
from streams.pipeline.partials_topic import (
    PRIOR,
    decode_prior,
    encode_prior,
    paced,
    partial_key,
    prior_key,
    send_records,
    split_key,
)

log = logging.getLogger("recal.aggregate")

FETCH_RECORDS = 2_000
YIELD_EVERY = 64  # records between two hand-backs of the loop: ~0.1 ms each (unpack, peek, dict updates)


class PartialsConsumer:
    """Reads the partials partitions this worker owns into `aggregator`; see the module docstring."""

    def __init__(self, config: Config, aggregator: Aggregator) -> None:
        self.config = config
        self.topic = config.topics.partials
        self.aggregator = aggregator
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.keys: dict[int, set[str]] = {}  # partials partition -> the map keys read from it
        self.positions: dict[int, int] = {}  # partials partition -> next offset to apply
        self.catching_up: dict[int, int] = {}  # partition read from its start -> its end offset at assignment
        self._read_started: dict[int, float] = {}  # partition -> when its read from the start began (monotonic)
        self.records = 0
        self.malformed = 0  # records that are not a partial or a prior (logged, skipped)
        self._lock = asyncio.Lock()  # a batch is applied whole, or after a rebalance's assignment
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        self.producer, _ = await join_clients.producer(self.config)
        self.consumer = join_clients.partials_consumer(self.config)
        await self.consumer.start()
        self.consumer.subscribe([self.topic], listener=_Rebalance(self))

    async def stop(self) -> None:
        self._stopping.set()
        for client in (self.consumer, self.producer):
            if client is not None:
                await client.stop()

    async def run(self) -> None:
        assert self.consumer is not None
        while not self._stopping.is_set():
            batch = await self.consumer.getmany(timeout_ms=200, max_records=FETCH_RECORDS)
            async with self._lock:
                for tp, messages in batch.items():
                    await self._apply(tp.partition, messages)
                await self._finish_catch_up()
            await self._write_back()

    async def _apply(self, partition: int, messages: list) -> None:
        keys = self.keys.get(partition)
        if keys is None:  # revoked while the fetch was in flight
            return
        catching_up = partition in self.catching_up
        async for message in paced(messages, every=YIELD_EVERY):
            if message.offset < self.positions.get(partition, 0):  # fetched before a seek back: already applied
                continue
            self.positions[partition] = message.offset + 1
            self.records += 1
            try:
                key, suffix = split_key(message.key)
                if message.value is None:  # a tombstone: a retired key's record, deleted
                    if suffix.isdigit():
                        self.aggregator.remove(key, int(suffix))
                elif suffix == PRIOR:
                    self.aggregator.adopt_prior(key, decode_prior(message.value))
                    keys.add(key)
                elif self.aggregator.add(key, message.value, choose_prior=not catching_up) is not None:
                    keys.add(key)  # else a version beyond the model's cap (counted by the aggregator)
            except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
                self.malformed += 1
                log.warning("skipping malformed partials record at %d:%d: %s", partition, message.offset, exc)

    async def _finish_catch_up(self) -> None:
        assert self.consumer is not None
        for partition, end in list(self.catching_up.items()):
            # The consumer's position steps over offsets compaction removed; the last applied record's may not.
            position = await self.consumer.position(TopicPartition(self.topic, partition))
            if max(position, self.positions.get(partition, 0)) >= end:
                del self.catching_up[partition]
                self.aggregator.choose_priors(sorted(self.keys.get(partition, ())))
                log.info(
                    "partials partition %d read from its start: %d maps in %.2f s",
                    partition,
                    len(self.keys.get(partition, ())),
                    time.monotonic() - self._read_started.pop(partition),
                )

    async def _write_back(self) -> None:
        """The priors chosen since the last call, and the deletion of the retired keys' records."""
        records = [(key, prior_key(key), encode_prior(prior)) for key, prior in self.aggregator.take_chosen_priors()]
        for key, partitions in self.aggregator.take_retired():
            records += [(key, partial_key(key, p), None) for p in partitions] + [(key, prior_key(key), None)]
        if records:
            assert self.producer is not None
            await send_records(self.producer, self.topic, records)


class _Rebalance(ConsumerRebalanceListener):
    """A rebalance revokes every partition, then assigns the new set: the state of partitions that stay is kept
    (their position seeked back to), that of partitions gone is forgotten, new ones are read from their start."""

    def __init__(self, reader: PartialsConsumer) -> None:
        self.reader = reader

    async def on_partitions_revoked(self, revoked) -> None:
        pass  # decided on assignment, which knows what stays

    async def on_partitions_assigned(self, assigned) -> None:
        async with self.reader._lock:
            await self._assign(assigned)

    async def _assign(self, assigned) -> None:
        r = self.reader
        assert r.consumer is not None
        now = {tp.partition for tp in assigned if tp.topic == r.topic}
        for partition in sorted(set(r.keys) - now):
            r.aggregator.forget(sorted(r.keys.pop(partition)))
            r.positions.pop(partition, None)
            r.catching_up.pop(partition, None)
            r._read_started.pop(partition, None)
        new = [TopicPartition(r.topic, p) for p in sorted(now - set(r.keys))]
        for partition in sorted(now & set(r.keys)):
            r.consumer.seek(TopicPartition(r.topic, partition), r.positions.get(partition, 0))
        if not new:
            return
        await r.consumer.seek_to_beginning(*new)
        starts, ends = await r.consumer.beginning_offsets(new), await r.consumer.end_offsets(new)
        for tp in new:
            r.keys[tp.partition] = set()
            r.positions[tp.partition] = starts[tp]
            r.catching_up[tp.partition] = ends[tp]
            r._read_started[tp.partition] = time.monotonic()
        log.info("partials partitions %s assigned: reading them from their start", [tp.partition for tp in new])
