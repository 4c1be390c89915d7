"""Hierarchical shrinkage across the segment fallback chain: a segment's map is pulled toward its parent's.

Levels are fitted top-down (`fit_tree`): the model-wide `*` as before (its prior stays Platt or the warm start),
then every child toward its parent's map (the next key of its fallback chain). For a child with bins i (weight W_i,
positives P_i, mean score x_i) under a parent map M the model is

    logit p(x_i) = l_i + beta + (alpha - 1) (l_i - l_bar) + eps_i,    l_i = logit M(x_i),
    beta ~ N(0, sigma_b^2),  alpha - 1 ~ N(0, sigma_a^2),

a Platt recalibration of the parent's map around the child's information-weighted mean parent logit l_bar:
beta is the child's level (calibration in the large, what field RCE measures), alpha its slope relative to the
parent, eps its remaining shape deviation, encoded per bin as a Beta prior of strength m_i = (1 - q_i) / (tau^2 q_i)
around the adjusted parent q_i (as in `isotonic.eb_prior_strength`). sigma_b^2, sigma_a^2 and tau^2 come from
empirical Bayes pooled over all children of one level (Bayes-SIR style), not per child: a child with 300 examples
cannot tell its own deviation from noise, its siblings together can. With the score U and information I of each
parameter at the parent (alpha = 1, beta = 0):

    sigma^2 = (sum_c U_c^2 / I_c - b) / a   (U_b = sum (P_i - W_i q_i), I_b = sum W_i q_i (1 - q_i); U_a, I_a the
              same weighted by (l_i - l_bar) and its square; a, b correct for each parent being about the
              traffic-weighted mean of its children, times 1 - 1/k_eff: see `_moment_variance`)
    tau^2   = sum_c (excess_c - h_c) / sum_c info_c  (`isotonic.chi_square_excess` against the adjusted parent;
              h_c = sum over both parameters of I / (I + 1/sigma^2), the dof the shrunk adjustment used), the
              floor of a child's own tau^2 when its data reject the adjusted parent (pre-test z = 2)

(alpha, beta) is the ridge (MAP) Platt fit under those priors (`platt.fit_platt` on rescaled logits); then PAV over
the posterior rates (P_i + m_i q_i) / (W_i + m_i) (`isotonic.shrunk_isotonic`). A child with 50 examples publishes
nearly its parent, one with 50,000 nearly its own fit: the `min_samples` cliff becomes a smooth transition. A child
with no data publishes its parent's knots unchanged.

Confidence (optional map fields): per knot ess_i = W_i + m_i, where m_i is capped by the parent's own ess at x_i
minus W_i (the prior cannot know more than the parent's data beyond this child's own); at the root
m_i <= n_effective. `y_lo`/`y_hi` are the Wilson interval of y_i with n = ess_i at z = 1.645 (90%), an
approximation of the Beta(ess y, ess (1 - y)) posterior's 5% and 95% quantiles.

>>> import numpy as np
>>> from recalibrators.calibrator import Calibrator
>>> rng = np.random.default_rng(1)
>>> s = rng.uniform(0.01, 0.05, 40_000)
>>> y = rng.random(s.size) < s
>>> cals = {"*": Calibrator()}
>>> cals["*"].learn_batch(s, y, ts_ms=0)
>>> for i in range(4):  # four placements of 300 examples each, all following the model-wide truth
...     cals[f"placement={i}"] = Calibrator()
...     cals[f"placement={i}"].learn_batch(s[300 * i : 300 * (i + 1)], y[300 * i : 300 * (i + 1)], ts_ms=0)
>>> fit = fit_tree(cals, {"*": None} | {f"placement={i}": "*" for i in range(4)})
>>> fit.strengths[1]  # no evidence that placements differ: they publish the model-wide map
Strength(level_var=0.0, slope_var=0.0, shape_var=0.0)
>>> bool(np.abs(fit.maps["placement=0"].apply(s) - fit.maps["*"].apply(s)).max() < 1e-4)
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from .calibration_map import CalibrationMap
from .calibrator import Calibrator
from .histogram import Histogram
from .isotonic import cap_by_prior_evidence, chi_square_excess, eb_prior_strength, shrunk_isotonic
from .logit import logit, sigmoid
from .platt import fit_platt

__all__ = [
    "Strength",
    "TreeFit",
    "estimate_strength",
    "fit_root",
    "fit_tree",
    "root_ess",
    "shrink_toward",
    "wilson_band",
]

CAP = 1e9  # prior strength meaning "follow the prior"
OWN_Z = 2.0  # pre-test of a child's own evidence against its adjusted parent
RIDGE_CAP = 1e6  # a ridge that pins a Platt parameter (kept moderate for the Newton steps)
Z90 = 1.6448536269514722  # standard normal 95% quantile: a two-sided 90% band
_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class Strength:
    """How far the children of one level deviate from their parents (empirical Bayes, pooled)."""

    level_var: float  # sigma_b^2: variance of a child's logit shift from its parent's map
    slope_var: float  # sigma_a^2: variance of a child's slope on its parent's logit
    shape_var: float  # tau^2: relative variance of a child's bin rates around the adjusted parent

    def ridges(self) -> tuple[float, float]:
        """(level, slope) ridges in pseudo-observations of Fisher information."""
        return tuple(RIDGE_CAP if v <= 0 else min(1.0 / v, RIDGE_CAP) for v in (self.level_var, self.slope_var))


def _parent_logits(hist: Histogram, parent: CalibrationMap) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, W, logit M(x)) over all bins: mean score (bin centre if empty), weight (0 if empty)."""
    ok = hist.nonempty()
    x = hist.mean_score()
    return x, np.where(ok, hist.weight, 0.0), logit(np.clip(parent.apply(x), _EPS, 1.0 - _EPS))


def _scores(w: np.ndarray, p: np.ndarray, z: np.ndarray) -> tuple[float, float, float, float, float]:
    """(l_bar, U_b, I_b, U_a, I_a) of the child's bins at the parent (alpha = 1, beta = 0)."""
    q = sigmoid(z)
    h = w * q * (1.0 - q)
    info_b = float(h.sum())
    l_bar = float(h @ z) / info_b
    r, dz = p - w * q, z - l_bar
    return l_bar, float(r.sum()), info_b, float(r @ dz), float(h @ (dz * dz))


def _adjust(w: np.ndarray, p: np.ndarray, z: np.ndarray, strength: Strength) -> tuple[float, float, float]:
    """MAP (alpha, beta, l_bar): fit_platt's one ridge R on (a, b) becomes ridges (R_a, R_b) by fitting on logits
    scaled by k = sqrt(R_b / R_a), centred at (1/k, l_bar) so that beta = 0 is the parent's level."""
    l_bar = _scores(w, p, z)[0]
    ridge_b, ridge_a = strength.ridges()
    k = np.sqrt(ridge_b / ridge_a)
    ok = w > 0
    a, b = fit_platt(w[ok], p[ok], (z[ok] - l_bar) * k, ridge=ridge_b, center=(1.0 / k, l_bar))
    return float(a * k), float(b - l_bar), l_bar


def _adjusted(z: np.ndarray, alpha: float, beta: float, l_bar: float) -> np.ndarray:
    return l_bar + alpha * (z - l_bar) + beta


def estimate_strength(children: Iterable[tuple[Histogram, CalibrationMap]]) -> Strength:
    """Pooled moment estimates of sigma_b^2, sigma_a^2 and tau^2 over (child histogram, parent map) pairs of one
    level of the lattice."""
    rows = []
    for hist, parent in children:
        _, w, z = _parent_logits(hist, parent)
        p = np.where(w > 0, hist.positives, 0.0)
        if float(w @ (sigmoid(z) * (1.0 - sigmoid(z)))) > 0:
            rows.append((w, p, z, _scores(w, p, z), parent))
    if not rows:
        return Strength(0.0, 0.0, 0.0)
    groups: dict[int, list[int]] = {}
    for c, row in enumerate(rows):
        groups.setdefault(id(row[4]), []).append(c)
    share = [min(float(row[0].sum()) / row[4].n, 1.0) if row[4].n > 0 else 0.0 for row in rows]
    variances = [_moment_variance([r[3][u] for r in rows], [r[3][i] for r in rows], share, groups) for u, i in SCORES]
    first = Strength(variances[0], variances[1], 0.0)
    ridge_b, ridge_a = first.ridges()
    excess = shape_info = 0.0
    for w, p, z, sc, _ in rows:
        q = sigmoid(_adjusted(z, *_adjust(w, p, z, first)))
        ex, inf = chi_square_excess(w, p, q)
        excess += ex - sc[2] / (sc[2] + ridge_b) - (sc[4] / (sc[4] + ridge_a) if sc[4] > 0 else 0.0)
        shape_info += inf
    return Strength(first.level_var, first.slope_var, max(0.0, excess) / shape_info if shape_info > 0 else 0.0)


SCORES = ((1, 2), (3, 4))  # (U, I) positions in `_scores` of the level and of the slope


def _moment_variance(u: list[float], info: list[float], share: list[float], groups: dict[int, list[int]]) -> float:
    """sigma^2 from sum_c U_c^2 / I_c. Each parent is (about) the share-weighted mean of its children, so child
    c's deviation from it is d_c = (1 - s_c) e_c - sum_{j != c} s_j e_j with e_j = delta_j + noise (variance
    sigma^2 + 1/I_j): E[I_c d_c^2] = I_c [f_c sigma^2 + g_c], f_c = (1 - s_c)^2 + sum_{j != c} s_j^2 and
    g_c = (1 - s_c)^2 / I_c + sum_{j != c} s_j^2 / I_j. A child that is most of its parent deviates little.
    The estimate is scaled by 1 - 1/k_eff, k_eff = (sum a_c)^2 / sum a_c^2 the effective number of children
    (a_c = I_c f_c): with one informative child (a dense sibling carries no information on the spread), a
    chance deviation would otherwise become the spread and switch its own shrinkage off."""
    stat = a = b = a_sq = 0.0
    for members in groups.values():
        sq = sum(share[j] ** 2 for j in members if info[j] > 0)
        sq_v = sum(share[j] ** 2 / info[j] for j in members if info[j] > 0)
        for c in members:
            if info[c] <= 0:
                continue
            rest, rest_v = sq - share[c] ** 2, sq_v - share[c] ** 2 / info[c]
            stat += u[c] ** 2 / info[c]
            a_c = info[c] * ((1.0 - share[c]) ** 2 + rest)
            a += a_c
            a_sq += a_c**2
            b += info[c] * ((1.0 - share[c]) ** 2 / info[c] + rest_v)
    if a <= 0:
        return 0.0
    k_eff = a * a / a_sq  # how many children carry the estimate: one alone cannot tell spread from chance
    return max(0.0, (stat - b) / a) * max(0.0, 1.0 - 1.0 / k_eff)


def wilson_band(y: np.ndarray, ess: np.ndarray, z: float = Z90) -> tuple[np.ndarray, np.ndarray]:
    """Wilson interval of rates y with n = ess, made non-decreasing along the knots (still containing y)."""
    n = np.maximum(np.asarray(ess, dtype=np.float64), _EPS)
    z2n = z * z / n
    center = (y + z2n / 2.0) / (1.0 + z2n)
    half = z / (1.0 + z2n) * np.sqrt(y * (1.0 - y) / n + z2n / (4.0 * n))
    lo = np.clip(np.minimum(center - half, y), 0.0, 1.0)
    hi = np.clip(np.maximum(center + half, y), 0.0, 1.0)
    return np.maximum.accumulate(lo), np.minimum.accumulate(hi[::-1])[::-1]


def _with_band(x: np.ndarray, y: np.ndarray, ess: np.ndarray) -> dict[str, np.ndarray]:
    lo, hi = wilson_band(y, ess)
    return {"x": x, "y": y, "y_lo": lo, "y_hi": hi, "ess": ess}


def _knots(x: np.ndarray, y: np.ndarray, ess: np.ndarray, ends: tuple[float, float]) -> dict[str, np.ndarray]:
    """Bins -> map knots [0, x, 1] as `Calibrator` builds them, with ess and the band."""
    x = np.concatenate(([0.0], x, [1.0]))
    y = np.concatenate(([min(ends[0], y[0])], y, [max(ends[1], y[-1])]))
    ess = np.concatenate((ess[:1], ess, ess[-1:]))
    keep = np.concatenate(([True], np.diff(x) > 0))
    return _with_band(x[keep], y[keep], ess[keep])


def root_ess(calibrator: Calibrator, root: CalibrationMap) -> np.ndarray:
    """Per-knot ess of a map fitted by `Calibrator.to_map` (Platt or warm-start prior): W_i + min(m_i, N)."""
    h, cfg = calibrator.histogram, calibrator.config
    ok = h.nonempty()
    w, p, x = np.where(ok, h.weight, 0.0), np.where(ok, h.positives, 0.0), h.mean_score()
    if calibrator.prior is not None:
        base = calibrator.prior.apply(x)
    elif root.platt is not None:
        base = sigmoid(root.platt[0] * logit(x) + root.platt[1])
    else:  # identity map: no data
        return np.zeros(root.x.size)
    base = np.clip(base, _EPS, 1.0 - _EPS)
    m = cfg.prior_strength if cfg.prior_strength is not None else eb_prior_strength(w, p, base)
    if (prior := calibrator.prior) is not None and cfg.prior_strength is None:  # as `Calibrator.to_map` caps it
        m = cap_by_prior_evidence(m, w, x, prior.n, None if prior.ess is None else (prior.x, prior.ess))
    ess = w + np.minimum(m, h.total_weight)
    return np.interp(root.x, np.concatenate(([0.0], x, [1.0])), np.concatenate((ess[:1], ess, ess[-1:])))


def fit_root(calibrator: Calibrator, **meta: Any) -> CalibrationMap:
    """`Calibrator.to_map` with the per-knot band: the map of a key without parent (e.g. `*`)."""
    root = calibrator.to_map(**meta)
    return root.with_meta(**_with_band(root.x, root.y, root_ess(calibrator, root)))


def _adjust_end(value: float, alpha: float, beta: float, l_bar: float) -> float:
    if value <= 0.0 or value >= 1.0:
        return value
    return float(sigmoid(_adjusted(np.log(value / (1.0 - value)), alpha, beta, l_bar)))


def shrink_toward(calibrator: Calibrator, parent: CalibrationMap, strength: Strength, **meta: Any) -> CalibrationMap:
    """The calibrator's map shrunk toward `parent` (method "hierarchical"); `meta` as for `Calibrator.to_map`."""
    fields = calibrator.map_meta() | {"method": "hierarchical", "platt": None, "metrics": None} | meta
    h = calibrator.histogram
    if h.total_weight <= 0.0:
        band = {n: getattr(parent, n) for n in ("y_lo", "y_hi", "ess")}
        return CalibrationMap(x=parent.x, y=parent.y, **(band | fields))
    x, w, z = _parent_logits(h, parent)
    p = np.where(w > 0, h.positives, 0.0)
    alpha, beta, l_bar = _adjust(w, p, z, strength)
    q = np.clip(sigmoid(_adjusted(z, alpha, beta, l_bar)), _EPS, 1.0 - _EPS)
    # The pooled tau^2 is the floor; a child whose own data reject the adjusted parent (a z = 2 pre-test) uses
    # its own larger tau^2, as `isotonic.eb_prior_strength` does for a single calibrator.
    excess, info = chi_square_excess(w, p, q, z=OWN_Z)
    tau2 = max(strength.shape_var, excess / info if excess > 0 else 0.0)
    with np.errstate(divide="ignore", over="ignore"):  # a subnormal tau^2 saturates at CAP, as tau^2 = 0 does
        m = np.full(q.shape, CAP) if tau2 <= 0 else np.clip((1.0 - q) / (tau2 * q), 1.0, CAP)
    if parent.ess is not None:
        m = np.minimum(m, np.maximum(np.interp(x, parent.x, parent.ess) - w, 1.0))
    y = np.clip(shrunk_isotonic(w, p, q, m), 0.0, 1.0)
    ends = tuple(_adjust_end(parent.apply_one(v), alpha, beta, l_bar) for v in (0.0, 1.0))
    return CalibrationMap(**(_knots(x, y, w + m, ends) | fields))


@dataclasses.dataclass(frozen=True)
class TreeFit:
    maps: dict[str, CalibrationMap]  # key -> map, parents before children
    strengths: dict[int, Strength]  # depth (1 = children of a root) -> the pooled strength used


def fit_tree(
    calibrators: Mapping[str, Calibrator],
    parent_of: Mapping[str, str | None],
    meta: Callable[[str], dict[str, Any]] | None = None,
) -> TreeFit:
    """Fit every key of one model: roots (parent None) by `Calibrator.to_map`, then each depth toward the
    maps of the depth above, with one `Strength` pooled over that depth. `meta(key)` gives map metadata."""
    meta = meta or (lambda key: {})
    depth: dict[str, int] = {}
    for key in calibrators:
        seen, k = [], key
        while (parent := parent_of[k]) is not None:
            if parent not in calibrators or k in seen:
                raise ValueError(f"key {k!r}: parent {parent!r} has no calibrator or the chain loops")
            seen.append(k)
            k = parent
        depth[key] = len(seen)
    maps: dict[str, CalibrationMap] = {}
    strengths: dict[int, Strength] = {}
    for level in sorted(set(depth.values())):
        keys = sorted(k for k, d in depth.items() if d == level)
        if level == 0:
            for k in keys:
                maps[k] = fit_root(calibrators[k], **meta(k))
            continue
        pairs = [(calibrators[k].histogram, maps[parent_of[k]]) for k in keys]
        strengths[level] = strength = estimate_strength(pairs)
        for k in keys:
            maps[k] = shrink_toward(calibrators[k], maps[parent_of[k]], strength, **meta(k))
    return TreeFit(maps, strengths)
