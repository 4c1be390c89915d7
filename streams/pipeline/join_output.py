"""What one partition's batch sends, once `PartitionJoin.process` has joined it: its refused messages
(dead letters), its events owned by another partition (re-keyed), and, after expiry, its orphans and one
labeled record. Expiry waits while the partition's click/conversion inputs lag (`labels_caught_up`)."""

from __future__ import annotations

import asyncio

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.pipeline import deadletters
from streams.pipeline.config import Config
from streams.pipeline.deadletters import DeadLetterWriter
from streams.pipeline.events import CLICK, KIND_NAMES, Invalid
from streams.pipeline.join_stats import Stats
from streams.pipeline.partials_topic import paced
from streams.pipeline.partition_state import PartitionState
from streams.pipeline.routing import KIND_HEADER, Routed


class PartitionOutput:
    """The sends of a join worker's partitions through its producer; each call returns the futures."""

    def __init__(
        self,
        config: Config,
        producer: AIOKafkaProducer,
        dead_letters: DeadLetterWriter,
        consumer: AIOKafkaConsumer,
        stats: Stats,
    ) -> None:
        self.config, self.topics, self.stats = config, config.topics, stats
        self.producer, self.deadletters, self.consumer = producer, dead_letters, consumer
        self._impression_sources = {self.topics.impressions, self.topics.rekeyed}  # what moves the clock

    async def batch(self, routed: Routed, state: PartitionState) -> list[asyncio.Future]:
        """The sends of one partition's joined batch, the loop handed back every few hundred (`paced`): a send is
        ~15 us of Python (the producer's partitioner and accumulator), and a flood of 10,000 new segment values
        beyond the cap queued its dead letters in one turn of the loop, 0.16 s (test_fault_producers' stall log)."""
        sends = [await self._dead_letter(message, invalid) async for message, invalid in paced(routed.refused)]
        sends += [await self._rekey(kind, owner, event) async for kind, owner, event in paced(routed.rekeys)]
        sends += await self._emit(state)
        return sends

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

    def labels_caught_up(self, state: PartitionState) -> bool:
        """Whether the partition's click/conversion inputs are read up to (nearly) their end. While
        they lag, windows stay open: expiring now would turn unread clicks into late ones. An unknown end (no
        fetch answered for that partition yet, e.g. just after an assignment) counts as lagging, and so does a
        partition a rebalance has taken away before its revocation reached us (`highwater` asserts on it).

        An end is only known as of the fetch that reported it: a partition whose fetched records were still
        buffered is left out of the next fetches, so its end can be older than the impressions that moved the
        clock (clicks produced before a closing impression, unread, and counted late: seen on Apache Kafka).
        So each end must come from a fetch no older than the newest one of the impression sources."""
        assigned = self.consumer.assignment()
        tps = [TopicPartition(topic, state.partition) for topic in self.topics.sources]
        if any(tp not in assigned for tp in tps):
            return False
        polls = {tp: self.consumer.last_poll_timestamp(tp) for tp in tps}
        clock_fetched = max((polls[tp] or 0 for tp in tps if tp.topic in self._impression_sources), default=0)
        for tp in tps[1:]:
            highwater = self.consumer.highwater(tp)
            if highwater is None or highwater - state.offsets.get(tp.topic, 0) > self.config.max_label_lag:
                return False
            if (polls[tp] or 0) < clock_fetched:
                return False
        return True

    async def _emit(self, state: PartitionState) -> list[asyncio.Future]:
        join = state.join
        expired = self.labels_caught_up(state)
        if expired:
            join.expire()
        else:
            self.stats.expiry_deferred += 1
        state.expiry_deferred = not expired
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
            record, per_model = await state.fold(examples)
            self.stats.labeled.update(per_model)
            sends.append(await self.producer.send(self.topics.labeled, record, partition=state.partition))
        if expired:
            state.delayed.close_through(join.clock)
        return sends
