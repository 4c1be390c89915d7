import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import beta as beta_dist

from recalibrators.calibration_map import CalibrationMap
from recalibrators.calibrator import Calibrator
from recalibrators.hierarchy import Strength, estimate_strength, fit_tree, shrink_toward, wilson_band
from streams.dev.synthetic import SBend, make_stream

CONSTANT = CalibrationMap(x=[0.0, 1.0], y=[0.1, 0.1], method="platt", n=1e6, positives=1e5, last_event_ms=0)


def test_shrinkage_is_the_beta_binomial_posterior_mean():
    # Parent rate q = 0.1 everywhere; tau^2 = 0.9 gives a Beta prior of strength m = (1 - q) / (tau^2 q) = 10,
    # i.e. Beta(1, 9). 20 examples with 3 positives in the top bin: posterior Beta(4, 26), mean 4 / 30.
    child = Calibrator()
    child.learn_batch(np.full(20, 0.98), np.r_[np.ones(3), np.zeros(17)], ts_ms=0)
    out = shrink_toward(child, CONSTANT, Strength(level_var=0.0, slope_var=0.0, shape_var=0.9))
    assert out.apply_one(float(child.histogram.mean_score()[-1])) == pytest.approx(4 / 30, rel=1e-5)
    assert out.apply_one(0.01) == pytest.approx(0.1, rel=1e-5)  # empty bins keep the parent
    assert out.ess[-2] == pytest.approx(30.0)  # W + m at the data's knot (the last knot is x = 1)
    assert out.method == "hierarchical" and out.n == pytest.approx(20.0)


def test_wilson_band_matches_the_closed_form_and_the_beta_quantiles():
    y, n, z = np.array([0.1333]), np.array([30.0]), 1.6448536269514722
    lo, hi = wilson_band(y, n)
    center = (y + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(y * (1 - y) / n + z * z / (4 * n * n))
    np.testing.assert_allclose([lo[0], hi[0]], [(center - half)[0], (center + half)[0]], rtol=1e-12)
    # With a large ess the band is the 5% / 95% quantiles of the Beta(ess y, ess (1 - y)) posterior.
    lo, hi = wilson_band(np.array([0.02]), np.array([20_000.0]))
    ref = beta_dist.ppf([0.05, 0.95], 0.02 * 20_000, 0.98 * 20_000)
    np.testing.assert_allclose([lo[0], hi[0]], ref, rtol=5e-3)


def _tree(rng: np.random.Generator, sizes: list[int], level_sd: float = 0.3):
    """`*` over one parent `p=0` over children with level shifts ~ N(0, level_sd^2) from one S-bend."""
    base = SBend()
    cals = {"*": Calibrator(), "p=0": Calibrator()}
    parent_of: dict[str, str | None] = {"*": None, "p=0": "*"}
    truths = {}
    for k, n in enumerate(sizes):
        key = f"c={k}|p=0"
        truths[key] = SBend(a=base.a, b=base.b + rng.normal(0.0, level_sd), c=base.c, d=base.d, w=base.w)
        s, y, ts, _ = make_stream(rng, n, truths[key])
        cals[key] = Calibrator()
        for k2 in (key, "p=0", "*"):
            cals[k2].learn_batch(s, y, ts_ms=ts)
        parent_of[key] = "p=0"
    return cals, parent_of, truths


def test_child_without_data_publishes_its_parents_map():
    cals, parent_of, _ = _tree(np.random.default_rng(1), [5_000, 5_000])
    cals["c=9|p=0"], parent_of["c=9|p=0"] = Calibrator(), "p=0"
    maps = fit_tree(cals, parent_of, lambda key: {"model": "ctr"}).maps
    child, parent = maps["c=9|p=0"], maps["p=0"]
    for name in ("x", "y", "y_lo", "y_hi", "ess"):
        np.testing.assert_array_equal(getattr(child, name), getattr(parent, name))
    assert child.n == 0.0 and child.model == "ctr" and child.method == "hierarchical"


def test_pooled_level_variance_recovers_the_spread_of_children():
    cals, parent_of, _ = _tree(np.random.default_rng(2), [40_000] * 30, level_sd=0.3)
    maps = fit_tree(cals, parent_of).maps
    children = [k for k in cals if k.startswith("c=")]
    strength = estimate_strength([(cals[k].histogram, maps["p=0"]) for k in children])
    assert 0.3**2 / 2 < strength.level_var < 0.3**2 * 2
    # No spread: the estimate is (near) zero and children follow their parent.
    cals, parent_of, _ = _tree(np.random.default_rng(3), [40_000] * 30, level_sd=0.0)
    maps = fit_tree(cals, parent_of).maps
    strength = estimate_strength([(cals[k].histogram, maps["p=0"]) for k in cals if k.startswith("c=")])
    assert strength.level_var < 0.005


def test_the_min_samples_cliff_is_a_smooth_transition():
    """The more data a child has, the further it moves from its parent toward its own truth."""
    rng = np.random.default_rng(4)
    cals, parent_of, truths = _tree(rng, [20_000] * 6, level_sd=0.4)
    ev = np.linspace(0.002, 0.1, 500)
    distance, error = [], []
    for n in (50, 500, 5_000, 50_000):
        s, y, ts, _ = make_stream(np.random.default_rng(n), n, truths["c=0|p=0"])
        cals["c=0|p=0"] = Calibrator()
        cals["c=0|p=0"].learn_batch(s, y, ts_ms=ts)
        maps = fit_tree(cals, parent_of).maps
        distance.append(np.abs(maps["c=0|p=0"].apply(ev) - maps["p=0"].apply(ev)).mean())
        error.append(np.abs(maps["c=0|p=0"].apply(ev) - truths["c=0|p=0"].p_true(ev)).mean())
    assert distance[0] < distance[1] < distance[3]
    assert error[3] < error[1] < error[0]


def test_fit_tree_rejects_a_chain_without_parent():
    with pytest.raises(ValueError, match="parent"):
        fit_tree({"a=1": Calibrator()}, {"a=1": "*"})


@st.composite
def lattices(draw):
    n_children = draw(st.integers(1, 4))
    rows = []
    for _ in range(n_children):
        n = draw(st.integers(0, 60))
        scores = draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n))
        labels = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
        rows.append((scores, labels))
    return rows


@settings(max_examples=60, deadline=None, database=None)
@given(lattices(), st.floats(0.0, 2.0), st.floats(0.0, 2.0))
def test_maps_stay_monotone_within_unit_interval(rows, spread, parent_slope):
    rng = np.random.default_rng(0)
    cals = {"*": Calibrator()}
    parent_of: dict[str, str | None] = {"*": None}
    s0 = rng.uniform(0, 1, 200)
    cals["*"].learn_batch(s0, rng.random(200) < s0**parent_slope, ts_ms=0)
    for k, (scores, labels) in enumerate(rows):
        cals[f"c={k}"], parent_of[f"c={k}"] = Calibrator(), "*"
        if scores:
            cals[f"c={k}"].learn_batch(np.array(scores), np.array(labels), ts_ms=0)
    fit = fit_tree(cals, parent_of)
    maps = list(fit.maps.values())
    forced = Strength(spread, spread, spread)  # any strength, not only the estimated one
    maps += [shrink_toward(cals[k], fit.maps["*"], forced) for k in cals if k != "*"]
    for m in maps:
        assert np.all(np.diff(m.y) >= 0) and m.y[0] >= 0 and m.y[-1] <= 1
        assert np.all(m.y_lo <= m.y) and np.all(m.y <= m.y_hi) and np.all(m.ess >= 0)
        assert np.all(np.diff(m.y_lo) >= 0) and np.all(np.diff(m.y_hi) >= 0)
        assert CalibrationMap.from_json(m.to_json()) == m


def test_forget_ages_the_state_and_keeps_it_mergeable():
    s, y, ts, _ = make_stream(np.random.default_rng(5), 5_000, SBend())
    cal = Calibrator()
    cal.learn_batch(s, y, ts_ms=ts, holdout=np.arange(s.size) % 10 == 0)
    before = (cal.n_effective, cal.holdout.total_weight, cal.to_map())
    cal.forget(2.0)
    assert cal.n_effective == pytest.approx(before[0] / 4) and cal.holdout.total_weight == pytest.approx(before[1] / 4)
    np.testing.assert_allclose(cal.to_map().x, before[2].x)  # same shape of data, a quarter of the weight
    assert Calibrator.from_bytes(cal.to_bytes()).to_map() == cal.to_map()
    assert cal.merge(Calibrator()).n_effective == pytest.approx(cal.n_effective)
    with pytest.raises(ValueError):
        cal.forget(-1.0)


def test_band_fields_are_validated():
    with pytest.raises(ValueError, match="y_lo"):
        CalibrationMap(x=[0, 1], y=[0.2, 0.5], y_lo=[0.3, 0.4], method="m", n=1, positives=0, last_event_ms=0)
    with pytest.raises(ValueError, match="one value per knot"):
        CalibrationMap(x=[0, 1], y=[0.2, 0.5], ess=[1.0], method="m", n=1, positives=0, last_event_ms=0)
