import numpy as np
import pytest

from recalibrators import CalibrationMap, Calibrator, CalibratorConfig, QualityGate
from recalibrators.gate import compare_log_loss, prior_contradicted
from streams.dev.synthetic import SBend, make_stream

NO_DECAY = CalibratorConfig(half_life_ms=1e15, holdout_half_life_ms=1e15)


def fitted(n, seed=0, config=NO_DECAY):
    s, y, ts, _ = make_stream(np.random.default_rng(seed), n, SBend())
    cal = Calibrator(config)
    cal.learn_batch(s, y, ts_ms=ts, holdout=np.arange(n) % 10 == 0)
    return cal


def scaled(m: CalibrationMap, factor: float, **meta) -> CalibrationMap:
    return m.with_meta(y=np.minimum(m.y * factor, 1.0), **meta)


def test_losses_match_the_per_example_reference_and_the_se_the_label_noise():
    """Mean losses: exact, against the histogram expanded back into examples. SE: against the spread of
    D over 2,000 relabellings of the same scores from the truth (a Monte-Carlo reference)."""
    cal = fitted(50_000)
    cand, base = cal.to_map(), scaled(cal.to_map(), 1.1)
    h = cal.holdout
    ok = h.weight > 0
    w, p, s = np.rint(h.weight[ok]).astype(int), np.rint(h.positives[ok]).astype(int), h.mean_score()[ok]
    scores = np.repeat(s, w)
    labels = np.concatenate([np.r_[np.ones(k), np.zeros(n - k)] for n, k in zip(w, p, strict=True)])

    def losses(m, y):
        q = np.clip(m.apply(scores), 1e-15, 1 - 1e-15)
        return -(y * np.log(q) + (1 - y) * np.log1p(-q))

    got = compare_log_loss(cand, base, h)
    assert got.weight == pytest.approx(scores.size)
    assert got.candidate == pytest.approx(losses(cand, labels).mean(), rel=1e-9)
    assert got.baseline == pytest.approx(losses(base, labels).mean(), rel=1e-9)
    truth = SBend().p_true(scores)
    rng = np.random.default_rng(1)
    diffs = [
        (losses(cand, y) - losses(base, y)).mean() for y in (rng.random((2_000, scores.size)) < truth).astype(float)
    ]
    assert np.std(diffs) * 0.97 <= got.se <= np.std(diffs) * 1.15  # the plug-in errs on the large side


def test_rare_positives_do_not_make_a_difference_look_certain():
    """137 held-back examples and no positive: the observed rate says 'no label noise' (the sample SE of d
    gave z = 12 here); the binomial noise of ~2-3 expected positives keeps z moderate."""
    cal = fitted(1_370)
    h = cal.holdout
    h.sums[1] = 0.0  # no held-back positive
    live = cal.to_map()
    gate = QualityGate(min_effective_samples=1)
    assert gate.check(scaled(live, 2.0), live, h).z < 3  # 0 seen where 3.3 vs 1.6 were expected: p ~ 0.04
    d = gate.check(scaled(live, 1.5), live, h)
    assert d.accepted and d.z < 2, d.reason


def test_first_map_needs_effective_samples_a_refresh_does_not():
    cal = fitted(500)
    gate = QualityGate(min_effective_samples=1000)
    d = gate.check(cal.to_map(), None, cal.holdout)
    assert not d.accepted and "effective samples" in d.reason
    assert gate.check(cal.to_map(), cal.to_map(), cal.holdout).accepted


def test_equal_within_noise_publishes():
    """Two fits of the same distribution on independent data differ only by noise: never refused,
    on any of 20 seeds (the old 1%-without-a-test rule refused such refreshes on small holdouts)."""
    for seed in range(20):
        live, cal = fitted(3_000, seed=2 * seed), fitted(3_000, seed=2 * seed + 1)
        d = QualityGate(min_effective_samples=1).check(cal.to_map(), live.to_map(), cal.holdout)
        assert d.accepted, d.reason


def test_clearly_worse_is_refused_with_the_numbers():
    cal = fitted(200_000)
    good = cal.to_map()
    d = QualityGate().check(scaled(good, 2.0), good, cal.holdout)  # +8.6% log loss, z ~ 8.5
    assert not d.accepted and "significantly worse" in d.reason and d.z >= 2
    assert "z=" in d.reason and "holdout weight" in d.reason


def test_worse_within_the_tolerance_is_not_refused_however_significant():
    cal = fitted(200_000)
    good = cal.to_map()
    slightly = scaled(good, 1.4)  # +1.7% log loss, z ~ 4 against no tolerance
    assert not QualityGate(max_loss_increase=0.0).check(slightly, good, cal.holdout).accepted
    assert QualityGate(max_loss_increase=0.05).check(slightly, good, cal.holdout).accepted


def test_evidence_growth_waives_the_change_bound_not_the_loss_test():
    cal = fitted(200_000)
    good = cal.to_map()
    live = scaled(good, 1.5, map_version=good.map_version // 2 + 1)  # fitted on under half the examples
    gate = QualityGate(max_rel_change=0.2, evidence_growth=2.0)
    assert not gate.check(good, live, cal.holdout).accepted  # 1.99x: still bounded
    grown = good.with_meta(map_version=2 * live.map_version)
    d = gate.check(grown, live, cal.holdout)
    assert d.accepted and "evidence grew" in d.reason
    worse = scaled(good, 2.0, map_version=10 * good.map_version)
    assert not gate.check(worse, good, cal.holdout).accepted  # significantly worse stays held


def test_change_bounds_absolute_and_relative():
    cal = fitted(200_000)
    good = cal.to_map()
    d = QualityGate(max_rel_change=0.2).check(good, scaled(good, 1.5), cal.holdout)
    assert not d.accepted and "relative change" in d.reason
    d = QualityGate(max_abs_change=1e-3).check(good, scaled(good, 1.5), cal.holdout)
    assert not d.accepted and "max |delta|" in d.reason


def test_empty_holdout_skips_loss_check_but_bounds_change():
    cal = fitted(50_000)
    empty = Calibrator().holdout
    gate = QualityGate(max_abs_change=0.05)
    assert gate.check(cal.to_map(), None, empty).accepted
    assert not gate.check(cal.to_map(), scaled(cal.to_map(), 3.0), empty).accepted


def test_a_prior_is_contradicted_only_by_data_that_disagrees():
    """Pearson chi-square of another version's map on this version's data: a right prior passes in at
    least 18 of 20 seeds (z = 2: ~2% false alarms), a prior 40% too high fails at 20k examples."""
    truth = fitted(400_000, seed=99).to_map()
    false_alarms = sum(prior_contradicted(truth, fitted(20_000, seed=s).histogram) for s in range(20))
    assert false_alarms <= 2
    assert all(prior_contradicted(scaled(truth, 1.4), fitted(20_000, seed=s).histogram) for s in range(5))
    assert not prior_contradicted(scaled(truth, 1.3), fitted(300, seed=1).histogram)  # too little to tell
