import numpy as np
import pytest

from recalibrators import CalibrationMap, Calibrator, CalibratorConfig
from recalibrators.isotonic import chi_square_excess
from recalibrators.logit import sigmoid
from streams.dev.synthetic import SBend, make_stream

HL = 60_000.0
CFG = CalibratorConfig(half_life_ms=HL, holdout_half_life_ms=HL / 4, prior_strength=1000.0)


def stream(n=5000, seed=0):
    return make_stream(np.random.default_rng(seed), n, SBend(), t0_ms=1_000, rate_per_s=50)


def test_decay_hand_computed():
    cal = Calibrator(CFG)
    cal.learn_batch([0.02], [1], ts_ms=0)
    cal.learn_batch([0.02], [0], ts_ms=int(HL))  # the first event is now one half-life old
    assert cal.n_effective == pytest.approx(1.5, rel=1e-15)
    assert cal.positives == pytest.approx(0.5, rel=1e-15)
    cal.learn_batch([0.02], [1], [2.0], ts_ms=0)  # late event: weighs 2 * 2**-1
    assert cal.n_effective == pytest.approx(2.5, rel=1e-15)
    assert cal.last_event_ms == int(HL) and cal.n_seen == 3
    cal.learn_batch([0.5, 0.5], [0, 0], ts_ms=np.array([int(3 * HL), int(2 * HL)]))
    assert cal.n_effective == pytest.approx(2.5 / 4 + 1 + 0.5, rel=1e-14)


def test_replay_is_deterministic_and_order_independent():
    s, y, ts, _ = stream()
    a, b, c = Calibrator(CFG), Calibrator(CFG), Calibrator(CFG)
    for lo in range(0, s.size, 700):
        a.learn_batch(s[lo : lo + 700], y[lo : lo + 700], ts_ms=ts[lo : lo + 700])
        b.learn_batch(s[lo : lo + 700], y[lo : lo + 700], ts_ms=ts[lo : lo + 700])
    perm = np.random.default_rng(1).permutation(s.size)
    c.learn_batch(s[perm], y[perm], ts_ms=ts[perm])
    assert a.to_bytes() == b.to_bytes() and a.to_map() == b.to_map()
    np.testing.assert_allclose(a.histogram.sums, c.histogram.sums, rtol=1e-12)
    np.testing.assert_allclose(a.to_map().y, c.to_map().y, rtol=1e-9)


def test_batch_of_one_equals_batch():
    s, y, ts, _ = stream(300)
    one, batch = Calibrator(CFG), Calibrator(CFG)
    for i in range(s.size):
        one.learn_one(float(s[i]), int(y[i]), int(ts[i]), holdout=bool(i % 5 == 0))
    batch.learn_batch(s, y, ts_ms=ts, holdout=np.arange(s.size) % 5 == 0)
    np.testing.assert_allclose(one.histogram.sums, batch.histogram.sums, rtol=1e-12)
    np.testing.assert_allclose(one.holdout.sums, batch.holdout.sums, rtol=1e-12)
    np.testing.assert_allclose(one.to_map().y, batch.to_map().y, rtol=1e-9)


def test_holdout_examples_only_update_the_holdout_histogram():
    s, y, ts, _ = stream(2000)
    mask = np.arange(s.size) % 10 == 0
    cal, ref = Calibrator(CFG), Calibrator(CFG)
    cal.learn_batch(s, y, ts_ms=ts, holdout=mask)
    ref.learn_batch(s[~mask], y[~mask], ts_ms=ts[~mask])
    ref._advance(cal.last_event_ms)
    np.testing.assert_allclose(cal.histogram.sums, ref.histogram.sums, rtol=1e-12)
    assert cal.holdout.total_weight == pytest.approx(np.sum(np.exp2((ts[mask] - ts.max()) / (HL / 4))))
    assert cal.n_seen == 2000


def test_empty_calibrator_publishes_identity_or_prior():
    m = Calibrator().to_map(model="ctr")
    assert m.method == "identity" and m.apply_one(0.3) == 0.3 and m.n == 0
    prior = CalibrationMap(
        x=[0.0, 0.05, 1.0],
        y=[0.0, 0.03, 1.0],
        method="isotonic",
        n=1e5,
        positives=2e3,
        last_event_ms=5,
        platt=(0.9, -0.3),
        model_version="v1",
    )
    warm = Calibrator(CFG, prior=prior)
    m = warm.to_map(model_version="v2")
    np.testing.assert_array_equal(m.x, prior.x)
    np.testing.assert_array_equal(m.y, prior.y)
    assert m.model_version == "v2" and m.n == 0


def test_warm_start_shrinks_sparse_bins_toward_the_prior():
    prior = CalibrationMap(x=[0.0, 1.0], y=[0.0, 0.5], method="isotonic", n=1e5, positives=2e3, last_event_ms=0)
    warm = Calibrator(CFG, prior=prior)
    cold = Calibrator(CFG)
    for cal in (warm, cold):
        cal.learn_batch([0.1, 0.1, 0.1], [1, 1, 1], ts_ms=0)
    m = CFG.prior_strength  # posterior (P + m q) / (W + m) with q = prior(0.1) = 0.05
    assert warm.to_map().apply_one(0.1) == pytest.approx((3 + m * 0.05) / (3 + m), rel=1e-9)
    assert warm.to_map().apply_one(0.6) == pytest.approx(0.3, rel=1e-9)  # no data there: follows the prior
    assert 0.1 < cold.to_map().apply_one(0.1) < 1  # no prior: moves toward the data, never to exactly 1


def test_map_is_cached_until_state_changes():
    cal = Calibrator(CFG)
    cal.learn_batch(*stream(1000)[:2], ts_ms=0)
    fit = cal._fit if cal.to_map() else None
    assert cal._fit is fit and cal.to_map(map_version=9).map_version == 9
    cal.learn_one(0.1, 1, 0)
    assert cal._fit is None
    assert cal.to_map().map_version == cal.n_seen == 1001


def test_state_round_trip_and_size():
    s, y, ts, _ = make_stream(np.random.default_rng(2), 200_000, SBend(), rate_per_s=1000)
    s[::97] = np.linspace(0, 1, s[::97].size)  # touch every bin
    prior = Calibrator(CFG)
    prior.learn_batch(s[:5000], y[:5000], ts_ms=ts[:5000])
    cal = Calibrator(CalibratorConfig(), prior=prior.to_map(model="ctr", metrics={"ll": 0.1}))
    cal.learn_batch(s, y, ts_ms=ts, holdout=np.arange(s.size) % 2 == 0)
    assert np.all(cal.histogram.weight > 0) and np.all(cal.holdout.weight > 0)
    blob = cal.to_bytes()
    assert len(blob) <= 8192
    back = Calibrator.from_bytes(blob)
    assert back.to_map() == cal.to_map() and back.prior == cal.prior and back.n_seen == cal.n_seen
    assert back.to_bytes() == blob
    with pytest.raises(ValueError, match="corrupt"):
        Calibrator.from_bytes(blob[:-3])
    with pytest.raises(ValueError, match="corrupt"):
        Calibrator.from_bytes(b"\x05\x00\x00\x00{bad}")


def test_merge_rejects_different_configs_and_keeps_inputs():
    a, b = Calibrator(CFG), Calibrator(CalibratorConfig())
    with pytest.raises(ValueError, match="config"):
        a.merge(b)
    a.learn_batch([0.1], [1], ts_ms=5)
    merged = a.merge(Calibrator(CFG))
    assert merged.n_seen == 1 and merged.last_event_ms == 5 and a.n_seen == 1


def test_config_validation():
    with pytest.raises(ValueError, match="method"):
        CalibratorConfig(method="magic")
    with pytest.raises(ValueError, match="half_life"):
        CalibratorConfig(half_life_ms=0)
    with pytest.raises(ValueError, match="n_bins"):
        CalibratorConfig(n_bins=1)


def test_platt_method_map_is_a_sampled_sigmoid():
    cal = Calibrator(CalibratorConfig(method="platt"))
    s, y, ts, _ = stream(20_000)
    cal.learn_batch(s, y, ts_ms=ts)
    m = cal.to_map()
    a, b = m.platt
    inner = m.x[1:-1]
    expected = 1 / (1 + np.exp(-(a * np.log(inner / (1 - inner)) + b)))
    np.testing.assert_allclose(m.y[1:-1], expected, rtol=1e-12)
    assert m.method == "platt" and m.y[0] == 0 and m.y[-1] == 1


def test_learn_prepared_on_several_calibrators_equals_learn_batch_on_each():
    from recalibrators.batch import prepare_batch

    rng = np.random.default_rng(3)
    scores, labels = rng.random(500) * 0.2, (rng.random(500) < 0.05).astype(np.int8)
    ts = 1_790_000_000_000 + np.sort(rng.integers(0, 3_600_000, 500))
    holdout = rng.random(500) < 0.2
    config = CalibratorConfig()
    batch = prepare_batch(config.bins, scores, labels, ts_ms=ts, holdout=holdout)
    for _ in range(3):  # the same prepared batch serves every level of a fallback chain
        prepared, direct = Calibrator(config), Calibrator(config)
        prepared.learn_prepared(batch)
        direct.learn_batch(scores, labels, ts_ms=ts, holdout=holdout)
        assert prepared.to_bytes() == direct.to_bytes()
        assert prepared.n_seen == 500


@pytest.mark.parametrize("seed", [2, 5, 7])
def test_a_prior_map_weighs_no_more_than_the_examples_it_was_fitted_on(seed):
    """Warm start from another model version's map (fitted on 10,000 examples): a young key follows the prior;
    with 30,000 examples of its own the map moves off it, also where the chi-square cannot tell the data from the
    prior (excess <= 0 for these seeds: the EB strength alone is 1e9, the map would stay the prior's)."""
    truth = SBend()
    s, y, ts, _ = make_stream(np.random.default_rng(seed), 40_000, truth)
    first = Calibrator()
    first.learn_batch(s[:10_000], y[:10_000], ts_ms=ts[:10_000])
    prior = first.to_map(model="ctr", model_version="v1")
    grid = sigmoid(np.random.default_rng(9).normal(-4.3, 1.0, 20_000))

    def fitted(n: int, with_prior: bool) -> CalibrationMap:
        cal = Calibrator(prior=prior if with_prior else None)
        cal.learn_batch(s[10_000 : 10_000 + n], y[10_000 : 10_000 + n], ts_ms=ts[10_000 : 10_000 + n])
        if with_prior and n == 30_000:
            h = cal.histogram
            assert chi_square_excess(h.weight, h.positives, np.clip(prior.apply(h.mean_score()), 1e-12, 1))[0] <= 0
        return cal.to_map()

    def gap(a: CalibrationMap, b: CalibrationMap) -> float:
        return float(np.mean(np.abs(a.apply(grid) - b.apply(grid))))

    young = fitted(200, True)
    assert gap(young, prior) < 0.2 * gap(fitted(200, False), prior)
    warm = fitted(30_000, True)
    assert gap(warm, prior) > 0.25 * gap(fitted(30_000, False), prior)
    error = {
        name: float(np.mean(np.abs(m.apply(grid) - truth.p_true(grid))))
        for name, m in (("warm", warm), ("prior", prior))
    }
    assert error["warm"] < 0.95 * error["prior"]
