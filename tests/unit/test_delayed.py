"""The stream side of the delayed-feedback correction: join facts -> pending exposure and delay models per
partition -> corrected maps; snapshots exact; the waited-for map once every window has closed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recalibrators.calibrator import Calibrator
from streams.pipeline.config import ModelConfig
from streams.pipeline.delayed import DelayedFeedback, DelayedPartial, corrected_candidate, immature_refusal
from streams.pipeline.partials import calibrator_config

HOUR, DAY = 3_600_000, 86_400_000
CFG = ModelConfig(
    label="conversion", window_ms=7 * DAY, allowed_lateness_ms=0, half_life_ms=2 * DAY, segment_by=(("site",),)
)
MODELS, VERSIONS, SEGMENTS = ["cvr"], ["v1"], [{"site": "a"}, {"site": "b"}]


def _stream(seed: int = 0, n: int = 40_000, span: int = 2 * DAY):
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, span, n))
    score = 1 / (1 + np.exp(-rng.normal(-3, 1, n)))
    p = np.clip(1.6 * score, 0, 1)
    delay = np.minimum(np.exp(np.log(DAY) + 1.5 * rng.normal(size=n)), 10 * DAY).astype(np.int64)
    label = ((rng.random(n) < p) & (delay <= CFG.window_ms)).astype(np.uint8)
    return {
        "model": np.zeros(n, np.uint16),
        "version": np.zeros(n, np.uint16),
        "segment": rng.integers(0, 2, n).astype(np.uint32),
        "score": score,
        "ts": ts,
        "holdout": rng.random(n) < 0.1,
        "label": label,
        "conversion_ts": ts + delay,
        "partition": rng.integers(0, 2, n),
    }


def _rows(cols, mask):
    return {k: v[mask] for k, v in cols.items()}


class Partition:
    """What a join partition holds: the facts in, the matured examples into calibrators per level."""

    def __init__(self) -> None:
        self.feedback = DelayedFeedback({"cvr": CFG}.get)
        self.calibrators: dict[str, Calibrator] = {}

    def step(self, cols, lo: int, hi: int) -> None:
        tables = (MODELS, VERSIONS, SEGMENTS)
        self.feedback.opened(_rows(cols, (cols["ts"] >= lo) & (cols["ts"] < hi)), *tables)
        conv = (cols["label"] == 1) & (cols["conversion_ts"] >= lo) & (cols["conversion_ts"] < hi)
        self.feedback.converted(_rows(cols, conv), *tables)
        done = _rows(cols, (cols["ts"] + CFG.window_ms >= lo) & (cols["ts"] + CFG.window_ms < hi))
        self.feedback.matured(done, *tables)
        for level, seg in (("*", None), ("site=a", 0), ("site=b", 1)):
            rows = _rows(done, done["segment"] == seg) if seg is not None else done
            cal = self.calibrators.setdefault(level, Calibrator(calibrator_config(CFG)))
            if len(rows["score"]):
                cal.learn_batch(rows["score"], rows["label"], ts_ms=rows["ts"], holdout=rows["holdout"])
        self.feedback.close_through(hi)

    def partial(self, level: str) -> bytes:
        return self.feedback.partial(("cvr", "v1", level)).encode()


def _run(cols, parts: int, until: int, step: int = HOUR):
    partitions = [Partition() for _ in range(parts)]
    for t in range(0, until, step):
        for i, partition in enumerate(partitions):
            partition.step(_rows(cols, cols["partition"] % parts == i), t, t + step)
    return partitions


def _merged_calibrator(partitions, level):
    total = Calibrator(calibrator_config(CFG))
    for p in partitions:
        total = total.merge(p.calibrators[level])
    return total


def test_corrected_map_before_any_window_closed_is_near_truth():
    cols = _stream()
    partitions = _run(cols, 2, 2 * DAY)
    cal = _merged_calibrator(partitions, "*")
    assert cal.n_seen == 0  # nothing matured: waiting would publish nothing
    m = corrected_candidate(CFG, cal, {i: p.partial("*") for i, p in enumerate(partitions)}, model="cvr")
    fit = ~cols["holdout"]
    in_window = 0.5 * (1 + math.erf(math.log(7) / 1.5 / math.sqrt(2)))  # P(delay <= 7 d), lognormal(ln 1 d, 1.5)
    truth = np.clip(1.6 * cols["score"][fit], 0, 1) * in_window
    ratio = m.apply(cols["score"][fit]).sum() / truth.sum()
    assert abs(ratio - 1) < 0.05, ratio
    metrics = m.metrics_dict
    assert metrics["matured_fraction"] == 0.0 and metrics["delay_level"] == 0
    open_counts = [p.feedback.pending[("cvr", "v1", "*")] for p in partitions]
    assert m.map_version == 3 * cal.n_seen + sum(pe.n_open + pe.n_open_converted for pe in open_counts)
    assert sum(pe.n_open for pe in open_counts) == fit.sum()


def test_partitions_merge_to_the_single_partition_state():
    cols = _stream(1, n=10_000)
    one, two = _run(cols, 1, DAY), _run(cols, 2, DAY)
    for level in ("*", "site=a"):
        m1 = corrected_candidate(CFG, _merged_calibrator(one, level), {0: one[0].partial(level)})
        m2 = corrected_candidate(CFG, _merged_calibrator(two, level), {i: p.partial(level) for i, p in enumerate(two)})
        assert m1.map_version == m2.map_version
        np.testing.assert_allclose(m2.apply(m1.x), m1.y, rtol=1e-9, atol=1e-12)


def test_after_every_window_closed_the_corrected_map_is_the_waited_for_one():
    cols = _stream(2, n=10_000, span=DAY)
    partitions = _run(cols, 2, 9 * DAY, step=6 * HOUR)
    for level in ("*", "site=b"):
        cal = _merged_calibrator(partitions, level)
        m = corrected_candidate(CFG, cal, {i: p.partial(level) for i, p in enumerate(partitions)})
        waited = cal.to_map()
        assert np.array_equal(m.x, waited.x) and np.array_equal(m.y, waited.y)
        assert m.metrics_dict["matured_fraction"] == 1.0
        assert all(p.feedback.pending[("cvr", "v1", level)].weight == 0.0 for p in partitions)
        # a replay rebuilds from the matured labels alone: the same map, byte for byte
        assert corrected_candidate(CFG, cal, {}).to_json() == m.to_json() and m.map_version == 3 * cal.n_seen


def test_snapshot_round_trip_is_exact_and_marks_every_key_dirty():
    cols = _stream(3, n=5_000)
    (p,) = _run(cols, 1, DAY)
    p.feedback.take_dirty()
    data = p.feedback.to_bytes()
    back = DelayedFeedback.from_bytes({"cvr": CFG}.get, data)
    assert back.to_bytes() == data
    assert sorted(back.dirty) == sorted(p.feedback.pending)
    key = ("cvr", "v1", "site=a")
    assert back.partial(key).encode() == p.feedback.partial(key).encode()
    assert [m is not None for m in DelayedPartial.decode(back.partial(key).encode()).chain] == [True, True]


def test_wait_and_click_models_are_ignored():
    cols = _rows(_stream(4, n=100), slice(None))
    for cfg in (ModelConfig(label="click"), ModelConfig(label="conversion", label_delay="wait")):
        feedback = DelayedFeedback({"cvr": cfg}.get)
        feedback.opened(cols, MODELS, VERSIONS, SEGMENTS)
        assert not feedback.pending and not feedback.delay
    with pytest.raises(ValueError, match="label_delay"):
        ModelConfig(label="conversion", label_delay="soon")


def _map(metrics):
    cal = Calibrator(calibrator_config(CFG))
    cal.learn_batch([0.1, 0.2], [0, 1], ts_ms=0)
    return cal.to_map(metrics=metrics)


def test_gate_keeps_a_matured_map_over_a_thin_or_extrapolated_correction():
    matured = _map({"matured_fraction": 1.0})
    thin = _map({"matured_fraction": 0.4, "delay_method": "life_table", "delay_events": 50.0})
    tail = _map({"matured_fraction": 0.4, "delay_method": "lognormal", "delay_events": 5000.0})
    good = _map({"matured_fraction": 0.4, "delay_method": "life_table+lognormal", "delay_events": 5000.0})
    assert "50 < 200" in immature_refusal(thin, matured, 200)
    assert "lognormal" in immature_refusal(tail, matured, 200)
    assert immature_refusal(good, matured, 200) is None
    assert immature_refusal(thin, None, 200) is None  # a first map: the usual gate decides
    assert immature_refusal(thin, good, 200) is None  # corrected over corrected
    assert immature_refusal(matured, good, 200) is None


def test_aggregator_publishes_corrected_maps_and_keeps_a_matured_one_over_a_thin_correction():
    from streams.pipeline.aggregator import Aggregator, encode_partial

    cols = _stream(5)
    partitions = _run(cols, 2, 2 * DAY)
    agg = Aggregator({"cvr": CFG}.get)
    for i, p in enumerate(partitions):
        record = encode_partial(i, "cvr", "v1", "*", p.calibrators["*"], p.partial("*"))
        state = agg.add("cvr:v1:*", record)
    (m,) = agg.take_dirty(0)
    expected = corrected_candidate(CFG, _merged_calibrator(partitions, "*"), state.delayed)
    assert m.map_version == expected.map_version and np.array_equal(m.y, expected.y)
    assert m.metrics_dict["matured_fraction"] == 0.0 and "eval_weight" in m.metrics_dict  # both metric sets

    matured = _merged_calibrator(_run(_stream(6, n=5_000, span=DAY), 1, 9 * DAY, step=6 * HOUR), "*")
    agg.published["cvr:v1:*"] = matured.to_map(model="cvr", model_version="v1", segment={}, map_version=1)
    thin = _run(_stream(7, n=2_000), 1, DAY)[0]  # a day of 2,000 clicks: too little to rest a correction on
    agg.states["cvr:v1:*"].delayed = {0: thin.partial("*")}
    agg.dirty["cvr:v1:*"] = None
    assert agg.take_dirty(0) == [] and "keeping the matured map" in agg.refused["cvr:v1:*"]


def test_dashboard_map_page_says_how_mature_a_corrected_map_is():
    from streams.dashboard.pages import render_map

    partitions = _run(_stream(8, n=20_000), 1, 2 * DAY)
    m = corrected_candidate(CFG, partitions[0].calibrators["*"], {0: partitions[0].partial("*")}, model="cvr")
    page = render_map(m, [m])
    assert "matured 0.0% · delay median " in page and "life_table+lognormal" in page
    assert "matured" not in render_map(_map({"ece_raw": 0.01}), [])


def test_windows_open_before_the_state_began_are_left_out_exactly():
    """A switch from "wait" (or a snapshot from before label_delay): the windows opened before it were never
    added, so their conversions and closes are not taken out; the state is, at every step, the one of a stream
    that had only the later windows."""
    cols = _stream(9, n=8_000, span=2 * DAY)
    later = _rows(cols, cols["ts"] >= DAY + 1)  # the switch at day 1 (+ 1 ms: the first window opened after it)
    switched, fresh = Partition().feedback, Partition().feedback
    tables = (MODELS, VERSIONS, SEGMENTS)
    most_open = 0
    for t in range(0, 10 * DAY, 6 * HOUR):
        for feedback, facts in ((switched, cols), (fresh, later)):
            feedback.opened(_rows(later, (later["ts"] >= t) & (later["ts"] < t + 6 * HOUR)), *tables)
            conv = (facts["label"] == 1) & (facts["conversion_ts"] >= t) & (facts["conversion_ts"] < t + 6 * HOUR)
            feedback.converted(_rows(facts, conv), *tables)
            end = facts["ts"] + CFG.window_ms
            feedback.matured(_rows(facts, (end >= t) & (end < t + 6 * HOUR)), *tables)
            feedback.close_through(t + 6 * HOUR)
        assert switched.to_bytes() == fresh.to_bytes(), t
        if (pe := switched.pending.get(("cvr", "v1", "*"))) is not None:
            most_open = max(most_open, pe.n_open)
    pe = switched.pending[("cvr", "v1", "*")]
    assert most_open > 0 and pe.n_open == pe.n_open_converted == 0 and not pe.weight


def test_a_settings_change_between_runs_is_carried_over_and_ends_at_the_waited_for_state(caplog):
    """n_bins and half_life change between two runs (a restart from a snapshot, and an aggregator still holding
    partials of the old run): no error, the map version never goes back, and once every window has closed the
    corrected map is the waited-for one and the pending state exactly empty."""
    import dataclasses

    changed = dataclasses.replace(CFG, n_bins=128, half_life_ms=3 * DAY)
    cols = _stream(10, n=6_000, span=2 * DAY)
    (before,) = _run(cols, 1, DAY)
    old_partial = before.partial("*")
    after = Partition()
    after.feedback = DelayedFeedback.from_bytes({"cvr": changed}.get, before.feedback.to_bytes())
    after.calibrators = {k: c.with_config(calibrator_config(changed)) for k, c in before.calibrators.items()}
    assert "delayed-feedback settings changed since the snapshot (bins, half_life_ms)" in caplog.text
    pe = after.feedback.pending[("cvr", "v1", "*")]
    assert pe.n_open == before.feedback.pending[("cvr", "v1", "*")].n_open > 0 and pe.weight == 0.0
    # the aggregator may still hold the old run's partial of a partition: carried over as the join does
    stale = corrected_candidate(changed, after.calibrators["*"], {0: old_partial})
    assert stale.to_json() == corrected_candidate(changed, after.calibrators["*"], {0: after.partial("*")}).to_json()

    versions = [stale.map_version]
    for t in range(DAY, 10 * DAY, 6 * HOUR):
        after.step(cols, t, t + 6 * HOUR)
        versions.append(corrected_candidate(changed, after.calibrators["*"], {0: after.partial("*")}).map_version)
    assert versions == sorted(versions) and versions[-1] > versions[0]
    pe = after.feedback.pending[("cvr", "v1", "*")]
    assert pe.cohorts.ids.size == 0 and np.all(pe.sums == 0.0) and pe.n_open == 0
    final = corrected_candidate(changed, after.calibrators["*"], {0: after.partial("*")})
    assert final.to_json() == corrected_candidate(changed, after.calibrators["*"], {}).to_json()


def test_keys_share_the_merged_delay_model_of_a_common_level_and_the_result_is_unchanged():
    """A model's coarse level is the same for every key: merged (and its curve fitted) once, not per key."""
    from streams.pipeline.delayed import merge_delayed

    partitions = _run(_stream(3, n=8_000), 2, DAY)
    a, b = ({i: p.partial(site) for i, p in enumerate(partitions)} for site in ("site=a", "site=b"))
    merged_a, merged_b = merge_delayed(CFG, a), merge_delayed(CFG, b)
    assert merged_a.chain[-1] is merged_b.chain[-1]  # the model-wide level
    assert merged_a.chain[0] is not merged_b.chain[0]
    by_decode = [DelayedPartial.decode(a[i]) for i in sorted(a)]  # each partition's models decoded on their own
    for level, model in enumerate(merged_a.chain):
        alone = by_decode[0].chain[level].merge(by_decode[1].chain[level])
        assert model.to_bytes() == alone.to_bytes()
        assert np.array_equal(model.curve(merged_a.now_ms).g, alone.curve(merged_a.now_ms).g)
