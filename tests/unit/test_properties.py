import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recalibrators import CalibrationMap, Calibrator, CalibratorConfig

HL = 10_000.0
CONFIGS = [
    CalibratorConfig(half_life_ms=HL, holdout_half_life_ms=HL / 3),
    CalibratorConfig(method="platt", n_bins=16, half_life_ms=HL, prior_strength=5.0),
]

event = st.tuples(
    st.one_of(st.floats(0, 1), st.sampled_from([0.0, 1.0, 1e-9, 0.02, 1 - 1e-9])),  # score
    st.integers(0, 1),  # label
    st.one_of(st.just(1.0), st.floats(0, 100)),  # weight
    st.integers(0, int(20 * HL)),  # ts_ms
    st.booleans(),  # held back
)
events = st.lists(event, min_size=1, max_size=60)


def arrays(evs):
    cols = list(zip(*evs, strict=True))
    return (
        np.array(cols[0]),
        np.array(cols[1]),
        np.array(cols[2]),
        np.array(cols[3], dtype=np.int64),
        np.array(cols[4]),
    )


def feed(cal, evs, cuts=()):
    s, y, w, t, h = arrays(evs)
    bounds = [0, *sorted({c % len(evs) for c in cuts}), len(evs)]
    for lo, hi in itertools.pairwise(bounds):
        if hi > lo:
            cal.learn_batch(s[lo:hi], y[lo:hi], w[lo:hi], ts_ms=t[lo:hi], holdout=h[lo:hi])
    return cal


def assert_valid_map(m: CalibrationMap):
    assert np.all(np.diff(m.x) > 0) and np.all(np.diff(m.y) >= 0)
    assert m.x[0] >= 0 and m.x[-1] <= 1 and m.y[0] >= 0 and m.y[-1] <= 1
    assert np.all(np.isfinite(m.y))


@settings(max_examples=150, deadline=None, database=None)
@given(events, st.sampled_from(CONFIGS))
def test_maps_are_monotone_and_in_unit_interval(evs, cfg):
    cal = feed(Calibrator(cfg), evs)
    m = cal.to_map()
    assert_valid_map(m)
    probe = np.linspace(0, 1, 101)
    assert np.all(np.diff(m.apply(probe)) >= 0)


@settings(max_examples=150, deadline=None, database=None)
@given(events, events, st.lists(st.integers(0, 1000), max_size=4), st.sampled_from(CONFIGS))
def test_merge_equals_single_calibrator_on_both_streams(evs_a, evs_b, cuts, cfg):
    a, b = feed(Calibrator(cfg), evs_a), feed(Calibrator(cfg), evs_b, cuts)
    single = feed(Calibrator(cfg), list(reversed(evs_b)) + evs_a, cuts)
    for merged in (a.merge(b), b.merge(a)):
        np.testing.assert_allclose(merged.histogram.sums, single.histogram.sums, rtol=1e-9, atol=1e-300)
        np.testing.assert_allclose(merged.holdout.sums, single.holdout.sums, rtol=1e-9, atol=1e-300)
        assert merged.n_seen == single.n_seen and merged.last_event_ms == single.last_event_ms
        mm, ms = merged.to_map(), single.to_map()
        np.testing.assert_allclose(mm.x, ms.x, rtol=1e-9)
        np.testing.assert_allclose(mm.y, ms.y, rtol=1e-9, atol=1e-15)


@settings(max_examples=150, deadline=None, database=None)
@given(events, st.sampled_from(CONFIGS), st.text(max_size=8), st.dictionaries(st.text(max_size=5), st.text(max_size=5)))
def test_json_round_trip_is_exact(evs, cfg, version, segment):
    m = feed(Calibrator(cfg), evs).to_map(model="ctr", model_version=version, segment=segment)
    back = CalibrationMap.from_json(m.to_json())
    assert back == m
    assert back.x.tobytes() == m.x.tobytes() and back.y.tobytes() == m.y.tobytes()


@settings(max_examples=150, deadline=None, database=None)
@given(events, events, st.sampled_from(CONFIGS))
def test_state_bytes_round_trip(evs, prior_evs, cfg):
    prior = feed(Calibrator(cfg), prior_evs).to_map(model_version="old")
    for cal in (feed(Calibrator(cfg), evs), feed(Calibrator(cfg, prior=prior), evs)):
        back = Calibrator.from_bytes(cal.to_bytes())
        assert back.to_map() == cal.to_map()
        assert back.to_bytes() == cal.to_bytes()
        np.testing.assert_array_equal(back.holdout.sums, cal.holdout.sums)
