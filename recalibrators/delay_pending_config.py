"""The pending exposure's settings: the calibrator's bins and half-life, the attribution window and its cohorts."""

from __future__ import annotations

import dataclasses

import numpy as np

from .histogram import BinSpec

__all__ = ["PendingConfig"]


@dataclasses.dataclass(frozen=True)
class PendingConfig:
    """bins and half_life_ms: the calibrator's (the sums fold into its histogram). n_cohorts: start cohorts
    per window. n_groups: consecutive calibrator bins sharing one age profile (bytes vs. resolution)."""

    bins: BinSpec
    half_life_ms: float
    window_ms: int
    n_cohorts: int = 12
    n_groups: int = 4

    def __post_init__(self) -> None:
        if not (self.window_ms > 0 and self.half_life_ms > 0):
            raise ValueError("need window_ms > 0 and half_life_ms > 0")
        if not (1 <= self.n_cohorts <= 256 and 1 <= self.n_groups <= self.bins.n_bins):
            raise ValueError("need 1 <= n_cohorts <= 256 and 1 <= n_groups <= n_bins")

    @property
    def cohort_ms(self) -> int:
        """Width of one start cohort: the window in `n_cohorts` parts, rounded up."""
        return -(-self.window_ms // self.n_cohorts)

    @property
    def group(self) -> np.ndarray:
        return np.arange(self.bins.n_bins) * self.n_groups // self.bins.n_bins
