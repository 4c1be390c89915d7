"""Snapshots against the real embedded broker (#13 item 12): a chunk duplicated by a producer retry, a lost
snapshot, a zombie's late write, a read that cannot complete. In-process SnapshotStore clients, no worker.

Before: a duplicated chunk made its run unreadable, and the next run (whose `prev` named it) too, so the
partition silently restarted from scratch; `_read_at` waited forever for a missing record; a zombie's late
snapshot landed after the new owner's.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.dev.simulator import create_missing_topics
from streams.pipeline import snapshots
from streams.pipeline.records import pack
from streams.pipeline.snapshots import Fenced, SnapshotLost, SnapshotStore

CHUNK = 1_000


class Duplicating:
    """A producer that sends the `nth` record twice, as a retry after a lost acknowledgement does."""

    def __init__(self, producer: AIOKafkaProducer, nth: int) -> None:
        self.producer, self.nth, self.count = producer, nth, 0

    async def send(self, topic, value, partition=None, **kwargs):
        self.count += 1
        if self.count == self.nth:
            await (await self.producer.send(topic, value, partition=partition, **kwargs))
        return await self.producer.send(topic, value, partition=partition, **kwargs)


class Dying:
    """A producer whose process dies after `n` records."""

    def __init__(self, producer: AIOKafkaProducer, n: int) -> None:
        self.producer, self.left = producer, n

    async def send(self, topic, value, partition=None, **kwargs):
        if self.left == 0:
            raise ConnectionError("killed")
        self.left -= 1
        return await self.producer.send(topic, value, partition=partition, **kwargs)


@contextlib.asynccontextmanager
async def clients(broker: str):
    """(a new one-partition state topic, a producer, a reader), the clients stopped on the way out."""
    topic = f"state-{uuid.uuid4().hex[:6]}"
    await create_missing_topics(broker, [topic], 1)
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all")
    reader = AIOKafkaConsumer(bootstrap_servers=broker, group_id=None, enable_auto_commit=False)
    await producer.start()
    await reader.start()
    try:
        yield topic, producer, reader
    finally:
        await reader.stop()
        await producer.stop()


def blob(tag: str, size: int = 3 * CHUNK - 10) -> bytes:
    return (tag.encode() * size)[:size]


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(snapshots, "CHUNK_BYTES", CHUNK)


def run(coro):
    return asyncio.run(coro)


@pytest.mark.slow
def test_a_duplicated_chunk_breaks_neither_its_run_nor_the_next(stack, small_chunks):
    async def main():
        async with clients(stack.broker_url) as (topic, producer, reader):
            writer = SnapshotStore(topic, producer, reader)
            await writer.write(0, blob("A"))
            writer._producer = Duplicating(producer, nth=2)  # snapshot B: chunk 1 written twice
            await writer.write(0, blob("B"))
            writer._producer = Dying(producer, n=2)  # snapshot C: the process dies after 2 of 3 chunks
            with pytest.raises(ConnectionError):
                await writer.write(0, blob("C"))
            return await SnapshotStore(topic, producer, reader).read_latest(0)

    assert run(main()) == blob("B")


@pytest.mark.slow
def test_unreadable_snapshots_refuse_to_start_unless_told(stack):
    async def main():
        async with clients(stack.broker_url) as (topic, producer, reader):
            garbage = await (await producer.send(topic, b"\x00not a snapshot", partition=0))
            head = {"i": 1, "n": 2, "start": garbage.offset, "prev": garbage.offset, "epoch": 0}
            await (await producer.send(topic, pack(head, [b"x"]), partition=0))
            with pytest.raises(SnapshotLost, match=r"state-\w+\[0\].*on_lost_snapshot"):
                await SnapshotStore(topic, producer, reader).read_latest(0)
            assert await SnapshotStore(topic, producer, reader, on_lost="start_empty").read_latest(0) is None

    run(main())


@pytest.mark.slow
def test_a_first_snapshot_that_never_completed_is_a_fresh_start(stack, small_chunks):
    async def main():
        async with clients(stack.broker_url) as (topic, producer, reader):
            writer = SnapshotStore(topic, Dying(producer, n=1), reader)
            with pytest.raises(ConnectionError):
                await writer.write(0, blob("A"))
            return await SnapshotStore(topic, producer, reader).read_latest(0)

    assert run(main()) is None


@pytest.mark.slow
def test_a_zombie_is_fenced_by_the_new_owners_claim(stack, small_chunks):
    async def main():
        async with clients(stack.broker_url) as (topic, producer, reader):
            reader2 = AIOKafkaConsumer(bootstrap_servers=stack.broker_url, group_id=None, enable_auto_commit=False)
            await reader2.start()
            try:
                zombie = SnapshotStore(topic, producer, reader)
                assert await zombie.claim(0) is None
                await zombie.write(0, blob("Z1"))
                owner = SnapshotStore(topic, producer, reader2)  # the group moved the partition during a stall
                assert await owner.claim(0) == blob("Z1")
                with pytest.raises(Fenced):
                    await zombie.write(0, blob("Z2"))  # the zombie's late revoke snapshot
                await owner.write(0, lambda: blob("O1"))  # encoded in a thread
                assert await SnapshotStore(topic, producer, reader).read_latest(0) == blob("O1")
            finally:
                await reader2.stop()

    run(main())


class SilentReader:
    """A reader that never returns a record (the offset is gone, the broker stalls)."""

    def __init__(self, end: int) -> None:
        self.end = end

    def assign(self, tps) -> None:
        pass

    def unsubscribe(self) -> None:
        pass

    def seek(self, tp, offset) -> None:
        pass

    async def beginning_offsets(self, tps):
        return dict.fromkeys(tps, 0)

    async def end_offsets(self, tps):
        return dict.fromkeys(tps, self.end)

    async def getmany(self, tp, timeout_ms=0, max_records=None):
        await asyncio.sleep(min(timeout_ms, 50) / 1000)
        return {}


def test_every_read_is_time_bound():
    store = SnapshotStore("state", producer=None, reader=SilentReader(end=5), read_timeout_s=0.3)
    with pytest.raises(TimeoutError, match="offset 4"):  # it used to wait forever
        run(store.read_latest(0))
