"""Quality gate deciding whether a freshly fitted map may replace the published one.

Rules, checked in order (first failure rejects):
1. candidate.n >= min_effective_samples (decayed weight of the fitting data).
2. Held-back loss: binned log loss of the candidate on the holdout histogram (recent held-back examples,
   evaluated at each bin's mean score) must be <= baseline loss * (1 + max_loss_increase). The baseline is the
   current map, or the identity (raw scores) when nothing is published yet. Skipped while the holdout has
   less than min_holdout_weight.
3. Bounded change vs the current map on the holdout's non-empty score points (the candidate's interior knots
   when the holdout is empty): max |cand(s) - cur(s)| <= max_abs_change and
   max |cand(s) - cur(s)| / cur(s) <= max_rel_change. A rejected large move is retried at the next refresh;
   the lead can bypass the gate for a deliberate reset (e.g. a new model version with a prior).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .calibration_map import CalibrationMap, identity_map
from .histogram import Histogram
from .metrics import binned_log_loss

__all__ = ["GateDecision", "QualityGate"]


@dataclasses.dataclass(frozen=True)
class GateDecision:
    accepted: bool
    reason: str


@dataclasses.dataclass(frozen=True)
class QualityGate:
    min_effective_samples: float = 1000.0
    max_abs_change: float | None = 0.05
    max_rel_change: float | None = 0.5
    max_loss_increase: float = 0.001
    min_holdout_weight: float = 100.0

    def check(
        self, candidate: CalibrationMap, current: CalibrationMap | None, holdout: Histogram | None
    ) -> GateDecision:
        if candidate.n < self.min_effective_samples:
            return GateDecision(
                False, f"insufficient effective samples: {candidate.n:.1f} < {self.min_effective_samples:g}"
            )
        hw = 0.0 if holdout is None else holdout.total_weight
        if hw >= self.min_holdout_weight and hw > 0:
            args = (holdout.weight, holdout.positives, holdout.mean_score())
            base = current if current is not None else identity_map()
            cand_ll, base_ll = binned_log_loss(candidate.apply, *args), binned_log_loss(base.apply, *args)
            if cand_ll > base_ll * (1.0 + self.max_loss_increase):
                return GateDecision(
                    False,
                    f"holdout log loss worse: {cand_ll:.6f} > {base_ll:.6f} (+{self.max_loss_increase:.2%} allowed)",
                )
        if current is None:
            return GateDecision(True, "accepted: first map")
        if holdout is not None and holdout.total_weight > 0:
            points = holdout.mean_score()[holdout.weight > 0]
        else:
            points = candidate.x[1:-1] if candidate.x.size > 2 else candidate.x
        cand, cur = candidate.apply(points), current.apply(points)
        diff = np.abs(cand - cur)
        if self.max_abs_change is not None and diff.max() > self.max_abs_change:
            return GateDecision(False, f"change too large: max |delta| {diff.max():.4g} > {self.max_abs_change:g}")
        if self.max_rel_change is not None:
            rel = float(np.max(diff / np.maximum(cur, 1e-12)))
            if rel > self.max_rel_change:
                return GateDecision(False, f"relative change too large: {rel:.4g} > {self.max_rel_change:g}")
        return GateDecision(True, "accepted")
