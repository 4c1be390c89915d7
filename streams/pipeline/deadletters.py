"""Dead letters: the records the worker writes to the dead-letter topic, and their headers.

Every refused input ends here, counted per reason: a message whose events failed validation (its original
bytes), a click or conversion whose impression never came (`orphan_*`), an impression over a cardinality cap
(`cardinality:*`). One record per refused message; the headers say where it came from and why:

    recal-reason     the (first) reason                      recal-topic / -partition / -offset  its origin
    recal-index      its position in an array message (-1)  recal-invalid   events of the message refused
    recal-reasons    arrays: JSON [[index, reason], ...], the first 100
    recal-truncated  the original value's length, when the value was cut to fit the size limit

A dead letter never stops the worker: a record over `max_bytes` (an input just under the broker's limit plus
the headers above would exceed it) has its value (and, if need be, its key) cut to fit, with
`recal-truncated`; a send the broker still refuses is retried once as headers only, then logged and counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson

from streams.pipeline.events import Invalid

log = logging.getLogger("recal.deadletter")

REASON = "recal-reason"
TOPIC = "recal-topic"
PARTITION = "recal-partition"
OFFSET = "recal-offset"
INDEX = "recal-index"
INVALID = "recal-invalid"
REASONS = "recal-reasons"
TRUNCATED = "recal-truncated"
HEADERS = (REASON, TOPIC, PARTITION, OFFSET, INDEX, INVALID, REASONS, TRUNCATED)

MAX_REASONS = 100  # [index, reason] pairs listed in recal-reasons
RECORD_OVERHEAD = 512  # record and batch framing, generously: varints, CRC, timestamps, attributes
HEADER_OVERHEAD = 16  # per header: name and value lengths


@dataclass(frozen=True)
class Letter:
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return dict(self.headers).get(REASON, b"").decode()

    def size(self) -> int:
        headers = sum(len(n) + len(v) + HEADER_OVERHEAD for n, v in self.headers)
        return RECORD_OVERHEAD + len(self.value) + len(self.key or b"") + headers

    def fit(self, max_bytes: int) -> Letter:
        """This letter, or one cut to `max_bytes`: value first, then the key, `recal-truncated` added."""
        if self.size() <= max_bytes:
            return self
        headers = [(n, v) for n, v in self.headers if n != TRUNCATED]
        headers.append((TRUNCATED, str(len(self.value)).encode()))
        if sum(len(n) + len(v) + HEADER_OVERHEAD for n, v in headers) + RECORD_OVERHEAD > max_bytes // 2:
            headers = [(n, v) for n, v in headers if n != REASONS]  # the only header of unbounded length
        cut = Letter(b"", self.key, headers)
        room = max_bytes - cut.size()
        if room < 0:  # the key alone is too long: keep what fits of it
            key = (self.key or b"")[: max(0, len(self.key or b"") + room)]
            return Letter(b"", key, headers)
        return Letter(self.value[:room], self.key, headers)

    def stub(self) -> Letter:
        """Headers only: what is sent when the broker refused the letter itself."""
        return Letter(
            b"",
            None,
            [(n, v) for n, v in self.headers if n not in (REASONS, TRUNCATED)]
            + [(TRUNCATED, str(len(self.value)).encode())],
        )


def refused_message(message, invalid: list) -> Letter:
    """The original bytes of a message some of whose events were refused (`invalid`: index, reason)."""
    first = invalid[0]
    headers = [
        (REASON, first.reason.encode()),
        (TOPIC, message.topic.encode()),
        (PARTITION, str(message.partition).encode()),
        (OFFSET, str(message.offset).encode()),
        (INDEX, str(first.index).encode()),
        (INVALID, str(len(invalid)).encode()),
    ]
    if first.index >= 0:
        headers.append((REASONS, orjson.dumps([[i.index, i.reason] for i in invalid[:MAX_REASONS]])))
    return Letter(message.value if message.value is not None else b"", message.key, headers)


def orphan(reason: str, impression_id: str, ts: int, action_id: str, partition: int) -> Letter:
    """A click or conversion whose impression never arrived within the grace period."""
    doc = {"impression_id": impression_id, "ts": ts, "id": action_id}
    return Letter(
        orjson.dumps(doc), impression_id.encode(), [(REASON, reason.encode()), (PARTITION, str(partition).encode())]
    )


def refused_event(reason: str, message, index: int = -1) -> Letter:
    """A valid event refused by a worker limit (a cardinality cap): its message's bytes."""
    return refused_message(message, [Invalid(reason, index)])


class DeadLetterWriter:
    """Sends letters, counting each under its reason; never raises for a letter the broker refuses."""

    def __init__(self, producer, topic: str, max_bytes: int, counts: Counter[str]) -> None:
        self._producer = producer
        self.topic = topic
        self.max_bytes = max_bytes
        self.counts = counts  # per reason, shared with the worker's stats
        self.truncated = 0
        self.send_errors = 0

    @classmethod
    def for_config(cls, config, producer, counts: Counter[str]) -> DeadLetterWriter:
        return cls(producer, config.topics.deadletter, config.deadletter_max_bytes, counts)

    async def send(self, letter: Letter, reasons: Iterable[str] | None = None) -> asyncio.Future:
        """Queue `letter`, counting each of `reasons` (one per refused event; default: the letter's reason).
        The returned future never fails."""
        self.counts.update([letter.reason] if reasons is None else reasons)
        fitted = letter.fit(self.max_bytes)
        if fitted is not letter:
            self.truncated += 1
        return asyncio.ensure_future(self._settle(fitted))

    async def _settle(self, letter: Letter) -> None:
        try:
            await (await self._producer.send(self.topic, letter.value, key=letter.key, headers=letter.headers))
            return
        except Exception as exc:  # MessageSizeTooLarge (a broker limit below ours), a record the broker rejects
            first = exc
        stub = letter.stub()
        try:
            await (await self._producer.send(self.topic, stub.value, key=None, headers=stub.headers))
        except Exception as exc:
            self.send_errors += 1
            log.error("dead letter (%s) not written: %r, then %r", letter.reason, first, exc)
            return
        log.warning("dead letter (%s) refused by the broker (%r): sent its headers only", letter.reason, first)
