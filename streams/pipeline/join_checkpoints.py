"""A join worker's checkpoints: each partition's state and input offsets snapshotted together
(`SnapshotStore`), then its changed partial calibrators handed to the aggregator, then the offsets
committed (for lag metrics only: the snapshots hold the offsets of record)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.pipeline.join_stats import Stats
from streams.pipeline.partials_topic import paced
from streams.pipeline.partition_state import PartitionState
from streams.pipeline.snapshots import Fenced, SnapshotStore

log = logging.getLogger("recal.join")


class Checkpoints:
    def __init__(
        self,
        snapshots: SnapshotStore,
        consumer: AIOKafkaConsumer,
        stats: Stats,
        parts: dict[int, PartitionState],
        on_partials: Callable[[list], Awaitable[None]] | None,
    ) -> None:
        self.snapshots, self.consumer, self.stats = snapshots, consumer, stats
        self.parts = parts  # the worker's partitions: a fenced one is dropped from them
        self._on_partials = on_partials  # async callable(list of (partition, key, calibrator))

    async def write(self, states: list[PartitionState], deadline: float | None = None) -> None:
        """Snapshot state + offsets, hand changed partials to the aggregator, commit for lag metrics. Before
        a `deadline` (revoke) only the snapshots that fit (the rest re-read from their last one); a fenced
        partition (claimed by another worker) is dropped, its snapshot and partials unwritten."""
        kept = []
        for state in states:
            if deadline is not None and time.monotonic() + self.snapshots.estimate_s(state.partition) > deadline:
                self.stats.snapshots_skipped += 1
                log.warning("partition %d: no time left to snapshot before the rebalance deadline", state.partition)
                continue
            try:
                await self.snapshots.write(state.partition, state.snapshot_blob)
            except Fenced as exc:
                self.stats.fenced += 1
                self.parts.pop(state.partition, None)
                log.warning("partition %d dropped: %s", state.partition, exc)
                continue
            state.durable = state.seq
            self.stats.snapshots += 1
            kept.append(state)
        await self.send_partials(kept)
        offsets = {
            TopicPartition(topic, state.partition): offset for state in kept for topic, offset in state.offsets.items()
        }
        if offsets:
            try:
                await self.consumer.commit(offsets)
            except Exception as exc:
                log.info("offset commit skipped (%s); snapshots hold the offsets of record", exc)

    async def send_partials(self, states: list[PartitionState]) -> None:
        """Changed partial calibrators go to the aggregator. They are absolute states, so one sent
        ahead of a snapshot that a crash then loses is simply replaced by its recomputation."""
        # Encoded as taken, the loop handed back between every few: 30,000 new keys at once held it for 0.7 s.
        changed = ((state.partition, *partial) for state in states for partial in state.take_partials())
        partials = [partial async for partial in paced(changed)]
        if partials and self._on_partials is not None:
            await self._on_partials(partials)
