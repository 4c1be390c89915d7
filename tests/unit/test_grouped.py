"""recalibrators.grouped: the batched update equals learning group by group, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from recalibrators.calibrator import Calibrator, CalibratorConfig
from recalibrators.grouped import learn_grouped


def _groups(rng: np.random.Generator, n: int, n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    group = rng.integers(0, n_groups, n)
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    return group, order, starts


@pytest.mark.parametrize("seed", range(5))
def test_batched_equals_per_group_learning(seed: int) -> None:
    rng = np.random.default_rng(seed)
    config = CalibratorConfig(half_life_ms=50_000.0, holdout_half_life_ms=7_000.0)
    n, n_groups = 2_000, 12
    _, order, starts = _groups(rng, n, n_groups)
    scores = np.clip(rng.beta(1.2, 20, n), 0.0, 1.0)
    scores[:5] = [0.0, 1.0, 1e-9, 0.5, 1 - 1e-12]  # clipped ends and an exact zero logit
    labels = (rng.random(n) < scores).astype(np.uint8)
    ts = 1_700_000_000_000 + rng.integers(0, 100_000, n)  # unsorted: decay runs backwards and forwards
    holdout = rng.random(n) < 0.2
    holdout[order[starts[0] : starts[1]]] = True  # a group held back entirely
    # Calibrators shared by several groups (chain levels), some already holding older or newer state, and
    # calibrators of two half-lives.
    other = CalibratorConfig(method="platt", half_life_ms=9e6, holdout_half_life_ms=3_000.0)  # same bins
    cals = [Calibrator(config if g % 2 else other) for g in range(n_groups)] + [Calibrator(config) for _ in range(3)]
    cals[-1].learn_batch([0.2, 0.3], [1, 0], ts_ms=1_700_000_200_000)
    cals[-2].learn_batch([0.2], [1], ts_ms=1_600_000_000_000)
    targets = [(cals[g], g) for g in range(n_groups)]
    targets += [(cals[n_groups + g % 3], g) for g in rng.permutation(n_groups)]
    reference = [Calibrator.from_bytes(c.to_bytes()) for c in cals]
    ends = np.r_[starts[1:], n]
    for cal, g in targets:
        rows = order[starts[g] : ends[g]]
        reference[cals.index(cal)].learn_batch(scores[rows], labels[rows], ts_ms=ts[rows], holdout=holdout[rows])
    learn_grouped(order, starts, targets, scores, labels, ts, holdout)
    for got, want in zip(cals, reference, strict=True):
        assert got.to_bytes() == want.to_bytes()
        assert got.n_seen == want.n_seen and got.last_event_ms == want.last_event_ms


def test_invalid_input_changes_nothing() -> None:
    cal = Calibrator()
    labels = np.array([0, 2, 1])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        learn_grouped(
            np.arange(3), np.array([0]), [(cal, 0)], np.full(3, 0.1), labels, np.zeros(3, np.int64), np.zeros(3, bool)
        )
    assert cal.n_seen == 0 and not cal.histogram.sums.any()


def test_calibrators_of_several_bin_layouts_are_refused() -> None:
    a, b = Calibrator(), Calibrator(CalibratorConfig(n_bins=40))
    with pytest.raises(ValueError, match="one bin layout"):
        learn_grouped(
            np.arange(2),
            np.array([0, 1]),
            [(a, 0), (b, 1)],
            np.full(2, 0.1),
            np.zeros(2),
            np.zeros(2, np.int64),
            np.zeros(2, bool),
        )
