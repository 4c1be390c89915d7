"""Join-state snapshots in a Kafka topic, one partition per join partition, chunked under the
broker's message size limit.

A snapshot is a run of chunk records. Every chunk names the offset of its snapshot's first chunk
(`start`) and of the previous complete snapshot (`prev`), so a reader finds the newest complete
snapshot from the partition's last record alone, even when a writer died half-way through.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.pipeline.records import pack, unpack

CHUNK_BYTES = 900_000


class SnapshotStore:
    def __init__(self, topic: str, producer: AIOKafkaProducer, reader: AIOKafkaConsumer) -> None:
        self.topic = topic
        self._producer = producer
        self._reader = reader  # a group-less consumer used only to read snapshots back
        self._last_complete: dict[int, int] = {}

    async def write(self, partition: int, blob: bytes) -> None:
        pieces = [blob[i : i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)] or [b""]
        prev = self._last_complete.get(partition, -1)
        start = -1
        for i, piece in enumerate(pieces):
            record = pack({"i": i, "n": len(pieces), "start": start, "prev": prev}, [piece])
            meta = await (await self._producer.send(self.topic, record, partition=partition))
            if i == 0:
                start = meta.offset
        self._last_complete[partition] = start

    async def read_latest(self, partition: int) -> bytes | None:
        tp = TopicPartition(self.topic, partition)
        self._reader.assign([tp])
        end = (await self._reader.end_offsets([tp]))[tp]
        if end == 0:
            return None
        header, _ = await self._read_at(tp, end - 1)
        candidates = []
        if header["i"] == header["n"] - 1:
            candidates.append(end - 1 if header["n"] == 1 else header["start"])
        candidates.append(header["prev"])
        for start in candidates:
            if start >= 0 and (blob := await self._read_run(tp, start)) is not None:
                self._last_complete[partition] = start
                return blob
        return None

    async def _read_at(self, tp: TopicPartition, offset: int) -> tuple[dict, list]:
        self._reader.seek(tp, offset)
        while True:
            batch = await self._reader.getmany(tp, timeout_ms=5_000, max_records=1)
            if records := batch.get(tp):
                return unpack(records[0].value)

    async def _read_run(self, tp: TopicPartition, start: int) -> bytes | None:
        """The chunks of the snapshot starting at `start`, or None if another writer interleaved."""
        header, blobs = await self._read_at(tp, start)
        pieces, n = [bytes(blobs[0])], header["n"]
        for i in range(1, n):
            header, blobs = await self._read_at(tp, start + i)
            if header["i"] != i or header["start"] != start:
                return None
            pieces.append(bytes(blobs[0]))
        return b"".join(pieces)
