import numpy as np
import pytest

from recalibrators import Calibrator, drop_invalid
from recalibrators.validation import check_batch, check_timestamps, valid_mask

S = np.array([0.1, 0.2, 0.3])
Y = np.array([0, 1, 0])


@pytest.mark.parametrize(
    ("scores", "labels", "weights", "message"),
    [
        ([0.1, np.nan, 0.3], Y, None, "scores contain NaN"),
        ([0.1, np.inf, 0.3], Y, None, "scores contain inf"),
        ([0.1, 1.5, 0.3], Y, None, "outside"),
        ([-0.1, 0.5, 0.3], Y, None, "outside"),
        (S, [0, 2, 1], None, "labels must be 0 or 1"),
        (S, [0, 0.5, 1], None, "labels must be 0 or 1"),
        (S, Y, [1.0, -1.0, 1.0], "negative"),
        (S, Y, [1.0, np.nan, 1.0], "weights contain NaN"),
        (S, Y, [1.0, np.inf, 1.0], "weights contain inf"),
        ([], [], None, "empty batch"),
        (S, [0, 1], None, "length mismatch"),
        (S, Y, [1.0], "length mismatch"),
        (np.ones((2, 2)), Y, None, "1-d"),
        (["a", "b", "c"], Y, None, "numeric"),
    ],
)
def test_strict_mode_names_the_problem(scores, labels, weights, message):
    with pytest.raises(ValueError, match=message):
        check_batch(scores, labels, weights)
    with pytest.raises(ValueError, match=message):
        Calibrator().learn_batch(scores, labels, weights, ts_ms=0)


def test_timestamps():
    assert check_timestamps(5, 3) == 5
    assert check_timestamps(np.array([1.0, 2.0, 3.0]), 3).dtype == np.int64
    for bad, msg in (
        ([1, 2], "length mismatch"),
        ([1.5, 2, 3], "integer"),
        ([np.nan, 1, 2], "integer"),
        (True, "bool"),
        (1.5, "integer"),
    ):
        with pytest.raises(ValueError, match=msg):
            check_timestamps(bad, 3)


def test_holdout_mask_validated():
    with pytest.raises(ValueError, match="holdout"):
        Calibrator().learn_batch(S, Y, ts_ms=0, holdout=[True])
    with pytest.raises(ValueError, match="boolean"):
        Calibrator().learn_batch(S, Y, ts_ms=0, holdout=[0, 2, 1])


def test_failed_batch_leaves_state_untouched():
    cal = Calibrator()
    cal.learn_batch(S, Y, ts_ms=10)
    before = cal.to_bytes()
    with pytest.raises(ValueError):
        cal.learn_batch([0.1, np.nan, 0.3], Y, ts_ms=20)
    assert cal.to_bytes() == before


def test_drop_invalid_filters_and_counts():
    s = np.array([0.1, np.nan, 0.3, 2.0, 0.5, 0.6])
    y = np.array([0, 1, 3, 1, 1, 0])
    w = np.array([1.0, 1.0, 1.0, 1.0, -1.0, 2.0])
    s2, y2, w2, dropped = drop_invalid(s, y, w)
    assert dropped == 4
    np.testing.assert_array_equal(s2, [0.1, 0.6])
    np.testing.assert_array_equal(y2, [0, 0])
    np.testing.assert_array_equal(w2, [1.0, 2.0])
    np.testing.assert_array_equal(valid_mask(s, y), [True, False, False, False, True, True])
    assert drop_invalid(s, y)[3] == 3
