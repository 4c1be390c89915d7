"""Weighted pool-adjacent-violators and the Bayes-shrunk isotonic fit over histogram bins."""

from __future__ import annotations

import numpy as np

from .logit import logit, sigmoid

__all__ = [
    "cap_by_prior_evidence",
    "chi_square_excess",
    "eb_prior_strength",
    "logit_shift",
    "match_total",
    "pav",
    "shrunk_isotonic",
]


def pav(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted least-squares non-decreasing fit (same solution as sklearn's IsotonicRegression).

    Weights must be > 0. A stack of pooled blocks on Python floats: for <= 256 points this beats any
    vectorised formulation, and already-monotone input (the common case after shrinkage) skips the loop.
    """
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if v.shape != w.shape or v.ndim != 1:
        raise ValueError("values and weights must be 1-d arrays of equal length")
    if not np.all(w > 0):
        raise ValueError("PAV weights must be positive")
    if v.size < 2 or np.all(v[1:] >= v[:-1]):
        return v.copy()
    means: list[float] = []
    wsum: list[float] = []
    counts: list[int] = []
    for vi, wi in zip(v.tolist(), w.tolist(), strict=True):
        m, ww, c = vi, wi, 1
        while means and means[-1] > m:
            pw = wsum.pop()
            tw = pw + ww
            m = (means.pop() * pw + m * ww) / tw
            ww = tw
            c += counts.pop()
        means.append(m)
        wsum.append(ww)
        counts.append(c)
    return np.repeat(means, counts)


def shrunk_isotonic(
    weight: np.ndarray, positives: np.ndarray, prior_rate: np.ndarray, prior_strength: float | np.ndarray
) -> np.ndarray:
    """PAV over per-bin posterior rates (P + m q) / (W + m) with PAV weights W + m.

    Each bin is a Beta-Binomial posterior whose prior mean is q (Platt curve or the previous model's map)
    and whose prior is worth m pseudo-impressions: sparse bins stay near q (never exactly 0 or 1), dense bins
    follow their data. Empty bins (W = 0) keep q, so the map follows the prior where there is no data.
    """
    m = prior_strength
    if np.any(m <= 0):
        raise ValueError("prior_strength must be > 0")
    denom = weight + m
    return pav((positives + m * prior_rate) / denom, denom)


def eb_prior_strength(
    weight: np.ndarray,
    positives: np.ndarray,
    prior_rate: np.ndarray,
    min_expected: float = 20.0,
    z: float = 0.0,
    cap: float = 1e9,
) -> np.ndarray:
    """Empirical-Bayes per-bin prior strength m_i: how much the data contradicts the prior curve.

    Model: the true bin rate is q_i * (1 + delta_i) with relative deviations of variance tau^2, which a Beta
    prior of strength m_i = (1 - q_i) / (tau^2 q_i) encodes. tau^2 is estimated by moments from a chi-square
    of the prior against the data on coarse groups of adjacent bins (each expecting >= min_expected
    positives, so smooth deviations add up instead of drowning in per-bin noise):
        X^2 = sum_g (P_g - E_g)^2 / V_g  ~  G + tau^2 * sum_g E_g^2 / V_g,
    keeping the excess beyond G + z*sqrt(2G) (z > 0 makes it a pre-test). No excess -> m = cap (follow the
    prior: Platt wins on small samples); a large excess -> small m (data wins: isotonic on large ones).
    W is used as the count in V, which over-states noise for decayed weights: a conservative bias.
    """
    excess, info = chi_square_excess(weight, positives, prior_rate, min_expected, z)
    if excess <= 0.0:
        return np.full(weight.shape, cap)
    tau2 = excess / info
    return np.clip((1.0 - prior_rate) / (tau2 * prior_rate), 1.0, cap)


def cap_by_prior_evidence(
    strength: np.ndarray, weight: np.ndarray, x: np.ndarray, prior_n: float, prior_ess: tuple | None = None
) -> np.ndarray:
    """Per-bin prior strength capped by what a prior map knows at the bins' scores `x`: its per-knot ess when it
    has one ((knots, ess)), else its n spread like this data (n * W_i / W). A map is worth no more than the
    examples it was fitted on, so the key's own fit takes over as its evidence grows past the prior's (as
    `hierarchy.shrink_toward` caps a child's by its parent's ess); without the cap, data the chi-square cannot
    tell from the prior (excess <= 0: m = 1e9) would never move the map off another model version's."""
    spread = prior_n * weight / max(float(weight.sum()), 1e-300)
    cap = np.interp(x, *prior_ess) if prior_ess is not None else spread
    return np.minimum(strength, np.maximum(cap, 1.0))


def chi_square_excess(
    weight: np.ndarray, positives: np.ndarray, prior_rate: np.ndarray, min_expected: float = 20.0, z: float = 0.0
) -> tuple[float, float]:
    """(X^2 - G - z*sqrt(2G), sum_g E_g^2 / V_g) of the prior against the data on coarse groups of adjacent
    bins (see `eb_prior_strength`); tau^2 = excess / info. Summing both over calibrators pools tau^2."""
    ok = weight > 0
    w, p, q = weight[ok], positives[ok], prior_rate[ok]
    e = w * q
    n_groups = max(1, int(e.sum() // min_expected))
    gid = np.minimum(((np.cumsum(e) - e) // min_expected).astype(np.intp), n_groups - 1)
    gid = np.unique(gid, return_inverse=True)[1]  # bins heavier than min_expected leave gaps: renumber
    n_groups = int(gid.max()) + 1 if gid.size else 0
    pg = np.bincount(gid, weights=p, minlength=n_groups)
    eg = np.bincount(gid, weights=e, minlength=n_groups)
    vg = np.bincount(gid, weights=e * (1.0 - q), minlength=n_groups)
    live = vg > 0
    excess = float(np.sum((pg[live] - eg[live]) ** 2 / vg[live])) - n_groups - z * np.sqrt(2.0 * n_groups)
    return excess, float(np.sum(eg[live] ** 2 / vg[live]))


def match_total(rate: np.ndarray, weight: np.ndarray, positives: np.ndarray, ridge: float) -> np.ndarray:
    """Shift a monotone rate curve by delta in logit space so that sum W * rate = sum P (calibration in the
    large), with the same ridge as Platt on delta.

    Per-bin shrinkage weights differ across bins, so even toward a prior that matches the total (Platt does)
    the shrunk fit can be biased overall (seen: -1.5% at 1M events). A logit shift keeps the curve monotone
    and inside (0, 1).
    """
    z = logit(np.clip(rate, 1e-15, 1.0 - 1e-15))
    return sigmoid(z + logit_shift(z, weight, positives, ridge))


def logit_shift(z: np.ndarray, weight: np.ndarray, positives: np.ndarray, ridge: float) -> float:
    """The delta maximising sum_i [P_i log sigmoid(z_i + delta) + (W_i - P_i) log(1 - sigmoid(z_i + delta))]
    - ridge/2 delta^2 (Newton): the MAP logit offset of the data from the curve z under a N(0, 1/ridge) prior."""
    target = float(positives.sum())
    delta = 0.0
    for _ in range(50):
        mu = sigmoid(z + delta)
        step = (float(weight @ mu) - target + ridge * delta) / (float(weight @ (mu * (1.0 - mu))) + ridge)
        delta -= step
        if abs(step) < 1e-12:
            break
    return delta
