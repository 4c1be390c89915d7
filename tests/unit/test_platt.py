import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from recalibrators import Calibrator, CalibratorConfig
from recalibrators.logit import logit
from recalibrators.platt import fit_platt, platt_predict
from streams.dev.synthetic import SBend, make_stream, sample_scores


def test_platt_on_fine_bins_matches_sklearn_on_raw_events():
    rng = np.random.default_rng(7)
    s, y, ts, _ = make_stream(rng, 100_000, SBend(a=0.8, b=-0.4, c=0.0))
    w = rng.uniform(0.5, 2.0, size=s.size)
    cal = Calibrator(CalibratorConfig(method="platt", n_bins=256, ridge=1e-9, half_life_ms=1e15))
    cal.learn_batch(s, y, w, ts_ms=ts)
    a, b = cal.to_map().platt
    lr = LogisticRegression(C=1e8, max_iter=1000).fit(logit(s)[:, None], y, sample_weight=w)
    assert a == pytest.approx(lr.coef_[0, 0], abs=0.01)
    assert b == pytest.approx(lr.intercept_[0], abs=0.04)


def test_platt_exact_binned_solution_matches_sklearn_on_bins():
    # With one logit value per bin the binned likelihood IS the event likelihood: compare at 1e-6.
    rng = np.random.default_rng(1)
    z = np.linspace(-7, 0, 40)
    w = rng.integers(100, 5000, size=40).astype(float)
    pos = rng.binomial(w.astype(int), 1 / (1 + np.exp(-(0.7 * z - 0.8)))).astype(float)
    a, b = fit_platt(w, pos, z, ridge=0.0)
    xs = np.concatenate([z, z])[:, None]
    ys = np.concatenate([np.ones(40), np.zeros(40)])
    lr = LogisticRegression(C=1e12, max_iter=10_000, tol=1e-12)
    lr.fit(xs, ys, sample_weight=np.concatenate([pos, w - pos]))
    assert a == pytest.approx(lr.coef_[0, 0], abs=1e-5)
    assert b == pytest.approx(lr.intercept_[0], abs=1e-5)


def test_rare_positives_and_separable_data_stay_finite_and_near_identity():
    w = np.array([1000.0, 1000.0, 1000.0])
    assert fit_platt(w, np.zeros(3), np.array([-6.0, -5.0, -4.0]))[0] >= 0
    a, b = fit_platt(w, np.array([0.0, 0.0, 3.0]), np.array([-6.0, -5.0, -4.0]), ridge=1.0)
    assert np.isfinite(a) and np.isfinite(b) and 0 <= a < 10
    assert fit_platt(np.zeros(0), np.zeros(0), np.zeros(0)) == (1.0, 0.0)


def test_decreasing_data_is_projected_to_a_monotone_constant():
    z = np.array([-5.0, -3.0, -1.0])
    a, b = fit_platt(np.full(3, 1e4), np.array([500.0, 100.0, 10.0]), z, ridge=1e-6)
    assert a == 0.0
    assert platt_predict(a, b, np.array([0.5]))[0] == pytest.approx(610 / 3e4, rel=1e-3)


def test_ctr_of_0_1_percent_with_a_handful_of_positives_stays_sane():
    rng = np.random.default_rng(4)
    s = sample_scores(rng, 5000, mean_logit=-6.9, sd=0.5)
    y = rng.random(s.size) < s  # calibrated raw scores, ~5 positives
    cal = Calibrator()
    cal.learn_batch(s, y, ts_ms=0)
    m = cal.to_map()
    a, b = m.platt
    assert 0.3 < a < 2 and abs(b) < 3
    assert 0.3 < m.apply(s).mean() / s.mean() < 3
    assert np.all(m.y[1:-1] > 0)
