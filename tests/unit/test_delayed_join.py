"""The join's open-window facts for label_delay = "corrected" models: which slot reports what, and a stream
through join + DelayedFeedback ends, once every window has closed, exactly in the waited-for state."""

from __future__ import annotations

import numpy as np

from recalibrators.calibrator import Calibrator
from streams.pipeline.config import ModelConfig
from streams.pipeline.delayed import DelayedFeedback
from streams.pipeline.events import CLICK, CONVERSION, Action, Impression
from streams.pipeline.join import PartitionJoin

T0 = 1_700_000_000_000
MODELS = {
    "cvr": ModelConfig(label="conversion", window_ms=60_000, allowed_lateness_ms=0, segment_by=()),
    "pcvr": ModelConfig(
        label="conversion", population="click", click_window_ms=10_000, window_ms=60_000, allowed_lateness_ms=0
    ),
    "wait": ModelConfig(label="conversion", label_delay="wait", window_ms=60_000, allowed_lateness_ms=0),
    "ctr": ModelConfig(label="click", window_ms=60_000, allowed_lateness_ms=0),
}


def _imp(iid: str, ts: int, models=("cvr", "pcvr", "wait", "ctr")) -> Impression:
    return Impression(iid, ts, {"placement": "feed"}, [(m, "v1", 0.1 + 0.01 * i) for i, m in enumerate(models)])


def _facts(join: PartitionJoin):
    opened, converted = join.drain_facts()

    def names(facts):
        return [] if facts is None else [facts.models[m] for m in facts.columns["model"].tolist()]

    return names(opened), names(converted), converted


def test_which_slot_reports_what():
    join = PartitionJoin(MODELS.get, 5_000, 0)
    join.add_impression(_imp("a", T0))
    assert _facts(join)[:2] == (["cvr"], [])  # post-click opens at its click; wait and click models never
    join.add_action(Action(CONVERSION, "a", T0 + 3_000, "v"))  # before the click: pcvr not in its population yet
    opened, converted, facts = _facts(join)
    assert (opened, converted) == ([], ["cvr"]) and facts.columns["conversion_ts"].tolist() == [T0 + 3_000]
    join.add_action(Action(CLICK, "a", T0 + 5_000, "c"))  # pcvr opens, with the conversion it had already
    assert _facts(join)[:2] == (["pcvr"], ["pcvr"])
    join.add_impression(_imp("b", T0 + 1_000))
    join.add_action(Action(CLICK, "b", T0 + 20_000, "c2"))  # after the click window: never in pcvr's population
    join.add_action(Action(CONVERSION, "b", T0 + 70_000, "v2"))  # after the 60 s window: no fact
    assert _facts(join)[:2] == (["cvr"], [])


def test_stream_through_join_ends_in_the_waited_for_state():
    rng = np.random.default_rng(5)
    join = PartitionJoin(MODELS.get, 5_000, 10)
    feedback = DelayedFeedback(MODELS.get)
    n = 3_000
    ts = T0 + np.sort(rng.integers(0, 300_000, n))
    clicks = rng.random(n) < 0.3
    convs = rng.random(n) < 0.2
    events = [(int(t), 0, i) for i, t in enumerate(ts)]
    events += [(int(ts[i]) + int(rng.integers(0, 15_000)), 1, i) for i in np.flatnonzero(clicks)]
    events += [(int(ts[i]) + int(rng.integers(0, 80_000)), 2, i) for i in np.flatnonzero(convs)]
    events.sort()
    events.append((int(ts[-1]) + 200_000, 0, -1))  # a tick: closes every window
    matured = 0
    for k in range(0, len(events), 97):
        for t, kind, i in events[k : k + 97]:
            if kind == 0:
                join.add_impression(_imp(f"i{i}", t, ("ctr",) if i < 0 else ("cvr", "pcvr", "wait", "ctr")))
            else:
                join.add_action(Action(CLICK if kind == 1 else CONVERSION, f"i{i}", t, f"a{kind}-{i}"))
        join.expire()
        for facts, learn in zip(join.drain_facts(), (feedback.opened, feedback.converted), strict=True):
            if facts is not None:
                learn(facts.columns, facts.models, facts.versions, facts.segments)
        examples, _ = join.drain()
        if len(examples):
            feedback.matured(examples.columns, examples.models, examples.versions, examples.segments)
            matured += len(examples)
        feedback.close_through(join.clock)
    assert matured > n
    assert {k[0] for k in feedback.pending} == {"cvr", "pcvr"}
    for key, pe in feedback.pending.items():  # every window closed: exactly empty, no rounding dust
        assert pe.cohorts.ids.size == 0 and np.all(pe.sums == 0.0), key
    for key, dm in feedback.delay.items():
        assert dm.cohorts.ids.size == 0 and dm.n_events > 0, key
    assert feedback.pending[("cvr", "v1", "*")].n_open == feedback.pending[("cvr", "v1", "*")].n_open_converted == 0


def test_partition_snapshot_carries_the_delayed_state_and_old_snapshots_restore():
    from streams.pipeline.partition_state import PartitionState
    from streams.pipeline.records import pack, unpack

    def new_join(blob):
        return (
            PartitionJoin(MODELS.get, 5_000, 0) if blob is None else PartitionJoin.restore(blob, MODELS.get, 5_000, 0)
        )

    state = PartitionState.from_blob(0, None, new_join, MODELS.get)
    state.join.add_impression(_imp("a", T0))
    state.join.add_action(Action(CONVERSION, "a", T0 + 3_000, "v"))
    state.learn_facts()
    ((_, blob, delayed),) = [p for p in state.take_partials() if p[0][0] == "cvr" and p[0][2] == "*"]
    # open windows go out before any example matured
    assert Calibrator.from_bytes(blob).n_seen == 0 and delayed is not None
    snapshot = state.snapshot_blob()
    back = PartitionState.from_blob(0, snapshot, new_join, MODELS.get)
    assert back.delayed.to_bytes() == state.delayed.to_bytes()
    header, blobs = unpack(snapshot)
    del header["delayed"], header["blobs"]
    old = PartitionState.from_blob(0, pack(header, [bytes(b) for b in blobs[:-1]]), new_join, MODELS.get)
    assert not old.delayed.pending and old.join.is_pending("a")
