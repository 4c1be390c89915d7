import numpy as np

from recalibrators import CalibrationMap, Calibrator, CalibratorConfig, QualityGate
from streams.dev.synthetic import SBend, make_stream


def fitted(n, seed=0):
    s, y, ts, _ = make_stream(np.random.default_rng(seed), n, SBend())
    cal = Calibrator(CalibratorConfig())
    cal.learn_batch(s, y, ts_ms=ts, holdout=np.arange(n) % 10 == 0)
    return cal


def scaled(m: CalibrationMap, factor: float) -> CalibrationMap:
    return m.with_meta(y=np.minimum(m.y * factor, 1.0))


def test_rejects_insufficient_samples():
    cal = fitted(500)
    d = QualityGate(min_effective_samples=1000).check(cal.to_map(), None, cal.holdout)
    assert not d.accepted and "effective samples" in d.reason


def test_accepts_a_good_first_map_and_a_small_refresh():
    cal = fitted(200_000)
    cand = cal.to_map()
    gate = QualityGate()
    assert gate.check(cand, None, cal.holdout).accepted
    d = gate.check(cand, scaled(cand, 1.05), cal.holdout)
    assert d.accepted, d.reason


def test_rejects_candidate_worse_on_holdout():
    cal = fitted(200_000)
    good = cal.to_map()
    d = QualityGate(max_rel_change=None, max_abs_change=None).check(scaled(good, 1.4), good, cal.holdout)
    assert not d.accepted and "log loss" in d.reason


def test_rejects_too_large_a_change_even_if_better():
    cal = fitted(200_000)
    good = cal.to_map()
    d = QualityGate(max_rel_change=0.2, max_abs_change=None).check(good, scaled(good, 1.5), cal.holdout)
    assert not d.accepted and "relative change" in d.reason
    d = QualityGate(max_rel_change=None, max_abs_change=1e-3).check(good, scaled(good, 1.5), cal.holdout)
    assert not d.accepted and "max |delta|" in d.reason


def test_empty_holdout_skips_loss_check_but_bounds_change():
    cal = fitted(50_000)
    empty = Calibrator().holdout
    gate = QualityGate()
    assert gate.check(cal.to_map(), None, empty).accepted
    assert not gate.check(cal.to_map(), scaled(cal.to_map(), 3.0), empty).accepted
