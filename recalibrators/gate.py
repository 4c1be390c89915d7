"""Quality gate: may a freshly fitted map replace the published one of the same model version?

A gate that says no on noise freezes a key for good (the fitted map is refused, the live one stays
stale, nothing ever makes the gate say yes). This one refuses only on evidence, and a refusal cannot
outlive the growth of the evidence behind the key.

Rules, in order (the first that applies decides):

1. First map only: ``candidate.n >= min_effective_samples`` (decayed weight of the fitting data).
2. Held-back loss, a paired test on the holdout histogram (examples never fitted, each bin evaluated at
   its mean score): per example, d = logloss(candidate) - logloss(baseline), the baseline being the live
   map (the raw score before a first map). With mean D, its standard error SE (label noise given the
   scores, `compare_log_loss`) and the baseline's loss L, the candidate is refused iff
   ``(D - max_loss_increase * L) / SE >= min_z``: worse by more than the tolerance, significantly. The
   decayed holdout weight W stands for the example count; decay makes the true effective sample size
   (sum w)^2 / sum w^2 >= W, so SE is overestimated and the test errs on the side of publishing.
   Skipped while the holdout weighs less than ``min_holdout_weight``.
3. No live map: accepted.
4. Evidence growth: once the candidate's map version (the number of labeled examples behind it) is
   ``evidence_growth`` times the live map's, rule 5 is waived: a bounded-change refusal cannot last.
5. Bounded change at the holdout's score points (the candidate's interior knots with no holdout):
   ``max |cand - live| <= max_abs_change`` and ``max |cand - live| / live <= max_rel_change``.

>>> import numpy as np
>>> from recalibrators import Calibrator
>>> rng = np.random.default_rng(0)
>>> s = rng.uniform(0.01, 0.2, 20_000)
>>> y = (rng.random(20_000) < s).astype(int)
>>> cal = Calibrator()
>>> cal.learn_batch(s, y, ts_ms=0, holdout=np.arange(20_000) % 5 == 0)
>>> live = cal.to_map()
>>> worse = live.with_meta(y=np.minimum(live.y * 2, 1.0), map_version=live.map_version + 1)
>>> QualityGate().check(live, None, cal.holdout).accepted
True
>>> d = QualityGate().check(worse, live, cal.holdout)
>>> d.accepted, d.z > 2
(False, True)
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .calibration_map import CalibrationMap, identity_map
from .histogram import Histogram

__all__ = ["GateDecision", "LossComparison", "QualityGate", "compare_log_loss", "prior_contradicted"]

_EPS = 1e-15  # probability clip of the log loss (as in recalibrators.metrics)


@dataclasses.dataclass(frozen=True)
class GateDecision:
    accepted: bool
    reason: str  # with the numbers, for the log line, /stats and the dashboard
    z: float | None = None  # the loss test's statistic, when it ran


@dataclasses.dataclass(frozen=True)
class LossComparison:
    """Paired per-example log-loss difference candidate - baseline on one holdout histogram."""

    candidate: float  # mean log loss of the candidate
    baseline: float  # mean log loss of the baseline
    se: float  # standard error of the mean difference
    weight: float  # holdout weight W

    @property
    def diff(self) -> float:
        return self.candidate - self.baseline


def compare_log_loss(candidate: CalibrationMap, baseline: CalibrationMap, holdout: Histogram) -> LossComparison:
    """Mean log losses on the holdout and the standard error of their paired difference.

    In bin i (weight W_i, positives P_i, both maps evaluated at the bin's mean score) the per-example
    difference is d1_i for a positive and d0_i for a negative, so D = sum(P_i d1_i + (W_i - P_i) d0_i) / W.
    Given the scores, the labels are the randomness: Var(D) = sum W_i p_i (1 - p_i) (d1_i - d0_i)^2 / W^2.
    The plug-in for p_i(1 - p_i) is the larger of the observed rate's and the two maps' mean prediction's:
    with rare positives the observed rate is often 0, which would make any difference look certain.
    """
    ok = holdout.weight > 0
    w, pos = holdout.weight[ok], holdout.positives[ok]
    s = holdout.mean_score()[ok]
    c = np.clip(candidate.apply(s), _EPS, 1 - _EPS)
    b = np.clip(baseline.apply(s), _EPS, 1 - _EPS)
    neg = np.maximum(w - pos, 0.0)
    total = float(w.sum())
    d1, d0 = np.log(b) - np.log(c), np.log1p(-b) - np.log1p(-c)  # per positive / per negative example
    cand = float(-(pos @ np.log(c) + neg @ np.log1p(-c)) / total)
    base = float(-(pos @ np.log(b) + neg @ np.log1p(-b)) / total)
    rate, pred = np.clip(pos / w, 0.0, 1.0), (c + b) / 2
    bernoulli = np.maximum(rate * (1 - rate), pred * (1 - pred))
    var = float(w @ (bernoulli * (d1 - d0) ** 2)) / (total * total)
    return LossComparison(cand, base, math.sqrt(var), total)


def prior_contradicted(prior: CalibrationMap, data: Histogram, min_z: float = 2.0, min_expected: float = 20.0) -> bool:
    """Does `data` contradict `prior` (e.g. another model version's map), significantly?

    Pearson's goodness of fit of the prior's predictions to the observed positives, on groups of adjacent
    bins that each expect >= `min_expected` positives: X^2 = sum_g (P_g - E_g)^2 / V_g is ~ chi^2 with G
    degrees of freedom while the prior is right; it is contradicted when X^2 > G + min_z * sqrt(2 G). The
    prior was not fitted on `data`, so no degrees of freedom are lost.
    """
    ok = data.weight > 0
    w, pos = data.weight[ok], data.positives[ok]
    q = np.clip(prior.apply(data.mean_score()[ok]), _EPS, 1 - _EPS)
    e = w * q
    groups = np.minimum((np.cumsum(e) - e) // min_expected, max(float(e.sum() // min_expected) - 1, 0)).astype(np.intp)
    pg, eg = np.bincount(groups, weights=pos), np.bincount(groups, weights=e)
    vg = np.bincount(groups, weights=e * (1 - q))
    live = vg > 0
    g = int(live.sum())
    return g > 0 and float(np.sum((pg[live] - eg[live]) ** 2 / vg[live])) > g + min_z * math.sqrt(2 * g)


@dataclasses.dataclass(frozen=True)
class QualityGate:
    """Decides whether `candidate` replaces `current` (same model version); see the module docstring.

    min_effective_samples  decayed fitting weight a first map needs.
    max_abs_change, max_rel_change  bounded change per publish (None: unbounded); waived after growth.
    max_loss_increase      relative holdout log-loss increase tolerated before the test can refuse.
    min_z                  how significant a loss increase beyond the tolerance must be to refuse.
    evidence_growth        factor of labeled examples since the live map that waives the change bound.
    min_holdout_weight     holdout weight below which the loss test does not run.
    """

    min_effective_samples: float = 1000.0
    max_abs_change: float | None = None
    max_rel_change: float | None = None
    max_loss_increase: float = 0.01
    min_z: float = 2.0
    evidence_growth: float = 2.0
    min_holdout_weight: float = 100.0

    def check(
        self, candidate: CalibrationMap, current: CalibrationMap | None, holdout: Histogram | None
    ) -> GateDecision:
        if current is None and candidate.n < self.min_effective_samples:
            return GateDecision(
                False, f"insufficient effective samples: {candidate.n:.1f} < {self.min_effective_samples:g}"
            )
        z = None
        if holdout is not None and holdout.total_weight >= max(self.min_holdout_weight, 1e-300):
            cmp = compare_log_loss(candidate, current if current is not None else identity_map(), holdout)
            excess = cmp.diff - self.max_loss_increase * cmp.baseline
            z = excess / cmp.se if cmp.se > 0 else (math.inf if excess > 0 else -math.inf)
            if z >= self.min_z:
                return GateDecision(
                    False,
                    f"holdout log loss significantly worse: {cmp.candidate:.6f} vs {cmp.baseline:.6f} "
                    f"(+{cmp.diff / cmp.baseline:.2%}, {self.max_loss_increase:.2%} tolerated, "
                    f"z={z:.2f} >= {self.min_z:g}, holdout weight {cmp.weight:.0f})",
                    z,
                )
        if current is None:
            return GateDecision(True, "accepted: first map", z)
        if current.map_version > 0 and candidate.map_version >= self.evidence_growth * current.map_version:
            return GateDecision(True, f"accepted: evidence grew {candidate.map_version / current.map_version:.2f}x", z)
        return self._bounded_change(candidate, current, holdout, z)

    def _bounded_change(
        self, candidate: CalibrationMap, current: CalibrationMap, holdout: Histogram | None, z: float | None
    ) -> GateDecision:
        if holdout is not None and holdout.total_weight > 0:
            points = holdout.mean_score()[holdout.weight > 0]
        else:
            points = candidate.x[1:-1] if candidate.x.size > 2 else candidate.x
        cand, cur = candidate.apply(points), current.apply(points)
        diff = np.abs(cand - cur)
        if self.max_abs_change is not None and diff.max() > self.max_abs_change:
            return GateDecision(False, f"change too large: max |delta| {diff.max():.4g} > {self.max_abs_change:g}", z)
        if self.max_rel_change is not None:
            rel = float(np.max(diff / np.maximum(cur, 1e-12)))
            if rel > self.max_rel_change:
                return GateDecision(False, f"relative change too large: {rel:.4g} > {self.max_rel_change:g}", z)
        return GateDecision(True, "accepted", z)
