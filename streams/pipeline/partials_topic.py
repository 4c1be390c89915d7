"""The partials topic's record layout: the aggregator's whole state, compacted.

One record per (map field, join partition) holds that join partition's latest partial of the map (absolute, not a
delta: `map_state.encode_partial`), and one record per map field holds the warm-start prior the aggregator chose for
it. All of a field's records go to one partition, `field_partitions`: the aggregator that owns that partition
owns the map. Compaction keeps the latest record of each key, so reading a partition from its start rebuilds every
map it owns exactly: no other store, no changelog to keep in step with committed offsets. A retired model version's
records are deleted (tombstones), so the topic holds the live versions' state.

    >>> partial_key("ctr:v1:*", 3), prior_key("ctr:v1:*")
    (b'ctr:v1:*#3', b'ctr:v1:*#prior')
    >>> split_key(b'ctr:v1:*#3'), split_key(b'ctr:v1:*#prior'), split_key(b'ctr:v1:*')
    (('ctr:v1:*', '3'), ('ctr:v1:*', 'prior'), ('ctr:v1:*', ''))
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer

from recalibrators.serving.keys import MapField
from streams.pipeline.map_state import encode_partial
from streams.pipeline.partitioners import partitions_of
from streams.pipeline.records import pack, unpack

__all__ = [
    "PRIOR",
    "decode_prior",
    "encode_prior",
    "field_partitions",
    "paced",
    "partial_key",
    "prior_key",
    "send_partials",
    "send_records",
    "split_key",
]

PRIOR = "prior"  # the suffix of a field's prior record
PACE = 256  # records handled between two hand-backs of the event loop


def partial_key(field: str, partition: int) -> bytes:
    """The key of join partition `partition`'s partial of `field` (the field never ends in `#` + digits or `prior`:
    everything after the last `#` is the suffix)."""
    return f"{field}#{partition}".encode()


def prior_key(field: str) -> bytes:
    return f"{field}#{PRIOR}".encode()


def split_key(key: bytes) -> tuple[str, str]:
    """(map field, suffix) of a record's key: the suffix is the join partition's digits, `prior`, or "" for a partial
    an older worker keyed by field alone (still a valid partial: its value names its partition)."""
    text = key.decode()
    head, sep, suffix = text.rpartition("#")
    return (head, suffix) if sep and (suffix.isdigit() or suffix == PRIOR) else (text, "")


def field_partitions(fields: list[str], partitions: int) -> list[int]:
    """The partials partition of every record of each field (murmur2 of the field, as Kafka's default
    partitioner), vectorised: one call per ~40 us cost 2 s of a 45 s profile of a loaded worker."""
    return partitions_of([field.encode() for field in fields], partitions).tolist()


def encode_prior(prior_json: str | None) -> bytes:
    """A prior record's value: the chosen prior map's JSON, or none chosen (the key's own fit serves)."""
    return pack({"prior": prior_json})


def decode_prior(value: bytes) -> str | None:
    """ValueError for anything that is not a prior record."""
    try:
        return unpack(value)[0]["prior"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a prior record: {exc!r}") from None


async def paced(items: Iterable, every: int = PACE):
    """`items`, handing the event loop back after every `every` of them: a partials tick of thousands of
    keys (each encoded, then sent) held the loop for 0.3-0.7 s (heartbeats, the web server, the refresh); a
    fetch's dead letters and re-keys are sent through it too (`join_output`)."""
    for i, item in enumerate(items):
        if i and not i % every:
            await asyncio.sleep(0)
        yield item


async def send_records(producer: AIOKafkaProducer, topic: str, records: Iterable) -> None:
    """Send (map field, key, value or None for a tombstone) records, each to its field's partition, taken (and so
    encoded, when `records` is lazy) 256 at a time with the loop handed back between, and wait for all of them."""
    partitions = len(await producer.partitions_for(topic))
    sends, records = [], iter(records)
    while chunk := list(itertools.islice(records, PACE)):
        for (_, key, value), partition in zip(chunk, field_partitions([r[0] for r in chunk], partitions), strict=True):
            sends.append(await producer.send(topic, value, key=key, partition=partition))
        await asyncio.sleep(0)
    await asyncio.gather(*sends)


async def send_partials(producer: AIOKafkaProducer, topic: str, partials: Iterable) -> None:
    """Send (join partition, (model, model version, segment), calibrator bytes, delayed bytes or None) items."""

    def records():
        for partition, (model, model_version, segment), calibrator, delayed in partials:
            field = str(MapField(model, model_version, segment))
            value = encode_partial(partition, model, model_version, segment, calibrator, delayed)
            yield field, partial_key(field, partition), value

    await send_records(producer, topic, records())
