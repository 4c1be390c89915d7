"""Join-state snapshots in a Kafka topic, one partition per join partition, chunked under the
broker's message size limit.

A snapshot is a run of chunk records. Every chunk names the offset of its snapshot's first chunk
(`start`; -1 in the first chunk itself) and of the previous complete snapshot (`prev`), so a reader finds
the newest complete snapshot from the partition's last record alone, even when a writer died half-way.

Robustness (#13 item 12):
- A run is read by scanning forward from its start and keeping the first copy of each chunk that names
  that start: a chunk duplicated by a producer retry, or a zombie's records interleaved, cannot make it
  unreadable.
- Every read is bounded by `read_timeout_s` (TimeoutError: the worker stops and its supervisor retries; a
  timeout is never taken for a lost snapshot), and an offset retention already deleted is detected (the
  reader used to wait forever for it).
- Never a silent restart from scratch: when the partition holds snapshots but none can be read,
  `SnapshotLost` is raised (the worker refuses to start, naming the partition and the offset), unless the
  operator opted in with `[worker] on_lost_snapshot = "start_empty"`.
- Fencing: chunks carry the writer's ownership `epoch`. `claim` (on assignment) reads the newest snapshot
  and writes a claim record with a higher epoch; before each write a writer checks that nobody else wrote
  since its own last record, and a writer that finds a higher epoch there raises `Fenced` instead of
  writing (a zombie that lost its partitions in a stall cannot bury the new owner's state).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

from streams.pipeline.records import pack, unpack

log = logging.getLogger("recal.snapshots")

CHUNK_BYTES = 900_000
ON_LOST = ("fail", "start_empty")


class SnapshotLost(RuntimeError):
    """The partition has snapshots, but none can be read: starting empty would silently drop its state."""


class Fenced(RuntimeError):
    """Another worker claimed the partition after us: this process must not write its state any more."""


class SnapshotStore:
    def __init__(
        self,
        topic: str,
        producer: AIOKafkaProducer,
        reader: AIOKafkaConsumer,
        *,
        read_timeout_s: float = 60.0,
        on_lost: str = "fail",
    ) -> None:
        if on_lost not in ON_LOST:
            raise ValueError(f"on_lost_snapshot must be one of {ON_LOST}, not {on_lost!r}")
        self.topic = topic
        self._producer = producer
        self._reader = reader  # a group-less consumer used only to read snapshots back
        self.read_timeout_s = read_timeout_s
        self.on_lost = on_lost
        self._last_complete: dict[int, int] = {}
        self._epoch: dict[int, int] = {}  # partition -> our ownership epoch
        self._next: dict[int, int] = {}  # partition -> the offset after our own last record
        self.bytes_written = 0
        self.write_seconds = 0.0
        self.state_bytes: dict[int, int] = {}  # partition -> size of its last snapshot

    @classmethod
    def for_config(cls, config, producer: AIOKafkaProducer, reader: AIOKafkaConsumer) -> SnapshotStore:
        """The store of a worker config's state topic, with its read timeout and lost-snapshot policy."""
        return cls(
            config.topics.state,
            producer,
            reader,
            read_timeout_s=config.snapshot_read_timeout_ms / 1000,
            on_lost=config.on_lost_snapshot,
        )

    # -- writing ---------------------------------------------------------------------------------------
    async def claim(self, partition: int) -> bytes | None:
        """The newest complete snapshot of `partition` (None: there never was one), after which this
        process owns the partition: a claim record with an epoch above every one seen is written."""
        return (await self.claim_all([partition]))[partition]

    async def warm(self) -> None:
        """Fetch the state topic's metadata and end offsets once, before the first assignment: a new
        worker does it while the broker holds its group join, so `claim_all` then finds both ready."""
        await self._producer.partitions_for(self.topic)
        await self._reader.topics()  # one Metadata round trip
        partitions = self._reader.partitions_for_topic(self.topic) or set()
        if tps := [TopicPartition(self.topic, p) for p in sorted(partitions)]:
            await self._reader.end_offsets(tps)

    async def claim_all(self, partitions: list[int]) -> dict[int, bytes | None]:
        """`claim` of several partitions at once: one end-offsets lookup for all of them (a partition that
        never had a record has no snapshot to read) and the claim records sent together."""
        tps = [TopicPartition(self.topic, p) for p in partitions]
        ends = await self._reader.end_offsets(tps)
        found = {
            p: (None, 0) if ends[tp] == 0 else await self._read_latest(p) for p, tp in zip(partitions, tps, strict=True)
        }
        sends = []
        for p, (_, epoch) in found.items():
            self._epoch[p] = epoch + 1
            header = {"claim": True, "i": 0, "n": 0, "start": -1, "epoch": epoch + 1}
            header["prev"] = self._last_complete.get(p, -1)
            sends.append(await self._producer.send(self.topic, pack(header, []), partition=p))
        for p, meta in zip(found, await asyncio.gather(*sends), strict=True):
            self._next[p] = meta.offset + 1
        return {p: blob for p, (blob, _) in found.items()}

    async def write(self, partition: int, blob: bytes | Callable[[], bytes]) -> None:
        """Write one snapshot; `blob` may be a callable, then encoded in a thread (off the event loop)."""
        await self._check_fence(partition)
        started = time.perf_counter()
        if callable(blob):
            blob = await asyncio.to_thread(blob)
        pieces = [blob[i : i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)] or [b""]
        prev = self._last_complete.get(partition, -1)
        epoch = self._epoch.get(partition, 0)
        start = -1
        for i, piece in enumerate(pieces):
            record = pack({"i": i, "n": len(pieces), "start": start, "prev": prev, "epoch": epoch}, [piece])
            meta = await (await self._producer.send(self.topic, record, partition=partition))
            if i == 0:
                start = meta.offset
            self._next[partition] = meta.offset + 1
        self._last_complete[partition] = start
        self.state_bytes[partition] = len(blob)
        self.bytes_written += len(blob)
        self.write_seconds += time.perf_counter() - started

    def estimate_s(self, partition: int) -> float:
        """Seconds the next snapshot of `partition` should take: its last size at the measured rate."""
        if not self.write_seconds or not self.bytes_written:
            return 0.0
        return self.state_bytes.get(partition, 0) * self.write_seconds / self.bytes_written

    def forget(self, partition: int) -> None:
        for table in (self._epoch, self._next, self._last_complete, self.state_bytes):
            table.pop(partition, None)

    async def _check_fence(self, partition: int) -> None:
        """Raise Fenced when a record with a higher epoch than ours follows our own last record."""
        expected = self._next.get(partition)
        if expected is None:
            return  # never claimed (tests, tools): no fence
        tp = TopicPartition(self.topic, partition)
        end = (await self._reader.end_offsets([tp]))[tp]
        if end == expected:
            return
        with self._reading(tp):
            header = await self._header_at(tp, end - 1)
        theirs, ours = header.get("epoch", 0), self._epoch.get(partition, 0)
        if theirs > ours:
            raise Fenced(f"{self.topic}[{partition}] was claimed with epoch {theirs} (ours {ours})")
        log.warning(
            "%s[%d]: a writer of epoch %d (ours %d) wrote after us; ignored", self.topic, partition, theirs, ours
        )

    # -- reading ---------------------------------------------------------------------------------------
    async def read_latest(self, partition: int) -> bytes | None:
        return (await self._read_latest(partition))[0]

    async def _read_latest(self, partition: int) -> tuple[bytes | None, int]:
        """(the newest complete snapshot or None, the highest epoch seen)."""
        with self._reading(TopicPartition(self.topic, partition)) as tp:
            return await self._read_latest_of(tp)

    async def _read_latest_of(self, tp: TopicPartition) -> tuple[bytes | None, int]:
        partition = tp.partition
        deadline = time.monotonic() + self.read_timeout_s
        begin = (await self._reader.beginning_offsets([tp]))[tp]
        end = (await self._reader.end_offsets([tp]))[tp]
        if end == 0:
            return None, 0
        if begin >= end:
            return self._lost(partition, f"retention deleted every record (offsets {begin}..{end})", None)
        header = await self._header_at(tp, end - 1, deadline)
        epoch = header.get("epoch", 0)
        candidates = []
        if not header.get("claim") and header["i"] == header["n"] - 1:
            candidates.append(end - 1 if header["n"] == 1 else header["start"])
        candidates.append(header["prev"])
        candidates = [c for c in dict.fromkeys(candidates) if c >= 0]
        if not candidates:
            return None, epoch  # the first snapshot never completed: there is no state to lose
        for start in candidates:
            if start < begin:
                log.warning("%s[%d]: snapshot at %d already deleted by retention", self.topic, partition, start)
                continue
            run = await self._read_run(tp, start, end, deadline)
            if run is not None:
                blob, run_epoch = run
                self._last_complete[partition] = start
                return blob, max(epoch, run_epoch)
        return self._lost(partition, f"no complete snapshot readable at offsets {candidates}", epoch)

    def _lost(self, partition: int, why: str, epoch: int | None) -> tuple[None, int]:
        message = f"join state snapshot of {self.topic}[{partition}] lost: {why}"
        if self.on_lost == "fail":
            raise SnapshotLost(
                f"{message}. Refusing to start this partition from scratch (its labels would be counted "
                'again or lost); set [worker] on_lost_snapshot = "start_empty" to start it empty on purpose'
            )
        log.error("%s; starting the partition empty (on_lost_snapshot = start_empty)", message)
        return None, epoch or 0

    @contextlib.contextmanager
    def _reading(self, tp: TopicPartition) -> Iterator[TopicPartition]:
        """The reader assigned to `tp` for a read, and to nothing after it: an idle reader has no fetch in
        flight (the next `assign` would wait it out) and does not poll the broker between checkpoints."""
        self._reader.assign([tp])
        try:
            yield tp
        finally:
            self._reader.unsubscribe()

    async def _header_at(self, tp: TopicPartition, offset: int, deadline: float | None = None) -> dict:
        self._reader.seek(tp, offset)
        records = await self._fetch(tp, offset, deadline or time.monotonic() + self.read_timeout_s)
        return unpack(records[0].value)[0]

    async def _fetch(self, tp: TopicPartition, offset: int, deadline: float) -> list:
        """The next records from the reader's position (at `offset`), waiting until `deadline` at most."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"reading {tp.topic}[{tp.partition}] at offset {offset}: no record in time")
            try:
                batch = await self._reader.getmany(tp, timeout_ms=int(min(remaining, 5.0) * 1000) or 1)
            except OffsetOutOfRangeError as exc:
                raise TimeoutError(f"offset {offset} of {tp.topic}[{tp.partition}] is gone: {exc}") from exc
            if records := batch.get(tp):
                return records

    async def _read_run(self, tp: TopicPartition, start: int, end: int, deadline: float) -> tuple[bytes, int] | None:
        """The chunks of the snapshot starting at `start` (first copy of each; duplicates and other
        writers' records skipped), or None when the run is incomplete before `end`."""
        self._reader.seek(tp, start)
        pieces: dict[int, bytes] = {}
        n, epoch, offset = None, 0, start
        try:
            while offset < end and (n is None or len(pieces) < n):
                for record in await self._fetch(tp, offset, deadline):
                    offset = record.offset + 1
                    header, blobs = unpack(record.value)
                    if record.offset == start:
                        if header.get("claim") or header["i"] != 0:
                            return None
                        n, epoch = header["n"], header.get("epoch", 0)
                        pieces[0] = bytes(blobs[0])
                    elif header.get("start") == start and header["i"] not in pieces:
                        pieces[header["i"]] = bytes(blobs[0])
                    if (n is not None and len(pieces) == n) or offset >= end:
                        break
        except ValueError as exc:  # a malformed record (a timeout propagates: it is no proof of loss)
            log.warning("%s[%d]: snapshot at %d unreadable: %s", tp.topic, tp.partition, start, exc)
            return None
        if n is None or len(pieces) < n:
            return None
        return b"".join(pieces[i] for i in range(n)), epoch
