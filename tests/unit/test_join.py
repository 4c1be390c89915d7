"""Pure tests of the per-partition event-time join (no Kafka): hand-built events, exact expectations.

The join's clock (high mark) is moved only by impressions, so tests advance it with impressions of a
"tick" model whose window never closes within a test; those never produce examples.
"""

from __future__ import annotations

import random
import zlib

import pytest

from streams.pipeline.config import ModelConfig
from streams.pipeline.events import CLICK, CONVERSION, Action, Impression
from streams.pipeline.join import PartitionJoin, is_holdout

T0 = 1_700_000_000_000
MARGIN = 1_000  # clock moves past a due time in the tests
LATENESS = 5_000
CTR = ModelConfig(label="click", window_ms=60_000, allowed_lateness_ms=LATENESS)
CVR = ModelConfig(
    label="conversion", population="click", window_ms=600_000, click_window_ms=60_000, allowed_lateness_ms=LATENESS
)
TICK = ModelConfig(label="click", window_ms=30 * 86_400_000, allowed_lateness_ms=0)
CONFIGS = {"ctr": CTR, "cvr": CVR, "tick": TICK}
GRACE = 30_000
SEG = {"platform": "ios", "placement": "feed"}
CTR_DUE = CTR.window_ms + LATENESS  # after the impression: the ctr slot's window plus lateness
CVR_DUE = CVR.window_ms + LATENESS


def new_join(holdout_percent: int = 0) -> PartitionJoin:
    return PartitionJoin(CONFIGS.__getitem__, GRACE, holdout_percent)


def imp(iid: str, ts: int, preds=(("ctr", "v1", 0.1),), segment=None) -> Impression:
    return Impression(iid, ts, dict(SEG if segment is None else segment), [tuple(p) for p in preds])


def click(iid: str, ts: int, cid: str = "c1") -> Action:
    return Action(CLICK, iid, ts, cid)


def conversion(iid: str, ts: int, cid: str = "v1") -> Action:
    return Action(CONVERSION, iid, ts, cid)


def tick(join: PartitionJoin, ts: int) -> None:
    """Move the high mark to `ts` (a tick impression) and expire."""
    join.add_impression(Impression(f"tick-{ts}", ts, {}, [("tick", "v0", 0.5)]))
    join.expire()


def rows(join: PartitionJoin) -> list[tuple]:
    """Drain and decode examples: (model, version, segment, score, label, ts, holdout)."""
    ex, _ = join.drain()
    return named(ex)


def named(ex) -> list[tuple]:
    c = ex.arrays()
    return [
        (ex.models[m], ex.versions[v], ex.segments[s], score, label, ts, h)
        for m, v, s, score, label, ts, h in zip(
            *(c[k].tolist() for k in ("model", "version", "segment", "score", "label", "ts", "holdout")), strict=True
        )
    ]


def labels(join: PartitionJoin) -> list[tuple[str, float, int]]:
    return [(m, score, label) for m, _, _, score, label, _, _ in rows(join)]


# -- clicks ------------------------------------------------------------------------------------
def test_click_labels_positive_only_when_window_closes():
    join = new_join()
    join.add_impression(imp("a", T0))
    join.add_action(click("a", T0 + 2_000))
    join.expire()
    assert labels(join) == []  # positives wait for the window too
    tick(join, T0 + CTR_DUE + MARGIN)
    assert rows(join) == [("ctr", "v1", SEG, 0.1, 1, T0, False)]
    assert not join.is_pending("a") and "a" not in join.clicked  # state released


def test_click_before_impression_waits_within_grace_then_labels_positive():
    join = new_join()
    tick(join, T0)
    join.add_action(click("a", T0 + 2_000))
    assert join.counters["early_click"] == 1
    tick(join, T0 + 20_000)  # still within grace: keeps waiting
    assert join.drain()[1] == []
    join.add_impression(imp("a", T0 + 1_000))
    assert "a" not in join.early
    tick(join, T0 + 1_000 + CTR_DUE + MARGIN)
    assert labels(join) == [("ctr", 0.1, 1)]
    assert join.counters["orphan_click"] == 0


def test_orphan_click_after_grace_is_counted_and_reported():
    join = new_join()
    tick(join, T0)
    orphan = click("nobody", T0 + 1_000)
    join.add_action(orphan)
    tick(join, T0 + 1_000 + GRACE - 1)
    _, orphans = join.drain()
    assert orphans == [] and join.counters["orphan_click"] == 0
    tick(join, T0 + 1_000 + GRACE + MARGIN)
    examples, orphans = join.drain()
    assert orphans == [orphan]
    assert join.counters["orphan_click"] == 1
    assert len(examples) == 0
    assert join.early == {}
    tick(join, T0 + 10 * GRACE)
    assert join.drain()[1] == []  # reported once


def test_action_older_than_grace_with_no_impression_is_late_not_waiting():
    join = new_join()
    tick(join, T0 + GRACE + 5_000)
    join.add_action(click("gone", T0 + 1_000))
    assert join.counters["late_click"] == 1
    assert join.early == {}


def test_duplicate_click_counts_once():
    join = new_join()
    join.add_impression(imp("a", T0))
    join.add_action(click("a", T0 + 1_000, "c1"))
    join.add_action(click("a", T0 + 1_000, "c1"))  # redelivered
    join.add_action(click("a", T0 + 3_000, "c2"))  # a second click on the same impression
    assert join.counters["duplicate_click"] == 2
    assert join.clicked == {"a": T0 + 1_000}
    tick(join, T0 + CTR_DUE + MARGIN)
    assert labels(join) == [("ctr", 0.1, 1)]


def test_duplicate_early_clicks_count_once():
    join = new_join()
    tick(join, T0)
    join.add_action(click("a", T0 + 1_000, "c1"))
    join.add_action(click("a", T0 + 1_000, "c1"))
    join.add_impression(imp("a", T0 + 500))
    assert join.counters["duplicate_click"] == 1
    tick(join, T0 + 500 + CTR_DUE + MARGIN)
    assert labels(join) == [("ctr", 0.1, 1)]


@pytest.mark.parametrize(
    ("click_offset", "label", "late"),
    [
        (0, 1, 0),  # ts == imp.ts: in window
        (CTR.window_ms, 1, 0),  # exactly at the window end: in window
        (CTR.window_ms + 1, 0, 1),  # just past: late
        (-1, 0, 1),  # before the impression: not attributable
    ],
)
def test_click_window_bounds(click_offset, label, late):
    join = new_join()
    join.add_impression(imp("a", T0))
    tick(join, T0 + 1_000)
    join.add_action(click("a", T0 + click_offset))
    assert join.counters["late_click"] == late
    tick(join, T0 + CTR_DUE + MARGIN)
    assert labels(join) == [("ctr", 0.1, label)]


# -- window expiry -----------------------------------------------------------------------------
def test_negative_only_once_high_mark_minus_lateness_passes_window_end():
    join = new_join()
    join.add_impression(imp("a", T0))
    join.add_action(click("z-other", T0 + 10 * CTR_DUE))  # actions never move the clock
    join.expire()
    assert join.high_mark == T0
    tick(join, T0 + CTR.window_ms)  # the window's end, but within allowed lateness
    assert labels(join) == []
    tick(join, T0 + CTR_DUE - 1)
    assert labels(join) == []
    assert join.is_pending("a")
    tick(join, T0 + CTR_DUE + MARGIN)  # expiry is scheduled in 1 s buckets
    assert rows(join) == [("ctr", "v1", SEG, 0.1, 0, T0, False)]
    assert not join.is_pending("a")
    tick(join, T0 + 10 * CTR_DUE)
    assert labels(join) == []  # emitted once


def test_in_window_click_after_clock_passes_window_end_but_within_lateness():
    join = new_join()
    join.add_impression(imp("a", T0))
    tick(join, T0 + CTR.window_ms + LATENESS // 2)
    join.add_action(click("a", T0 + CTR.window_ms - 10))
    tick(join, T0 + CTR_DUE + MARGIN)
    assert labels(join) == [("ctr", 0.1, 1)]


# -- several models ----------------------------------------------------------------------------
def test_multi_model_impression_gives_one_example_per_model():
    join = new_join()
    join.add_impression(imp("a", T0, preds=[("ctr", "v1", 0.1), ("cvr", "v7", 0.3)]))
    join.add_action(click("a", T0 + 1_000))
    join.add_action(conversion("a", T0 + 100_000))
    tick(join, T0 + CTR_DUE + MARGIN)
    assert labels(join) == [("ctr", 0.1, 1)]  # cvr's window (600 s) is still open
    tick(join, T0 + CVR_DUE + MARGIN)
    assert rows(join) == [("cvr", "v7", SEG, 0.3, 1, T0, False)]
    assert not join.is_pending("a")


def test_post_click_model_only_sees_clicked_impressions():
    join = new_join()
    join.add_impression(imp("unclicked", T0, preds=[("ctr", "v1", 0.1), ("cvr", "v1", 0.2)]))
    join.add_impression(imp("clicked", T0, preds=[("ctr", "v1", 0.11), ("cvr", "v1", 0.21)]))
    join.add_action(click("clicked", T0 + 5_000))
    # a conversion without a click does not put the impression into cvr's population
    join.add_action(conversion("unclicked", T0 + 6_000))
    tick(join, T0 + CTR_DUE + MARGIN)
    assert sorted(labels(join)) == [("ctr", 0.1, 0), ("ctr", 0.11, 1)]
    assert not join.is_pending("unclicked")  # nothing left to decide: forgotten at the click window
    tick(join, T0 + CVR_DUE + MARGIN)
    assert labels(join) == [("cvr", 0.21, 0)]


def test_click_outside_click_window_keeps_impression_out_of_post_click_population():
    join = new_join()
    join.add_impression(imp("a", T0, preds=[("cvr", "v1", 0.2)]))
    tick(join, T0 + 1_000)
    join.add_action(click("a", T0 + CVR.click_window_ms + 1))
    join.add_action(conversion("a", T0 + CVR.click_window_ms + 2))
    tick(join, T0 + CVR_DUE + MARGIN)
    assert labels(join) == []
    assert join.counters["late_click"] == 1


def test_conversion_before_click_is_still_positive():
    join = new_join()
    join.add_impression(imp("a", T0, preds=[("ctr", "v1", 0.1), ("cvr", "v1", 0.3)]))
    join.add_action(conversion("a", T0 + 9_000))  # delivered (and timestamped) before the click
    join.add_action(click("a", T0 + 10_000))
    tick(join, T0 + CVR_DUE + MARGIN)
    assert sorted(labels(join)) == [("ctr", 0.1, 1), ("cvr", 0.3, 1)]


def test_conversion_after_window_is_negative():
    join = new_join()
    join.add_impression(imp("a", T0, preds=[("cvr", "v1", 0.3)]))
    join.add_action(click("a", T0 + 10_000))
    join.add_action(conversion("a", T0 + CVR.window_ms + 1))
    tick(join, T0 + CVR_DUE + MARGIN)
    assert labels(join) == [("cvr", 0.3, 0)]
    assert join.counters["late_conversion"] == 1


# -- impressions -------------------------------------------------------------------------------
def test_duplicate_impression_is_ignored():
    join = new_join()
    join.add_impression(imp("a", T0, preds=[("ctr", "v1", 0.1)]))
    join.add_impression(imp("a", T0 + 5, preds=[("ctr", "v2", 0.9)]))
    assert join.counters["duplicate_impression"] == 1
    tick(join, T0 + CTR_DUE + MARGIN)
    assert rows(join) == [("ctr", "v1", SEG, 0.1, 0, T0, False)]


def test_late_impression_is_dropped():
    join = new_join()
    tick(join, T0 + CTR_DUE)
    join.add_impression(imp("late", T0))
    assert join.counters["late_impression"] == 1
    assert not join.is_pending("late")
    join.add_action(click("late", T0 + 1_000))
    tick(join, T0 + 10 * CTR_DUE)
    assert labels(join) == []


def test_impression_late_for_one_model_keeps_the_other():
    join = new_join()
    tick(join, T0 + CTR_DUE)
    join.add_impression(imp("a", T0, preds=[("ctr", "v1", 0.1), ("cvr", "v1", 0.3)]))
    assert join.counters["late_prediction"] == 1 and join.counters["late_impression"] == 0
    join.add_action(click("a", T0 + 1_000))
    join.add_action(conversion("a", T0 + 2_000))
    tick(join, T0 + CVR_DUE + MARGIN)
    assert labels(join) == [("cvr", 0.3, 1)]


# -- snapshots ---------------------------------------------------------------------------------
def _script(seed: int = 3) -> list[Impression | Action]:
    """A mixed stream: clicks, early clicks, duplicates, conversions, orphans, late events."""
    rng = random.Random(seed)
    events: list[Impression | Action] = []
    segments = [{"platform": p, "placement": q} for p in ("ios", "web") for q in ("feed", "search")]
    for i in range(400):
        ts = T0 + i * 2_000
        iid = f"imp-{i:05d}"
        preds = [("ctr", "v1", round(rng.random(), 6))]
        if rng.random() < 0.7:
            preds.append(("cvr", rng.choice(["v1", "v2"]), round(rng.random(), 6)))
        impression = imp(iid, ts, preds, rng.choice(segments))
        actions: list[Action] = []
        if rng.random() < 0.4:
            c = click(iid, ts + rng.randrange(0, 70_000), f"c-{i}")
            actions.append(c)
            if rng.random() < 0.2:
                actions.append(c)  # duplicate
            if rng.random() < 0.5:
                actions.append(conversion(iid, c.ts + rng.randrange(-5_000, 300_000), f"v-{i}"))
        if rng.random() < 0.03:
            actions.append(click(f"orphan-{i}", ts, f"o-{i}"))
        if actions and rng.random() < 0.3:
            events.extend(actions)  # the actions beat the impression
            events.append(impression)
        else:
            events.append(impression)
            events.extend(actions)
    return events


def _feed(join: PartitionJoin, events, out: list) -> None:
    for n, event in enumerate(events):
        if isinstance(event, Impression):
            join.add_impression(event)
        else:
            join.add_action(event)
        if n % 7 == 0:
            join.expire()
            out.append(_drain_named(join))
    join.expire()
    out.append(_drain_named(join))


def _drain_named(join: PartitionJoin):
    examples, orphans = join.drain()
    return named(examples), list(orphans)


def _flatten(chunks) -> tuple[list, list]:
    return [r for ex, _ in chunks for r in ex], [o for _, ors in chunks for o in ors]


@pytest.mark.parametrize("cut", [101, 377, 640])
def test_snapshot_restore_continues_exactly_like_an_uninterrupted_join(cut):
    events = _script() + [imp(f"end-{k}", T0 + 2_000_000 + k, [("tick", "v0", 0.5)]) for k in range(2)]
    uninterrupted: list = []
    a = new_join(holdout_percent=20)
    _feed(a, events, uninterrupted)

    interrupted: list = []
    b = new_join(holdout_percent=20)
    _feed(b, events[:cut], interrupted)
    assert b.pending  # there is state to carry over
    blob = b.snapshot()
    c = PartitionJoin.restore(blob, CONFIGS.__getitem__, GRACE, 20)
    assert c.snapshot() == blob
    _feed(c, events[cut:], interrupted)

    ex_a, orphans_a = _flatten(uninterrupted)
    ex_c, orphans_c = _flatten(interrupted)
    assert len(ex_a) > 300 and any(r[4] == 1 for r in ex_a) and any(r[0] == "cvr" for r in ex_a)
    assert orphans_a
    assert sorted(ex_c, key=repr) == sorted(ex_a, key=repr)
    assert ex_c == ex_a  # the same order, too
    assert orphans_c == orphans_a
    assert len(c.pending) == len(a.pending)
    assert c.clicked == a.clicked and c.converted == a.converted and c.early == a.early


def test_snapshot_carries_waiting_early_actions():
    b = new_join()
    tick(b, T0)
    early = click("a", T0 + 1_000)
    b.add_action(early)
    c = PartitionJoin.restore(b.snapshot(), CONFIGS.__getitem__, GRACE, 0)
    assert c.early == {"a": [early]}
    c.add_impression(imp("a", T0 + 500))
    tick(c, T0 + 500 + CTR_DUE + MARGIN)
    assert labels(c) == [("ctr", 0.1, 1)]

    d = PartitionJoin.restore(b.snapshot(), CONFIGS.__getitem__, GRACE, 0)
    tick(d, T0 + 1_000 + GRACE + MARGIN)
    assert d.drain()[1] == [early]  # and still orphans it at the same event time


# -- holdout -----------------------------------------------------------------------------------
def test_holdout_is_deterministic_by_id():
    ids = [f"imp-{i}" for i in range(400)]
    flags = [is_holdout(i, 10) for i in ids]
    assert flags == [is_holdout(i, 10) for i in ids]
    assert flags == [zlib.crc32(i.encode()) % 100 < 10 for i in ids]
    assert 15 < sum(flags) < 70
    assert not any(is_holdout(i, 0) for i in ids)
    assert all(is_holdout(i, 100) for i in ids)


def test_examples_carry_the_holdout_flag_of_their_impression():
    join = new_join(holdout_percent=50)
    ids = [f"imp-{i}" for i in range(60)]
    for n, iid in enumerate(ids):
        join.add_impression(imp(iid, T0, [("ctr", "v1", n / 100), ("cvr", "v1", n / 100)]))
        join.add_action(click(iid, T0 + 1))
    tick(join, T0 + CVR_DUE + MARGIN)
    got = {(model, score): h for model, _, _, score, _, _, h in rows(join)}
    expected = {(m, n / 100): zlib.crc32(iid.encode()) % 100 < 50 for n, iid in enumerate(ids) for m in ("ctr", "cvr")}
    assert got == expected
    assert any(expected.values()) and not all(expected.values())


def test_action_after_its_impression_was_resolved_is_late_not_orphan():
    join = new_join()
    join.add_impression(imp("a", T0))
    tick(join, T0 + CTR_DUE + MARGIN)
    assert labels(join) == [("ctr", 0.1, 0)] and not join.is_pending("a")
    join.add_action(click("a", T0 + CTR.window_ms + 2_000))  # past the window: late, the impression was seen
    tick(join, T0 + CTR_DUE + MARGIN + GRACE + 2 * MARGIN)
    assert join.drain()[1] == []
    assert join.counters["orphan_click"] == 0 and join.counters["late_click"] == 1
