"""Issue #6.4: >= 100,000 malformed and adversarial messages mixed with valid traffic.

Zero crashes; every bad message (every bad event of an array message) is in the dead-letter topic with the
reason it was built to get; every good event is accounted for (exact label counts, unknown models and
duplicate impressions included); worker memory stays bounded. The in-process hypothesis fuzz of
`streams.events.decode` is in test_fault_security.py.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections import Counter

import orjson
import pytest

from tests.faults.hostile import generate
from tests.support.kit import (
    Scenario,
    config_text,
    consume_all_async,
    impression,
    labels_counted,
    new_ns,
    produce,
    wait_for_counts,
)

N_BAD = int(os.environ.get("FAULT_HOSTILE_N", "100000"))
SEED = int(os.environ.get("FAULT_SEED", "6"))
MAX_RSS_MB = 1024  # the worker idles at ~130 MB; one 1 MB message is fine, a leak per message is not
N_ORPHANS = 50
N_UNKNOWN = 300


def hostile_config(ns: str) -> str:
    return config_text(ns, worker={"max_future_skew": "1d"})


@pytest.mark.slow
def test_hostile_input_is_dead_lettered_and_good_traffic_is_exact(stack, start_worker, record):
    rng = random.Random(SEED)
    ns = new_ns()
    topics = (f"{ns}-impressions", f"{ns}-clicks", f"{ns}-conversions")
    scenario = Scenario(ns, n=3_000, step_ms=10)
    scenario.add_closer_model("mystery")
    END = scenario.end_ms
    good = []
    for i, message in enumerate(scenario.messages):
        good.append(message)
        if message[0] == topics[0] and i % 10 == 0:
            good.append(message)  # a duplicate impression id: ignored by the join
    for i in range(N_UNKNOWN):  # a model the config does not know: [defaults] (click label, 10 s window)
        iid, ts = f"{ns}-unk-{i}", END + i * 100  # in event-time order after the scenario
        good.append((topics[0], iid, orjson.dumps(impression(iid, ts, "feed", models=("mystery",)))))
        if i % 5 == 0:
            good.append((topics[1], iid, orjson.dumps({"click_id": f"u{i}", "impression_id": iid, "ts": ts + 50})))
        scenario._count("mystery", "feed", 1, i % 5 == 0)
    for i in range(N_ORPHANS):  # clicks whose impression never comes: orphan_click after `grace`
        iid = f"{ns}-ghost-{i}"
        click = {"click_id": f"g{i}", "impression_id": iid, "ts": END + 60_000 + i * 50}
        good.append((topics[1], iid, orjson.dumps(click)))

    bad, reasons, kinds = generate(N_BAD, seed=SEED)
    reasons["orphan_click"] += N_ORPHANS
    # One dead letter per bad message, however many of its events are bad: headed by its first reason.
    records = Counter(why[0] for _, _, why in bad)
    records["orphan_click"] += N_ORPHANS
    # Bad messages at seeded random places between the good ones (the good ones keep their order).
    slots = sorted(rng.randrange(len(good) + 1) for _ in bad)
    mixed, j = [], 0
    for pos, (topic_index, value, _) in zip(slots, bad, strict=True):
        mixed.extend(good[j:pos])
        j = max(j, pos)
        key = None if value is not None and rng.random() < 0.2 else f"bad-{rng.randrange(1 << 30)}"
        mixed.append((topics[topic_index], key, value))
    mixed.extend(good[j:])
    expected = {k: list(v) for k, v in scenario.expected.items()}

    worker = start_worker(hostile_config(ns))
    worker.wait_ready()
    rss_before = worker.rss_mb()
    sampling = threading.Event()

    def sample_rss() -> None:
        while not sampling.is_set():
            worker.rss_mb()
            time.sleep(0.2)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        produce(stack.broker_url, mixed)
        worker.wait_for(lambda s: sum(s["events_in"].values()) >= len(mixed), 90, "everything read", poll_s=0.5)
        # Closers and ticks close every window once all else is read: a click read after the clock passed
        # it is late, not an orphan (the join cannot tell "never came" from "came and closed").
        scenario.finish(stack.broker_url, worker)
        mixed += scenario.closers() + scenario.ticks()
        total_letters = sum(reasons.values())
        try:
            worker.wait_for(
                lambda s: sum(s["dead_letters"].values()) >= total_letters, 90, "every dead letter", poll_s=1.0
            )
        except TimeoutError:
            got = Counter(worker.stats()["dead_letters"])
            raise AssertionError(f"dead letters missing {reasons - got}, unexpected {got - reasons}") from None
        counts = wait_for_counts(stack.redis_url, ns, expected, worker, timeout_s=90)
        stats = worker.stats()
    finally:
        sampling.set()
        sampler.join()
    elapsed = time.monotonic() - started
    assert worker.alive(), f"the worker crashed, see {worker.log_path}"
    total_records = sum(records.values())
    letters = asyncio.run(consume_all_async(stack.broker_url, f"{ns}-deadletter", total_records, timeout_s=120))
    by_reason = Counter(dict(r.headers)["recal-reason"].decode() for r in letters)
    refused_events = sum(int(dict(r.headers).get("recal-invalid", b"1")) for r in letters)
    record(
        scenario=f"hostile: {N_BAD:,} bad + {len(good):,} good",
        faults=N_BAD + sum(kinds.values()) - N_BAD,
        events_sent=len(mixed),
        labels_expected=sum(v[0] for (m, k), v in expected.items() if k == "*"),
        labels_counted=labels_counted(counts),
        dead_letters=dict(by_reason),
        dead_letters_expected=dict(records),
        max_rss_mb=round(worker.max_rss_mb),
        detail={"rss_before_mb": round(rss_before), "seconds": round(elapsed, 1), "kinds": dict(kinds)},
    )
    assert dict(stats["dead_letters"]) == dict(reasons)  # per refused event
    assert by_reason == records  # per dead-letter record
    assert refused_events == sum(reasons.values())
    assert counts == expected
    assert stats["join"].get("duplicate_impression", 0) >= 1
    sent_per_topic = Counter(t for t, _, _ in mixed)
    assert stats["events_in"] == {t: n for t, n in sent_per_topic.items()}
    for r in letters[:2000]:  # provenance headers on the validation dead letters
        headers = dict(r.headers)
        if not headers["recal-reason"].startswith(b"orphan_"):
            assert headers["recal-topic"].decode() in topics and int(headers["recal-offset"]) >= 0
    assert worker.max_rss_mb < MAX_RSS_MB, f"worker RSS {worker.max_rss_mb:.0f} MB"


@pytest.mark.slow
def test_one_array_message_cannot_amplify_into_the_dead_letter_topic(stack, start_worker):
    ns = new_ns()
    worker = start_worker(hostile_config(ns))
    worker.wait_ready()
    value = orjson.dumps([{}] * 2_000)
    produce(stack.broker_url, [(f"{ns}-impressions", "array", value)])
    worker.wait_for(lambda s: sum(s["events_in"].values()) >= 1, 30, "the array read")
    time.sleep(2)
    letters = asyncio.run(consume_all_async(stack.broker_url, f"{ns}-deadletter", 1, timeout_s=10))
    written = sum(len(r.value or b"") for r in letters)
    assert worker.alive()
    assert written <= 2 * len(value) + 64 * 1024, f"{len(letters)} dead letters, {written:,} bytes for {len(value):,}"
