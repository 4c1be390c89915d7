"""The columnar join against its plain reference (`join_reference.py`) on random streams with late,
duplicate, early and orphan events, random batch cuts, skipped expiries and snapshot round trips;
and the #13 regressions that live in the join (future-dated impressions, pruned tables)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.pipeline.config import ModelConfig
from streams.pipeline.events import CLICK, CONVERSION, Action, Impression, ImpressionEvent, Prediction
from streams.pipeline.join import PartitionJoin
from tests.unit.join_reference import ReferenceJoin

T0 = 1_700_000_000_000
GRACE = 20_000
CONFIGS = {
    "ctr": ModelConfig(label="click", window_ms=30_000, allowed_lateness_ms=2_000, segment_by=(("placement",),)),
    "cvr": ModelConfig(
        label="conversion", population="click", window_ms=90_000, click_window_ms=30_000, allowed_lateness_ms=1_000
    ),
    "conv": ModelConfig(label="conversion", window_ms=60_000, allowed_lateness_ms=0),
}
SEGMENTS = [{"placement": "feed", "platform": "ios"}, {"placement": "search"}, {}, {"platform": "web", "user": "u"}]


def as_struct(e: Impression) -> ImpressionEvent:
    return ImpressionEvent(e.impression_id, e.ts, [Prediction(*p) for p in e.predictions], e.segment)


def named(join: PartitionJoin) -> list[tuple]:
    ex, _ = join.drain()
    c = ex.arrays()
    return [
        (ex.models[m], ex.versions[v], ex.segments[s], score, label, ts, bool(h))
        for m, v, s, score, label, ts, h in zip(
            *(c[k].tolist() for k in ("model", "version", "segment", "score", "label", "ts", "holdout")), strict=True
        )
    ]


def make_plan(seed: int, n: int):
    """Random impressions (repeated ids, 1-3 models), clicks and conversions before, inside and after
    their windows, orphans; arrival order jittered against event time; cut into batches, each with an
    expiry or not, a snapshot round trip or not, a wall clock or not."""
    rng = random.Random(seed)
    events: list[tuple[int, Impression | Action]] = []  # (arrival order key, event)
    for i in range(n):
        iid = f"i{rng.randrange(n + 5)}"  # repeats: duplicates
        ts = T0 + rng.randrange(0, 400_000)
        models = rng.sample(sorted(CONFIGS), rng.randint(1, 3))
        preds = [(m, rng.choice(["v1", "v2"]), round(rng.random(), 4)) for m in models]
        events.append((ts + rng.randrange(-30_000, 60_000), Impression(iid, ts, dict(rng.choice(SEGMENTS)), preds)))
        for kind in (CLICK, CONVERSION):
            for _ in range(rng.choice([0, 0, 1, 2])):
                ats = ts + rng.randrange(-5_000, 120_000)
                events.append((ats + rng.randrange(-40_000, 40_000), Action(kind, iid, ats, f"a{rng.randrange(3)}")))
        if rng.random() < 0.1:  # orphan
            events.append((ts, Action(CLICK, f"orphan{i}", ts, "o")))
    events.sort(key=lambda e: e[0])
    cuts = sorted(rng.sample(range(len(events) + 1), min(len(events) + 1, rng.randint(1, 12))))
    batches = [[e for _, e in events[a:b]] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    return [(batch, rng.random() < 0.8, rng.random() < 0.15, rng.choice([None, T0 + 200_000])) for batch in batches]


streams = st.builds(make_plan, st.integers(0, 2**32), st.integers(1, 60))


def run_both(plan, holdout: int = 30):
    ref = ReferenceJoin(CONFIGS, GRACE, holdout, 10_000)
    join = PartitionJoin(CONFIGS.__getitem__, GRACE, holdout, clock_skew_ms=10_000)
    got, counters = [], Counter()
    for batch, expire, snapshot, now in [*plan, ([], True, False, None)]:
        imps = [e for e in batch if isinstance(e, Impression)]
        acts = [e for e in batch if isinstance(e, Action)]
        ref.process(imps, acts, now)
        join.process([as_struct(e) for e in imps], acts, now)
        if expire:
            ref.expire()
            join.expire()
            got.extend(named(join))
        if snapshot:  # counters are the worker's to drain, not state
            counters += join.counters
            join = PartitionJoin.restore(join.snapshot(), CONFIGS.__getitem__, GRACE, holdout, clock_skew_ms=10_000)
    # the final ticks (enough to move the clock's quantile) close every window
    ticks = [Impression(f"tick{k}", T0 + 10**7, {}, [("ctr", "v1", 0.5)]) for k in range(4096)]
    ref.process(ticks, [], None)
    join.process([as_struct(t) for t in ticks], [], None)
    ref.expire()
    join.expire()
    got.extend(named(join))
    join.counters = counters + join.counters
    return ref, join, got


@settings(max_examples=300, deadline=None)
@given(streams)
def test_columnar_join_matches_the_reference(plan):
    ref, join, got = run_both(plan)
    assert sorted(got, key=repr) == sorted(ref.examples, key=repr)
    assert +join.counters == +ref.counters
    assert join.clock == ref.clock
    assert len(join.pending) == len(ref.pending) == 4096  # only the ticks are left
    assert join.early == ref.early


def test_the_reference_run_sees_every_path():
    """The property above is not vacuous: the generated streams hit every counter."""
    totals: dict = {}
    for seed in range(40):
        ref, _, got = run_both(make_plan(seed, 40))
        for k, v in ref.counters.items():
            totals[k] = totals.get(k, 0) + v
        totals["positive"] = totals.get("positive", 0) + sum(r[4] for r in got)
    for name in ("duplicate_impression", "late_impression", "early_click", "orphan_click", "late_click", "positive"):
        assert totals.get(name, 0) > 0, (name, totals)


# -- #13 item 1: a future-dated impression must not freeze the partition -------------------------
def _traffic(rng: random.Random, n: int, future: bool, behind_ms: int = 0):
    """Impressions 10 ms apart with clicks; with `future`, 0.1% of them 1-23 h ahead of the stream;
    wall time `behind_ms` ahead of the stream (a worker catching up on a backlog)."""
    batches = []
    for b in range(n // 500):
        imps, acts = [], []
        for i in range(b * 500, (b + 1) * 500):
            ts = T0 + i * 10
            if future and rng.random() < 0.001:
                ts += rng.randrange(3_600_000, 23 * 3_600_000)
                iid = f"future-{i}"
            else:
                iid = f"i{i}"
            imps.append(ImpressionEvent(iid, ts, [Prediction("ctr", "v1", 0.25)], {"placement": "feed"}))
            if i % 7 == 0:
                acts.append(Action(CLICK, iid, ts + 1_000, f"c{i}"))
        batches.append((imps, acts, T0 + (b + 1) * 5_000 + behind_ms))  # wall time keeps up with the stream
    end = T0 + 30 * 3_600_000  # then a day later: every window closes
    ticks = [ImpressionEvent(f"t{k}", end, [Prediction("ctr", "v9", 0.5)], None) for k in range(4096)]
    batches.append((ticks, [], end + behind_ms))
    return batches


def _run(batches, skew_ms: int) -> tuple[list[tuple], Counter]:
    join = PartitionJoin(CONFIGS.__getitem__, GRACE, 0, clock_skew_ms=skew_ms)
    got = []
    for imps, acts, now in batches:
        join.process(imps, acts, now)
        join.expire()
        got.extend(r for r in named(join))
    return got, join.counters


@pytest.mark.parametrize(
    "skew_ms, behind_ms", [(1_000, 0), (5_000, 0), (1_000, 3_600_000)], ids=["skew1s", "skew5s", "backlog1h"]
)
def test_future_dated_impressions_do_not_close_the_windows_of_the_others(skew_ms, behind_ms):
    """Before: the clock was the newest impression, so one at +1-23 h closed every window. Then, with the
    stream an hour behind wall time (a backlog), one such impression still pulled the clock to wall time."""
    clean, clean_counters = _run(_traffic(random.Random(5), 60_000, future=False, behind_ms=behind_ms), skew_ms)
    batches = _traffic(random.Random(5), 60_000, future=True, behind_ms=behind_ms)
    futures = {e.impression_id for imps, _, _ in batches for e in imps if e.impression_id.startswith("future")}
    assert 30 <= len(futures) <= 100
    dirty, dirty_counters = _run(batches, skew_ms)
    # the ordinary impressions get exactly the labels they would without the outliers (minus the
    # ones the outliers replaced), none of them late, and no window closed early
    kept = {f"i{i}" for i in range(60_000)}
    removed = {int(f.split("-")[1]) for f in futures}
    expected = [r for r in clean if (r[5] - T0) // 10 not in removed]
    ordinary = [r for r in dirty if r[5] < T0 + 3_600_000]
    assert len(dirty) - len(ordinary) == len(futures)  # labeled too, when their own windows closed
    assert sorted(ordinary, key=repr) == sorted(expected, key=repr)
    assert dirty_counters["late_impression"] == clean_counters["late_impression"] == 0
    assert dirty_counters["late_click"] == clean_counters["late_click"] == 0
    assert len(kept) == 60_000


# -- #13 item 4: interned tables hold what pending impressions use, projected on segment_by ------
def test_tables_are_pruned_and_hold_only_segment_by_dimensions():
    join = PartitionJoin(CONFIGS.__getitem__, GRACE, 0)
    for b in range(1_000):  # 1,000 distinct long segment values, one batch each, 1 s apart
        ts = T0 + b * 1_000
        imps = [
            ImpressionEvent(
                f"i{b}-{k}", ts, [Prediction("ctr", f"v{b}", 0.5)], {"placement": "p" * 100 + str(b), "user": f"u{k}"}
            )
            for k in range(20)
        ]
        join.process(imps, [])
        join.expire()
        join.drain()
    # ~32 s of windows pending, plus what was decided since the last compaction: not 1,000
    assert len(join.segments.items) < 300 and len(join.versions.items) < 300
    assert all(set(s) == {"placement"} for s in join.segments.items)  # "user" is not in segment_by
