"""The raw replay's join batches (`streams.replay.raw._batches`) join exactly as one event at a time."""

from __future__ import annotations

import numpy as np
import pytest

from streams.pipeline.config import ModelConfig
from streams.pipeline.events import CLICK, CONVERSION, IMPRESSION, Action, Impression
from streams.pipeline.join import PartitionJoin
from streams.replay.raw import _batches

MODELS = {
    "ctr": ModelConfig(window_ms=10_000, allowed_lateness_ms=1_000),
    "cvr": ModelConfig(label="conversion", population="click", window_ms=20_000, click_window_ms=8_000),
}
GRACE_MS = 3_000
LATE_AFTER = min(m.horizon_ms + m.allowed_lateness_ms for m in MODELS.values())


def model_config(name: str) -> ModelConfig:
    return MODELS[name]


def random_events(seed: int, n: int = 1_500) -> list[tuple]:
    """Impressions (some duplicated), clicks and conversions (some before their impression, late, duplicated or
    orphaned), in record order with record timestamps a little off the event times."""
    rng = np.random.default_rng(seed)
    events = []
    for i in range(n):
        ts = int(rng.integers(0, 200_000))
        iid = f"i{i}" if rng.random() > 0.03 else f"i{max(0, i - 1)}"
        segment = {"platform": str(rng.choice(["ios", "web"])), "placement": str(rng.choice(["a", "b", "c"]))}
        preds = [("ctr", "v1", float(rng.uniform(0.01, 0.3))), ("cvr", str(rng.choice(["v1", "v2"])), 0.05)]
        record_ts = ts + int(rng.integers(-2_000, 2_000)) + int(rng.choice([0] * 30 + [20_000, 60_000]))  # some late
        events.append((record_ts, IMPRESSION, Impression(iid, ts, segment, preds)))
        for kind, p in ((CLICK, 0.3), (CONVERSION, 0.15), (CLICK, 0.03)):
            if rng.random() < p:
                at = ts + int(rng.integers(-4_000, 25_000))
                target = iid if rng.random() > 0.05 else f"orphan{i}"
                events.append((at + int(rng.integers(-5_000, 5_000)), kind, Action(kind, target, at, f"a{i}{kind}")))
    records = [(rts, order, kind, event) for order, (rts, kind, event) in enumerate(events)]
    return sorted(records, key=lambda e: (e[0], e[1]))


def examples(join: PartitionJoin) -> list[tuple]:
    batch, orphans = join.drain()
    out = [(a.impression_id, a.kind, a.ts) for a in orphans]
    if len(batch):
        c = batch.arrays()
        names = join.models.items, join.versions.items, join.segments.items
        for m, v, s, score, label, ts, held in zip(
            c["model"], c["version"], c["segment"], c["score"], c["label"], c["ts"], c["holdout"], strict=True
        ):
            out.append((names[0][m], names[1][v], str(names[2][s]), float(score), int(label), int(ts), bool(held)))
    return sorted(out)


@pytest.mark.parametrize("seed", range(4))
def test_batches_join_as_one_event_at_a_time(seed: int) -> None:
    events = random_events(seed)
    batched = PartitionJoin(model_config, GRACE_MS, 10)
    single = PartitionJoin(model_config, GRACE_MS, 10)
    calls = 0
    for start in range(0, len(events), 97):
        chunk = events[start : start + 97]
        for impressions, actions in _batches(batched, chunk, LATE_AFTER):
            batched.process(impressions, actions)
            calls += 1
        for _, _, kind, event in chunk:
            single.add_impression(event) if kind == IMPRESSION else single.add_action(event)
        batched.expire()
        single.expire()
        assert examples(batched) == examples(single)
        assert batched.counters == single.counters
        assert batched.clock == single.clock
    assert calls < len(events) / 2  # batches, not single events
    for kind in (
        "late_click",
        "early_click",
        "duplicate_impression",
        "orphan_click",
        "late_impression",
        "late_prediction",
    ):
        assert single.counters[kind] > 0, kind  # the stream exercises every case


def test_an_impression_made_late_by_an_earlier_one_of_the_batch_starts_a_new_batch() -> None:
    preds = [("ctr", "v1", 0.1), ("cvr", "v1", 0.1)]
    seg = {"platform": "ios"}
    events = [
        (1, 0, IMPRESSION, Impression("a", 100_000, seg, preds)),
        (2, 1, IMPRESSION, Impression("b", 100_000 - LATE_AFTER, seg, preds)),  # late once "a" moved the clock
        (3, 2, IMPRESSION, Impression("c", 99_000, seg, preds)),
        (4, 3, CLICK, Action(CLICK, "c", 100_000 + 500, "k")),
        (5, 4, CLICK, Action(CLICK, "b", 100_000 - LATE_AFTER, "l")),
    ]
    join = PartitionJoin(model_config, GRACE_MS, 10)
    batches = []
    for impressions, actions in _batches(join, events, LATE_AFTER):
        batches.append(([e.impression_id for e in impressions], [a.impression_id for a in actions]))
        join.process(impressions, actions)
    assert batches == [(["a"], []), (["b", "c"], ["c", "b"])]
    assert join.counters["late_prediction"] == 1
