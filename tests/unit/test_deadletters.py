"""Dead letters (#13 item 7): a letter over the size limit is cut to fit with a header saying so, and a letter
the broker refuses anyway never raises (the worker used to crash-loop on it)."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace

import orjson
import pytest

from streams.pipeline import deadletters
from streams.pipeline.deadletters import DeadLetterWriter, Letter
from streams.pipeline.events import Invalid

LIMIT = 1_000_000


class RefusingProducer:
    """Accepts records up to `limit` bytes (as a broker's max.message.bytes would), refuses larger ones."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent: list[Letter] = []

    async def send(self, topic, value, key=None, headers=None):
        letter = Letter(value, key, list(headers or []))
        future = asyncio.get_running_loop().create_future()
        if letter.size() > self.limit:
            future.set_exception(RuntimeError("MessageSizeTooLargeError"))
        else:
            self.sent.append(letter)
            future.set_result(None)
        return future


def message(value: bytes, key: bytes | None = b"k") -> SimpleNamespace:
    return SimpleNamespace(topic="ad-impressions", partition=3, offset=41, key=key, value=value)


def test_a_letter_under_the_limit_is_sent_whole_with_its_headers():
    letter = deadletters.refused_message(message(b'{"x": 1}'), [Invalid("bad_field:impression_id", -1)])
    assert letter.fit(LIMIT) is letter
    headers = dict(letter.headers)
    assert headers[deadletters.REASON] == b"bad_field:impression_id"
    assert headers[deadletters.OFFSET] == b"41" and headers[deadletters.INVALID] == b"1"
    assert deadletters.TRUNCATED not in headers


def test_a_message_just_under_the_limit_plus_headers_is_cut_to_fit():
    value = b"x" * (LIMIT - 100)  # valid size as input; the headers push the letter over
    invalid = [Invalid("bad_score", i) for i in range(500)]
    letter = deadletters.refused_message(message(value), invalid)
    assert letter.size() > LIMIT
    cut = letter.fit(LIMIT)
    assert cut.size() <= LIMIT
    headers = dict(cut.headers)
    assert headers[deadletters.TRUNCATED] == str(len(value)).encode()
    assert headers[deadletters.REASON] == b"bad_score"
    assert value.startswith(cut.value) and len(cut.value) > LIMIT // 2
    assert len(orjson.loads(headers[deadletters.REASONS])) == deadletters.MAX_REASONS


def test_a_huge_key_is_cut_too():
    letter = deadletters.refused_message(message(b"v" * 10, key=b"k" * (2 * LIMIT)), [Invalid("bad_field:key", -1)])
    cut = letter.fit(LIMIT)
    assert cut.size() <= LIMIT and cut.value == b"" and len(cut.key) < 2 * LIMIT


def test_the_writer_never_raises_and_counts_every_reason():
    async def run() -> tuple[RefusingProducer, DeadLetterWriter]:
        producer = RefusingProducer(LIMIT)
        counts: Counter[str] = Counter()
        writer = DeadLetterWriter(producer, "dl", LIMIT, counts)
        big = deadletters.refused_message(message(b"y" * LIMIT), [Invalid("oversized", -1)])
        mixed = [Invalid("bad_score", 0), Invalid("bad_type:ts", 1)]
        futures = [
            await writer.send(big),
            await writer.send(deadletters.refused_message(message(b"[1, 2]"), mixed), (i.reason for i in mixed)),
        ]
        await asyncio.gather(*futures)
        assert counts == Counter({"oversized": 1, "bad_score": 1, "bad_type:ts": 1})
        return producer, writer

    producer, writer = asyncio.run(run())
    assert [dict(s.headers)[deadletters.REASON] for s in producer.sent] == [b"oversized", b"bad_score"]
    assert writer.truncated == 1 and writer.send_errors == 0


@pytest.mark.parametrize("broker_limit", [10_000, 0])
def test_a_broker_limit_below_ours_gives_a_headers_only_letter_or_a_logged_error(broker_limit):
    async def run() -> DeadLetterWriter:
        writer = DeadLetterWriter(RefusingProducer(broker_limit), "dl", LIMIT, Counter())
        letter = deadletters.refused_message(message(b"z" * 50_000), [Invalid("oversized", -1)])
        await (await writer.send(letter))  # must not raise
        return writer

    writer = asyncio.run(run())
    sent = writer._producer.sent
    if broker_limit:
        assert len(sent) == 1 and sent[0].value == b"" and dict(sent[0].headers)[deadletters.TRUNCATED] == b"50000"
    else:
        assert sent == [] and writer.send_errors == 1


def test_orphan_letters_carry_reason_and_partition():
    letter = deadletters.orphan("orphan_click", "imp-1", 123, "c-1", 2)
    assert orjson.loads(letter.value) == {"impression_id": "imp-1", "ts": 123, "id": "c-1"}
    assert dict(letter.headers) == {deadletters.REASON: b"orphan_click", deadletters.PARTITION: b"2"}
