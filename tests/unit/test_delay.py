"""Delay model and pending exposure (recalibrators.delay*): hand-computed life tables, a simulated lognormal
truth, merging, persistence, and the final state of corrected labels equal to waiting."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recalibrators import Calibrator, CalibratorConfig
from recalibrators.delay import DelayConfig, DelayCurve, DelayModel, select_curve
from recalibrators.delay_fit import fit_lognormal_cure, life_table, norm_cdf, spread_uniform
from recalibrators.delay_pending import PendingExposure, corrected, corrected_map

HOUR, DAY = 3_600_000, 86_400_000
WINDOW = 7 * DAY
MU, SIGMA = math.log(DAY), 1.5
FLAT = 1e18  # a half-life long enough that decay is invisible in hand-computed cases


def true_g(d):
    return norm_cdf((np.log(np.maximum(d, 1.0)) - MU) / SIGMA) / norm_cdf((math.log(WINDOW) - MU) / SIGMA)


def lognormal_stream(rng, n, span_ms, p=0.05):
    """Starts uniform over [0, span); each converts in-window with prob p after a truncated-lognormal delay."""
    start = np.sort(rng.integers(0, span_ms, n))
    z = _norm_ppf(rng.random(n) * norm_cdf((math.log(WINDOW) - MU) / SIGMA))
    conv_at = start + np.minimum(np.exp(MU + SIGMA * z), WINDOW).astype(np.int64)
    return start, rng.random(n) < p, conv_at


def _norm_ppf(u):
    """Inverse of norm_cdf by bisection (vectorised)."""
    u = np.asarray(u, dtype=np.float64)
    lo, hi = np.full(u.shape, -10.0), np.full(u.shape, 10.0)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        below = norm_cdf(mid) < u
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def test_norm_cdf_matches_math_erfc():
    x = np.linspace(-9, 9, 721)
    ref = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x])
    assert np.max(np.abs(norm_cdf(x) / ref - 1)) < 2e-7


def test_life_table_hand_computed():
    # at risk: 4 survivors + all later exits -> 12, 8, 7; censored ones count half their bin -> 11, 8, 6
    surv, at_risk = life_table(np.array([2.0, 1.0, 1.0]), np.array([2.0, 0.0, 2.0]), 4.0)
    np.testing.assert_allclose(at_risk, [12, 8, 7])
    np.testing.assert_allclose(surv, [9 / 11, 9 / 11 * 7 / 8, 9 / 11 * 7 / 8 * 5 / 6])


def test_life_table_without_censoring_is_the_empirical_cdf():
    events = np.array([3.0, 0.0, 5.0, 2.0])
    surv, _ = life_table(events, np.zeros(4), 90.0)
    np.testing.assert_allclose(1 - surv, np.cumsum(events) / 100.0)


def test_delay_model_hand_computed_kaplan_meier():
    """Window 8 h, bins [0,1h) [1h,2.83h) [2.83h,8h]. Cohort A (6 windows at t=0, matured): conversions at
    30 min, 2 h, 5 h, 3 survivors. Cohort B (4 windows at 8 h, now 10 h): one conversion at 30 min, 3 open
    windows censored at age 2 h. At risk 10, 8, 4; exposed 10, 8 - 3/2, 4; hazards 2/10, 1/6.5, 1/4."""
    cfg = DelayConfig(window_ms=8 * HOUR, half_life_ms=FLAT, n_bins=3, min_delay_ms=HOUR, n_cohorts=1, min_at_risk=0)
    dm = DelayModel(cfg)
    a = np.zeros(6, dtype=np.int64)
    dm.learn_starts(a)
    dm.learn_conversions(a[:3], np.array([HOUR // 2, 2 * HOUR, 5 * HOUR]))
    dm.learn_matured(a, np.array([1, 1, 1, 0, 0, 0]))
    b = np.full(4, 8 * HOUR)
    dm.learn_starts(b)
    dm.learn_conversions(b[:1], b[:1] + HOUR // 2)
    dm.close_through(1)
    curve = dm.curve(now_ms=10 * HOUR)
    s = np.cumprod([1 - 2 / 10, 1 - 1 / 6.5, 1 - 1 / 4])
    np.testing.assert_allclose(curve.g, np.concatenate(([0.0], 1 - s)) / (1 - s[-1]), rtol=1e-9)
    assert curve.method == "life_table"
    np.testing.assert_allclose(curve.g, [0, 0.40625, 0.65625, 1.0], rtol=1e-9)


def _exact_km(observed: np.ndarray, event: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Textbook product-limit estimate on per-window data (events before censorings at ties) at `at`."""
    times, deaths = np.unique(observed[event], return_counts=True)
    at_risk = observed.size - np.searchsorted(np.sort(observed), times, side="left")
    surv = np.concatenate(([1.0], np.cumprod(1.0 - deaths / at_risk)))
    return surv[np.searchsorted(times, at, side="right")]


def test_binned_life_table_matches_exact_kaplan_meier():
    """A 14-day stream aged at day 14: the delay model's binned, cohort-spread estimate against the exact
    Kaplan-Meier estimate from every window's own delay or censoring age."""
    rng = np.random.default_rng(0)
    span = 14 * DAY
    start, conv, conv_at = lognormal_stream(rng, 100_000, span, p=0.1)
    seen = conv & (conv_at <= span)
    observed = np.where(seen, conv_at - start, np.minimum(span - start, WINDOW))
    edges = DelayConfig(window_ms=WINDOW).edges
    s = _exact_km(observed, seen, edges[1:])
    g_exact = np.concatenate(([0.0], 1 - s)) / (1 - s[-1])
    dm = DelayModel(DelayConfig(window_ms=WINDOW, half_life_ms=FLAT, n_cohorts=48))
    dm.learn_starts(start)
    dm.learn_conversions(start[seen], conv_at[seen])
    done = start + WINDOW <= span
    dm.learn_matured(start[done], seen[done].astype(int))
    dm.close_through(span - WINDOW)
    curve = dm.curve(now_ms=span)
    assert curve.method == "life_table"
    np.testing.assert_allclose(curve.g, g_exact, atol=0.004)


def test_spread_uniform_splits_by_overlap():
    edges = np.array([0.0, 1.0, 3.0, 10.0])
    out = spread_uniform(np.array([0.5, 2.0]), np.array([2.5, 2.0]), np.array([4.0, 1.0]), edges)
    np.testing.assert_allclose(out, [1.0, 3.0 + 1.0, 0.0])


def test_lognormal_cure_fit_recovers_parameters():
    edges = DelayConfig(window_ms=30 * DAY).edges
    p, mu, sigma = 0.3, math.log(DAY), 1.2
    f = norm_cdf((np.log(np.maximum(edges, 1e-9)) - mu) / sigma)
    n = 1e6
    events = n * p * np.diff(f)
    got = fit_lognormal_cure(edges, events, np.zeros(edges.size - 1), n * (1 - p * f[-1]))
    assert got == pytest.approx((p, mu, sigma), rel=0.01)


@pytest.mark.parametrize(
    ("span", "method", "tol"), [(2 * DAY, "life_table+lognormal", 0.02), (14 * DAY, "life_table", 0.01)]
)
def test_curve_tracks_simulated_lognormal(span, method, tol):
    """2 days of starts (no window closed: the tail comes from the lognormal fit) and 14 days (the life
    table sees the whole window): G within tol of the true truncated lognormal."""
    rng = np.random.default_rng(0)  # ~15k conversions: sampling sd of G(6 h) ~0.004
    start, conv, conv_at = lognormal_stream(rng, 300_000, span)
    dm = DelayModel(DelayConfig(window_ms=WINDOW, half_life_ms=7 * DAY))
    step = DAY // 4
    for t in range(0, span, step):
        new = (start >= t) & (start < t + step)
        dm.learn_starts(start[new])
        seen = conv & (conv_at >= t) & (conv_at < t + step)
        dm.learn_conversions(start[seen], conv_at[seen])
        done = (start + WINDOW >= t) & (start + WINDOW < t + step)
        dm.learn_matured(start[done], conv[done].astype(int))
        dm.close_through(t + step - WINDOW)
    curve = dm.curve(now_ms=span)
    assert curve.method == method
    d = np.array([HOUR, 6 * HOUR, DAY, 2 * DAY, 4 * DAY])
    np.testing.assert_allclose(curve(d), true_g(d), atol=tol)
    assert curve.summary()["delay_median_ms"] == pytest.approx(DAY * _median_ratio(), rel=0.1)


def _median_ratio() -> float:
    """Median of the truncated lognormal in units of a day."""
    return math.exp(SIGMA * float(_norm_ppf(0.5 * norm_cdf((math.log(WINDOW) - MU) / SIGMA))))


def _observe_two_days(dm: DelayModel, rng, n: int) -> None:
    """`n` windows started over two days (p = 0.2), with the conversions seen by the end of day 2."""
    start, conv, conv_at = lognormal_stream(rng, n, 2 * DAY, p=0.2)
    dm.learn_starts(start)
    seen = conv & (conv_at < 2 * DAY)
    dm.learn_conversions(start[seen], conv_at[seen])


def test_no_conversions_no_curve_and_fallback_chain():
    cfg = DelayConfig(window_ms=WINDOW, min_events=50)
    thin, wide, empty = DelayModel(cfg), DelayModel(cfg), DelayModel(cfg)
    empty.learn_starts(np.arange(100))
    assert empty.curve() is None
    rng = np.random.default_rng(2)
    for dm, n in ((thin, 200), (wide, 20_000)):
        _observe_two_days(dm, rng, n)
    assert 0 < thin.n_events < 50 <= wide.n_events
    assert select_curve([thin, wide])[1] == 1
    assert select_curve([wide, thin])[1] == 0
    assert select_curve([empty, None, thin])[1] == 2  # nobody has min_events: the coarsest with a curve
    assert select_curve([empty]) == (None, -1)


def test_a_segment_curve_takes_its_tail_beyond_its_horizon_from_the_coarser_level():
    """Life table of the segment up to its horizon, the parent's curve beyond; the coarsest level alone
    extrapolates with its lognormal."""
    cfg = DelayConfig(window_ms=WINDOW, min_events=50)
    segment, parent = DelayModel(cfg), DelayModel(cfg)
    rng = np.random.default_rng(4)
    for dm, n in ((segment, 4_000), (parent, 40_000)):
        _observe_two_days(dm, rng, n)
    own, tail = segment.curve(2 * DAY), parent.curve(2 * DAY)
    assert own.method == tail.method == "life_table+lognormal"
    curve, level = select_curve([segment, parent], 2 * DAY)
    assert level == 0 and curve.method == "life_table+parent" and curve.events == segment.n_events
    same = curve.g == tail.g
    h = int(np.flatnonzero(~same)[-1]) + 1  # beyond the segment's horizon: the parent's curve exactly
    assert 2 * HOUR < curve.edges[h] <= 2 * DAY and same[h:].all()
    seen = own.g[:h] > 0
    ratio = own.g[:h][seen] / curve.g[:h][seen]  # below it: the segment's own shape, scaled to the tail
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-12)
    assert select_curve([parent], 2 * DAY)[0].method == "life_table+lognormal"


def test_delay_model_rejects_bad_input():
    dm = DelayModel(DelayConfig(window_ms=WINDOW))
    with pytest.raises(ValueError):
        dm.learn_conversions(np.array([10]), np.array([5]))  # negative delay
    with pytest.raises(ValueError):
        dm.learn_conversions(np.array([0]), np.array([WINDOW + 1]))
    with pytest.raises(ValueError):
        dm.learn_matured(np.array([0, 1]), np.array([1, 2]))
    with pytest.raises(ValueError):
        dm.learn_starts(np.array([1.5]))
    with pytest.raises(ValueError):
        DelayModel.from_bytes(dm.to_bytes()[:-3] + b"xyz" + b"\x00")


def _feed(rng, n=4000, span=3 * DAY):
    s = 1 / (1 + np.exp(-rng.normal(-3, 1, n)))
    start, conv, conv_at = lognormal_stream(rng, n, span, p=0.1)
    return s, start, conv, conv_at


def test_merge_of_partitions_equals_one_stream_and_bytes_round_trip():
    rng = np.random.default_rng(3)
    s, start, conv, conv_at = _feed(rng)
    part = rng.integers(0, 2, s.size)
    cfg = CalibratorConfig(half_life_ms=2 * DAY)
    whole_d, whole_p = DelayModel(DelayConfig(window_ms=WINDOW)), PendingExposure.for_calibrator(cfg, WINDOW)
    parts = [(DelayModel(DelayConfig(window_ms=WINDOW)), PendingExposure.for_calibrator(cfg, WINDOW)) for _ in range(2)]
    seen = conv & (conv_at < 3 * DAY)
    for dm, pe, m in (
        (whole_d, whole_p, np.ones(s.size, bool)),
        *((d, p, part == k) for k, (d, p) in enumerate(parts)),
    ):
        dm.learn_starts(start[m])
        pe.add(s[m], start[m])
        dm.learn_conversions(start[m & seen], conv_at[m & seen])
        pe.convert(s[m & seen], start[m & seen])
    dm_m = parts[0][0].merge(parts[1][0])
    pe_m = parts[0][1].merge(parts[1][1])
    np.testing.assert_allclose(dm_m.events, whole_d.events, rtol=1e-12)
    np.testing.assert_allclose(dm_m.cohorts.rows, whole_d.cohorts.rows, rtol=1e-12)
    np.testing.assert_allclose(pe_m.sums, whole_p.sums, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(pe_m.cohorts.rows, whole_p.cohorts.rows, rtol=1e-12)
    np.testing.assert_array_equal(pe_m.cohorts.lo_ms, whole_p.cohorts.lo_ms)
    curve = whole_d.curve(3 * DAY)
    np.testing.assert_allclose(dm_m.curve(3 * DAY).g, curve.g, atol=1e-9)
    for obj in (whole_d, whole_p, dm_m, pe_m):
        blob = obj.to_bytes()
        again = type(obj).from_bytes(blob)
        assert again.to_bytes() == blob
    np.testing.assert_array_equal(PendingExposure.from_bytes(whole_p.to_bytes()).fold(curve), whole_p.fold(curve))
    assert len(whole_p.to_bytes()) + len(whole_d.to_bytes()) <= 4096


def test_corrected_rate_is_unbiased_with_the_true_curve():
    """One bin-wide rate p for everyone: conversions seen so far / corrected exposure ~ p, while treating
    open windows as negatives is biased low."""
    rng = np.random.default_rng(4)
    n, p = 400_000, 0.05
    start, conv, conv_at = lognormal_stream(rng, n, 2 * DAY, p=p)
    pe = PendingExposure.for_calibrator(CalibratorConfig(half_life_ms=FLAT), WINDOW)
    s = np.full(n, 0.05)
    pe.add(s, start)
    seen = conv & (conv_at < 2 * DAY)
    pe.convert(s[seen], start[seen])
    curve = DelayCurve(DelayConfig(window_ms=WINDOW).edges, true_g(DelayConfig(window_ms=WINDOW).edges), "true", 0.0)
    folded = pe.fold(curve, now_ms=2 * DAY)
    assert folded[1].sum() / folded[0].sum() == pytest.approx(p, rel=0.03)
    assert seen.sum() / n < 0.5 * p


def _matured_calibrator(rng) -> tuple[Calibrator, np.ndarray]:
    """A calibrator (half-life 2 days) of 5,000 matured examples at event times 0..4,999, and their scores."""
    cal = Calibrator(CalibratorConfig(half_life_ms=2 * DAY))
    s = 1 / (1 + np.exp(-rng.normal(-3, 1, 5000)))
    cal.learn_batch(s, (rng.random(s.size) < s).astype(int), ts_ms=np.arange(s.size))
    return cal, s


def test_with_pending_zero_is_identity_and_matured_fraction():
    rng = np.random.default_rng(5)
    cal, s = _matured_calibrator(rng)
    same = cal.with_pending(np.zeros((4, cal.config.n_bins)), 10**9)
    assert same.to_map().to_json() == cal.to_map().to_json()
    pe = PendingExposure.for_calibrator(cal.config, WINDOW)
    pe.add(s, np.full(s.size, 5000 + DAY))
    edges = DelayConfig(window_ms=WINDOW).edges
    out, matured = corrected(cal, pe, DelayCurve(edges, true_g(edges), "true", 0.0), now_ms=5000 + 2 * DAY)
    assert out.n_seen == cal.n_seen and out.n_effective > cal.n_effective * 2**-0.5
    assert 0 < matured < 1
    assert corrected(cal, pe, None)[1] == 1.0  # no curve: no correction, the waited-for map


def test_a_window_dated_ahead_of_the_clock_does_not_decay_the_matured_examples():
    """Open windows an hour to a day ahead of the partition clock (impressions within max_future_skew, #13
    item 1): the corrected map keeps the clock as its decay reference, the matured weight is not cut."""
    rng = np.random.default_rng(8)
    cal, s = _matured_calibrator(rng)
    pe = PendingExposure.for_calibrator(cal.config, WINDOW)
    ahead = 5000 + rng.integers(3_600_000, 23 * 3_600_000, 20)
    pe.add(s[:20], ahead)
    pe.convert(s[:5], ahead[:5])
    edges = DelayConfig(window_ms=WINDOW).edges
    clock = cal.last_event_ms  # the partition clock: the newest impression
    out, matured = corrected(cal, pe, DelayCurve(edges, true_g(edges), "true", 0.0), now_ms=clock)
    assert out.last_event_ms == clock  # before: the newest window's start, up to 23 h ahead
    assert matured * out.n_effective == pytest.approx(cal.n_effective, rel=1e-12)  # before: cut by up to 2**-0.48
    assert out.n_effective > cal.n_effective  # the windows' conversions are in


def test_corrected_map_metadata_fallback_and_version():
    rng = np.random.default_rng(6)
    cfg = CalibratorConfig(half_life_ms=2 * DAY)
    s, start, conv, conv_at = _feed(rng, 20_000, span=2 * DAY)
    thin, wide = DelayModel(DelayConfig(window_ms=WINDOW)), DelayModel(DelayConfig(window_ms=WINDOW))
    wide.learn_starts(start)
    seen = conv & (conv_at < 2 * DAY)
    wide.learn_conversions(start[seen], conv_at[seen])
    cal, pe = Calibrator(cfg), PendingExposure.for_calibrator(cfg, WINDOW)
    pe.add(s, start)
    pe.convert(s[seen], start[seen])
    assert pe.n_open == s.size and pe.n_open_converted == seen.sum()
    m = corrected_map(cal, pe, [thin, wide], 2 * DAY, model="cvr", metrics={"eval": "fit"})
    got = m.metrics_dict
    assert got["delay_level"] == 1 and got["matured_fraction"] == 0.0 and got["eval"] == "fit"
    assert got["delay_method"] == "life_table+lognormal" and got["delay_events"] == pytest.approx(
        wide.n_events, rel=1e-6
    )
    assert (
        m.map_version == 3 * cal.n_seen + pe.n_open + pe.n_open_converted
        and m.model == "cvr"
        and m.n == pytest.approx(cal.with_pending(pe.fold(wide.curve(2 * DAY), 2 * DAY), pe.last_event_ms).n_effective)
    )
    none = corrected_map(cal, pe, [thin], 2 * DAY)
    assert none.method == "identity" and none.metrics_dict["delay_level"] == -1


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 300),
    step=st.sampled_from([HOUR, 7 * HOUR, DAY, 3 * DAY]),
    partitions=st.integers(1, 3),
)
def test_corrected_then_matured_equals_waiting(seed, n, step, partitions):
    """Feed the same examples early (open window, conversions as they come, close) or only at close, in
    event-time steps and partitions; once every window has closed the corrected map is the waited-for one."""
    rng = np.random.default_rng(seed)
    s, start, conv, conv_at = _feed(rng, n, span=2 * DAY)
    label = conv.astype(np.int8)
    part = rng.integers(0, partitions, n)
    cfg = CalibratorConfig(half_life_ms=DAY)
    edges = DelayConfig(window_ms=WINDOW).edges
    curve = DelayCurve(edges, true_g(edges), "true", 0.0)
    waits, cals, pends = [], [], []
    for k in range(partitions):
        wait, cal, pe = Calibrator(cfg), Calibrator(cfg), PendingExposure.for_calibrator(cfg, WINDOW)
        m = part == k
        for t in range(0, 2 * DAY + WINDOW + step, step):
            new = m & (start >= t) & (start < t + step)
            pe.add(s[new], start[new])
            hit = m & conv & (conv_at >= t) & (conv_at < t + step)
            pe.convert(s[hit], start[hit])
            done = m & (start + WINDOW >= t) & (start + WINDOW < t + step)
            if done.any():
                pe.mature(s[done], label[done], start[done])
                wait.learn_batch(s[done], label[done], ts_ms=start[done])
                cal.learn_batch(s[done], label[done], ts_ms=start[done])
            pe.close_through(t + step - WINDOW)
        waits.append(wait), cals.append(cal), pends.append(pe)
    wait, cal, pe = waits[0], cals[0], pends[0]
    for k in range(1, partitions):
        wait, cal, pe = wait.merge(waits[k]), cal.merge(cals[k]), pe.merge(pends[k])
    assert pe.weight == 0.0 and pe.cohorts.ids.size == 0
    got, matured = corrected(cal, pe, curve, now_ms=10 * WINDOW)
    assert matured == 1.0
    assert got.to_map().to_json() == wait.to_map().to_json()
