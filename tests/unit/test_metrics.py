import math

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss
from sklearn.metrics import log_loss as sk_log_loss

from recalibrators import metrics as M

P = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 0.8])
Y = np.array([0, 0, 1, 0, 1, 1])
W = np.array([1.0, 2.0, 1.0, 1.0, 0.5, 3.0])


def test_pointwise_losses_match_sklearn():
    assert M.log_loss(P, Y, W) == pytest.approx(sk_log_loss(Y, P, sample_weight=W), rel=1e-12)
    assert M.brier(P, Y, W) == pytest.approx(brier_score_loss(Y, P, sample_weight=W), rel=1e-12)
    base = np.sum(W * Y) / W.sum()
    entropy = -(base * math.log(base) + (1 - base) * math.log(1 - base))
    assert M.normalized_entropy(P, Y, W) == pytest.approx(M.log_loss(P, Y, W) / entropy)


def test_calibration_ratio_direction():
    assert M.calibration_ratio([0.2, 0.2], [0, 1]) == pytest.approx(0.4)  # under-predicts
    assert M.calibration_ratio([0.8, 0.8], [0, 1]) == pytest.approx(1.6)  # over-predicts
    assert M.calibration_ratio([0.5], [0]) == math.inf


def test_ece_uniform_hand_computed():
    p = np.array([0.05, 0.15, 0.55, 0.65])
    y = np.array([0, 1, 1, 1])
    # bins of width 0.5: [0.05, 0.15] -> |0.1 - 0.5| = 0.4; [0.55, 0.65] -> |0.6 - 1| = 0.4
    assert M.ece(p, y, n_bins=2, strategy="uniform") == pytest.approx(0.4)
    assert M.mce(p, y, n_bins=2, strategy="uniform") == pytest.approx(0.4)
    assert M.ece(p, p > 0.5, n_bins=2, strategy="uniform") == pytest.approx((0.1 + 0.4) / 2)


def test_ece_quantile_bins_have_equal_mass_and_perfect_calibration_is_near_zero():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.2, 400_000)
    y = rng.random(p.size) < p
    rel = M.reliability(p, y, n_bins=10)
    np.testing.assert_allclose(rel.weight, 40_000, rtol=1e-3)
    assert M.ece(p, y) < 0.002
    assert M.ece(p * 1.5, y) > 0.03
    with pytest.raises(ValueError, match="strategy"):
        M.ece(p, y, strategy="bogus")


def test_field_rce_is_weighted_mean_of_per_segment_relative_error():
    p = np.array([0.2, 0.2, 0.5, 0.5, 0.1])
    y = np.array([1, 0, 1, 0, 0])
    seg = np.array(["a", "a", "b", "b", "c"])
    # a: |0.4 - 1| / 1 = 0.6 (weight 2); b: |1 - 1| = 0 (weight 2); c has no positives -> skipped
    assert M.field_rce(p, y, seg) == pytest.approx(0.3)


def test_binned_metrics_equal_pointwise_when_each_bin_has_one_score():
    s = np.array([0.01, 0.05, 0.2])
    w = np.array([100.0, 50.0, 10.0])
    pos = np.array([2.0, 3.0, 1.0])
    f = lambda v: np.sqrt(v)  # noqa: E731
    pts = np.repeat(s, [100, 50, 10])
    lab = np.concatenate([[1] * 2, [0] * 98, [1] * 3, [0] * 47, [1], [0] * 9])
    assert M.binned_log_loss(f, w, pos, s) == pytest.approx(M.log_loss(f(pts), lab), rel=1e-12)
    assert M.binned_calibration_ratio(f, w, pos, s) == pytest.approx(M.calibration_ratio(f(pts), lab))


def test_metric_inputs_validated():
    with pytest.raises(ValueError):
        M.log_loss([0.1, 0.2], [1])
    with pytest.raises(ValueError):
        M.brier([], [])


def test_multi_field_rce_is_the_mean_of_field_rces():
    p = np.array([0.2, 0.2, 0.5, 0.5, 0.1])
    y = np.array([1, 0, 1, 0, 0])
    platform = np.array(["a", "a", "b", "b", "c"])  # field RCE 0.3 (see above)
    placement = np.array(["x", "y", "x", "y", "y"])
    # x: |0.7 - 2| / 2 = 0.65 (weight 2); y: |0.8 - 0| / 0 -> skipped; field RCE 0.65
    assert M.field_rce(p, y, placement) == pytest.approx(0.65)
    assert M.multi_field_rce(p, y, {"platform": platform, "placement": placement}) == pytest.approx((0.3 + 0.65) / 2)
    assert math.isnan(M.multi_field_rce(p, np.zeros(5), {"platform": platform}))


def test_pcoc_is_predicted_over_observed_per_segment():
    p = np.array([0.2, 0.2, 0.5, 0.5, 0.1])
    y = np.array([1, 0, 1, 0, 0])
    seg = np.array(["a", "a", "b", "b", "c"])
    out = M.pcoc(p, y, seg, w=np.array([1.0, 1.0, 2.0, 2.0, 1.0]))
    assert out["a"] == pytest.approx(0.4) and out["b"] == pytest.approx(2.0 / 2.0) and out["c"] == math.inf
    assert out["a"] == pytest.approx(M.calibration_ratio(p[:2], y[:2]))
    with pytest.raises(ValueError):
        M.pcoc(p, y, seg[:3])
