"""Decayed per-bin sufficient statistics on fixed bins uniform in logit space.

Rows of `Histogram.sums` (one contiguous float64 block per histogram keeps 100k calibrators small):
    0  sum w            (decayed weight)
    1  sum w*y          (decayed positives)
    2  sum w*s          (for the bin's mean score: the map knot / holdout evaluation point)
    3  sum w*logit(s)   (only in fitting histograms: Platt's per-bin mean logit)
Decay bookkeeping (the reference time T) lives in the owner, which calls `scale` when T advances.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .logit import logit

__all__ = ["BinSpec", "Histogram"]

W, WY, WS, WZ = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class BinSpec:
    """n_bins equal-width bins on [logit_lo, logit_hi]; the end bins also catch everything beyond.

    Scores are clipped to [clip, 1 - clip] before binning, so logit(s) is finite.
    """

    n_bins: int = 96
    logit_lo: float = -8.0
    logit_hi: float = 4.0
    clip: float = 1e-7

    def __post_init__(self) -> None:
        if not 2 <= self.n_bins <= 1024:
            raise ValueError(f"n_bins must be in [2, 1024], got {self.n_bins}")
        lo, hi = self.logit_lo, self.logit_hi
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError("need finite logit_lo < logit_hi")
        if not 0.0 < self.clip < 0.5:
            raise ValueError(f"clip must be in (0, 0.5), got {self.clip}")

    @property
    def width(self) -> float:
        return (self.logit_hi - self.logit_lo) / self.n_bins

    @property
    def center_logits(self) -> np.ndarray:
        return self.logit_lo + (np.arange(self.n_bins) + 0.5) * self.width

    def clip_logit(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (clipped scores, their logits) as fresh float64 arrays."""
        s = np.clip(scores, self.clip, 1.0 - self.clip)
        return s, logit(s)

    def index(self, z: np.ndarray) -> np.ndarray:
        u = np.subtract(z, self.logit_lo)
        np.multiply(u, 1.0 / self.width, out=u)
        np.clip(u, 0.0, self.n_bins - 1, out=u)
        return u.astype(np.intp)


class Histogram:
    """Per-bin decayed sums; `with_logit` adds the sum w*logit(s) row needed for Platt."""

    __slots__ = ("spec", "sums")

    def __init__(self, spec: BinSpec, with_logit: bool = True, sums: np.ndarray | None = None) -> None:
        self.spec = spec
        rows = 4 if with_logit else 3
        if sums is None:
            sums = np.zeros((rows, spec.n_bins))
        elif sums.shape != (rows, spec.n_bins):
            raise ValueError(f"histogram sums must have shape {(rows, spec.n_bins)}, got {sums.shape}")
        self.sums = sums

    @property
    def with_logit(self) -> bool:
        return self.sums.shape[0] == 4

    @property
    def weight(self) -> np.ndarray:
        return self.sums[W]

    @property
    def positives(self) -> np.ndarray:
        return self.sums[WY]

    @property
    def total_weight(self) -> float:
        return float(self.sums[W].sum())

    @property
    def total_positives(self) -> float:
        return float(self.sums[WY].sum())

    def nonempty(self) -> np.ndarray:
        """Bins with non-negligible weight (decay can leave denormal dust whose ratios are meaningless)."""
        w = self.sums[W]
        return w > 1e-12 * max(float(w.sum()), 1e-300)

    def mean_score(self) -> np.ndarray:
        """Per-bin weighted mean score; the bin's center score where the bin is empty."""
        ok = self.nonempty()
        center = 1.0 / (1.0 + np.exp(-self.spec.center_logits))
        return np.where(ok, self.sums[WS] / np.where(ok, self.sums[W], 1.0), center)

    def mean_logit(self) -> np.ndarray:
        ok = self.nonempty()
        return np.where(ok, self.sums[WZ] / np.where(ok, self.sums[W], 1.0), self.spec.center_logits)

    def add(self, idx: np.ndarray, s: np.ndarray, z: np.ndarray, y: np.ndarray, w: np.ndarray | float) -> None:
        """Accumulate examples already binned (idx), clipped (s), logit-transformed (z), weighted (w)."""
        n = self.spec.n_bins
        sums = self.sums
        if isinstance(w, float):
            # Scalar weight (unweighted batch, one timestamp): one multiply per bin instead of per event.
            sums[W] += w * np.bincount(idx, minlength=n)
            sums[WY] += w * np.bincount(idx, weights=y, minlength=n)
            sums[WS] += w * np.bincount(idx, weights=s, minlength=n)
            if self.with_logit:
                sums[WZ] += w * np.bincount(idx, weights=z, minlength=n)
            return
        sums[W] += np.bincount(idx, weights=w, minlength=n)
        sums[WY] += np.bincount(idx, weights=w * y, minlength=n)
        sums[WS] += np.bincount(idx, weights=w * s, minlength=n)
        if self.with_logit:
            sums[WZ] += np.bincount(idx, weights=w * z, minlength=n)

    def scale(self, factor: float) -> None:
        self.sums *= factor
