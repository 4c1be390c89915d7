import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.isotonic import IsotonicRegression

from recalibrators.isotonic import pav, shrunk_isotonic


def test_pav_hand_computed():
    # (3, 1) pool to their weighted mean 2; with weights (1, 3): (3 + 3) / 4 = 1.5
    np.testing.assert_array_equal(pav(np.array([3.0, 1.0]), np.array([1.0, 1.0])), [2.0, 2.0])
    np.testing.assert_array_equal(pav(np.array([3.0, 1.0]), np.array([1.0, 3.0])), [1.5, 1.5])
    np.testing.assert_array_equal(pav(np.array([1.0, 3.0, 2.0, 4.0]), np.ones(4)), [1.0, 2.5, 2.5, 4.0])
    # a late small value drags the whole prefix down
    np.testing.assert_array_equal(pav(np.array([4.0, 3.0, 5.0, 0.0]), np.ones(4)), [3.0] * 4)
    np.testing.assert_array_equal(pav(np.array([0.5]), np.array([2.0])), [0.5])


def test_pav_rejects_bad_weights():
    with pytest.raises(ValueError, match="positive"):
        pav(np.array([1.0, 0.0]), np.array([1.0, 0.0]))


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0.01, 100)), min_size=1, max_size=256))
def test_pav_matches_sklearn(points):
    v = np.array([p[0] for p in points])
    w = np.array([p[1] for p in points])
    x = np.arange(v.size, dtype=float)
    ref = IsotonicRegression().fit(x, v, sample_weight=w).predict(x)
    np.testing.assert_allclose(pav(v, w), ref, rtol=0, atol=1e-12)


def test_pav_on_random_bins_matches_sklearn():
    rng = np.random.default_rng(3)
    w = rng.integers(1, 500, size=128).astype(float)
    pos = rng.binomial(w.astype(int), np.linspace(0.001, 0.2, 128)).astype(float)
    x = np.arange(128.0)
    ref = IsotonicRegression().fit(x, pos / w, sample_weight=w).predict(x)
    np.testing.assert_allclose(pav(pos / w, w), ref, rtol=0, atol=1e-12)


def test_shrinkage_keeps_sparse_bins_off_zero_and_one():
    w = np.array([3.0, 3.0, 0.0, 1e6])
    pos = np.array([0.0, 3.0, 0.0, 2e4])
    q = np.array([0.01, 0.02, 0.03, 0.05])
    y = shrunk_isotonic(w, pos, q, prior_strength=100.0)
    assert np.all((y > 0) & (y < 1))
    assert np.all(np.diff(y) >= 0)
    assert y[0] == pytest.approx(100 * 0.01 / 103)
    assert y[-1] == pytest.approx(0.02, rel=1e-3)  # dense bin follows its data
