"""The calibrator's settings: fitting method, bins, half-lives, prior strength, ridge."""

from __future__ import annotations

import dataclasses
import functools

from .histogram import BinSpec

__all__ = ["METHODS", "CalibratorConfig"]

METHODS = ("isotonic", "platt")


@dataclasses.dataclass(frozen=True)
class CalibratorConfig:
    """Calibrator settings; equal configs are required to merge two calibrators.

    method          "isotonic": Bayes-shrunk PAV over the bins (default); "platt": the Platt curve only.
    n_bins          logit-uniform bins on [logit_lo, logit_hi]; 96 keeps a worst-case state under 8 KB.
    half_life_ms    event-time half-life of the fitting histogram.
    holdout_half_life_ms  shorter half-life of the held-back histogram the quality gate evaluates on.
    prior_strength  m: pseudo-impressions of the prior (Platt or previous map) per bin; None (default) picks a
                    per-bin m by empirical Bayes from how far the data departs from the prior.
    ridge           Platt ridge toward (a, b) = (1, 0), or toward the prior map's Platt parameters.
    clip            scores are clipped to [clip, 1 - clip] before the logit.
    """

    method: str = "isotonic"
    n_bins: int = 96
    logit_lo: float = -8.0
    logit_hi: float = 4.0
    half_life_ms: float = 6 * 3600 * 1000.0
    holdout_half_life_ms: float = 3600 * 1000.0
    prior_strength: float | None = None
    ridge: float = 1.0
    clip: float = 1e-7

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        for name in ("half_life_ms", "holdout_half_life_ms"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.prior_strength is not None and not self.prior_strength > 0:
            raise ValueError(f"prior_strength must be > 0 or None, got {self.prior_strength!r}")
        if not self.ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {self.ridge!r}")
        _ = self.bins  # validates the bin layout

    @functools.cached_property
    def bins(self) -> BinSpec:
        return BinSpec(self.n_bins, self.logit_lo, self.logit_hi, self.clip)
