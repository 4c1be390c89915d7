"""Streaming calibrator for one (model, segment): decayed histograms -> Platt / Bayes-shrunk isotonic map.

Decay runs on EVENT time so a replay reproduces the state bit-for-bit: sums are kept "as of" T = max event
time seen; an event at t contributes w * 2**(-(T - t) / half_life) and advancing T rescales all sums. The
result is independent of arrival order and batching up to float rounding, and two calibrators merge by
aligning to the later T and adding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .batch import PreparedBatch, add_part, prepare_batch
from .calibration_map import CalibrationMap
from .calibrator_codec import CalibratorState, decode, encode
from .calibrator_config import METHODS, CalibratorConfig
from .calibrator_fit import Fit, fit_map, rebin
from .histogram import Histogram

__all__ = ["METHODS", "Calibrator", "CalibratorConfig"]


class Calibrator:
    """Mutable per-(model, segment) state. Not thread-safe; one owner per instance.

    Learn labeled scores (a batch, or `learn_one`), then publish a monotone map; merging two calibrators is
    the same as one fed both streams, with decay on event time. A model that over-predicts twofold:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> scores = rng.uniform(0.01, 0.2, 50_000)
    >>> labels = (rng.random(50_000) < scores / 2).astype(np.int8)
    >>> cal = Calibrator(CalibratorConfig(half_life_ms=6 * 3600 * 1000))
    >>> cal.learn_batch(scores, labels, ts_ms=1_700_000_000_000)
    >>> m = cal.to_map(model="ctr")
    >>> m.method, m.map_version
    ('isotonic', 50000)
    >>> m.apply(np.array([0.02, 0.1, 0.18])).round(2)
    array([0.01, 0.05, 0.09])

    A click one half-life later halves the old weight when merged; the state round-trips through bytes:

    >>> late = Calibrator(cal.config)
    >>> late.learn_one(0.1, 1, ts_ms=1_700_000_000_000 + 6 * 3600 * 1000)
    >>> both = cal.merge(late)
    >>> both.n_effective, both.n_seen
    (25001.0, 50001)
    >>> Calibrator.from_bytes(cal.to_bytes()).to_map(model="ctr") == m
    True
    """

    __slots__ = ("_fit", "_holdout", "_main", "_n_seen", "_t_ref", "config", "prior")

    def __init__(self, config: CalibratorConfig | None = None, prior: CalibrationMap | None = None) -> None:
        self.config = config if config is not None else CalibratorConfig()
        self.prior = prior
        spec = self.config.bins
        self._main = Histogram(spec, with_logit=True)
        self._holdout = Histogram(spec, with_logit=False)
        self._t_ref: int | None = None
        self._n_seen = 0
        self._fit: Fit | None = None

    # ---- state accessors -------------------------------------------------------------------------------
    @property
    def n_effective(self) -> float:
        """Decayed weight of the fitting histogram (as of last_event_ms)."""
        return self._main.total_weight

    @property
    def positives(self) -> float:
        return self._main.total_positives

    @property
    def last_event_ms(self) -> int:
        """Reference time T (max event time seen); 0 before any event."""
        return 0 if self._t_ref is None else self._t_ref

    @property
    def n_seen(self) -> int:
        """Exact count of examples ever learned (fitting + held back); a monotone map version."""
        return self._n_seen

    @property
    def histogram(self) -> Histogram:
        return self._main

    @property
    def holdout(self) -> Histogram:
        return self._holdout

    # ---- learning --------------------------------------------------------------------------------------
    def learn_batch(
        self,
        scores: Any,
        labels: Any,
        weights: Any | None = None,
        *,
        ts_ms: int | np.ndarray,
        holdout: Any | None = None,
    ) -> None:
        """Add a batch. ts_ms: one int for the batch or one per example. holdout: optional bool mask of
        held-back examples; they only update the holdout histogram. Raises ValueError on invalid input."""
        self.learn_prepared(prepare_batch(self.config.bins, scores, labels, weights, ts_ms=ts_ms, holdout=holdout))

    def learn_prepared(self, batch: PreparedBatch) -> None:
        """Add a batch validated and binned once by `prepare_batch` (with this config's bins), e.g. for
        every level of a segment fallback chain; identical to `learn_batch` on the same arrays."""
        self._advance(batch.t_max)
        cfg = self.config
        for part, hist, half_life in (
            (batch.main, self._main, cfg.half_life_ms),
            (batch.held, self._holdout, cfg.holdout_half_life_ms),
        ):
            if part is not None:
                add_part(hist, part, half_life, self._t_ref)
        self._n_seen += batch.n
        self._fit = None

    def add_decayed_sums(self, t_max: int, n: int, main: np.ndarray, held: np.ndarray) -> None:
        """Add n examples' per-bin sums ((4, n_bins) fitting, (3, n_bins) held back), already decayed to
        max(last_event_ms, t_max) (`recalibrators.grouped`); the same update `learn_prepared` makes."""
        self._advance(t_max)
        self._main.sums += main
        self._holdout.sums += held
        self._n_seen += n
        self._fit = None

    def learn_one(self, score: float, label: int, ts_ms: int, weight: float = 1.0, holdout: bool = False) -> None:
        self.learn_batch([score], [label], [weight], ts_ms=ts_ms, holdout=np.array([holdout]))

    def _advance(self, t_max: int) -> None:
        if self._t_ref is None:
            self._t_ref = t_max
        elif t_max > self._t_ref:
            dt = t_max - self._t_ref
            self._main.scale(2.0 ** (-dt / self.config.half_life_ms))
            self._holdout.scale(2.0 ** (-dt / self.config.holdout_half_life_ms))
            self._t_ref = t_max

    # ---- fitting ---------------------------------------------------------------------------------------
    def to_map(self, **meta: Any) -> CalibrationMap:
        """Publishable map. Defaults: n/positives/last_event_ms from the state, map_version=n_seen,
        updated_at=last_event_ms (event time, so replays reproduce maps); any field may be overridden."""
        if self._fit is None:
            self._fit = fit_map(self._main, self.config, self.prior)
        x, y, platt, method = self._fit
        return CalibrationMap(x=x, y=y, method=method, platt=platt, **(self.map_meta() | meta))

    def map_meta(self) -> dict[str, Any]:
        """`to_map`'s default provenance fields, for maps fitted elsewhere (e.g. `recalibrators.hierarchy`)."""
        return {
            "n": self.n_effective,
            "positives": self.positives,
            "last_event_ms": self.last_event_ms,
            "map_version": self._n_seen,
            "updated_at": self.last_event_ms,
        }

    def forget(self, half_lives: float) -> None:
        """Down-weight everything learned so far by 2**-half_lives (a detected drift): the fit as if the old
        examples were `half_lives` fitting half-lives older. The held-back histogram is scaled alike, so the gate
        does not judge the new map on pre-drift labels. The state stays a valid decayed state (merges, serialises)."""
        if not half_lives >= 0:
            raise ValueError(f"half_lives must be >= 0, got {half_lives!r}")
        factor = 2.0**-half_lives
        self._main.scale(factor)
        self._holdout.scale(factor)
        self._fit = None

    def with_pending(self, sums: np.ndarray, t_ref: int) -> Calibrator:
        """A copy whose fitting histogram also holds `sums` ((4, n_bins) W, WY, WS, WZ decayed as of `t_ref`
        with this half-life): the delayed-feedback correction's open windows, folded in at refresh time
        (recalibrators.delay_pending). n_seen is unchanged: examples are counted once, when they mature.
        All-zero sums give an identical calibrator (so a fully matured state maps exactly as waiting)."""
        out = Calibrator(self.config, self.prior)
        out._main.sums[:] = self._main.sums
        out._holdout.sums[:] = self._holdout.sums
        out._t_ref, out._n_seen = self._t_ref, self._n_seen
        if np.any(sums):
            out._advance(t_ref)
            out._main.sums += sums * 2.0 ** (-(out._t_ref - t_ref) / self.config.half_life_ms)
        return out

    # ---- merge & persistence ---------------------------------------------------------------------------
    def with_config(self, config: CalibratorConfig) -> Calibrator:
        """This state under another config (changed n_bins, half-life, method or prior strength): the decayed
        sums and n_seen are kept, moved to the new bins by `calibrator_fit.rebin` when the bins differ (totals
        stay exact). New half-lives apply from the next event on.

        >>> old = Calibrator(CalibratorConfig(n_bins=96))
        >>> old.learn_batch([0.1, 0.2, 0.9], [0, 1, 1], ts_ms=0)
        >>> new = old.with_config(CalibratorConfig(n_bins=40))
        >>> new.config.n_bins, new.n_seen, new.positives == old.positives
        (40, 3, True)
        """
        out = Calibrator(config, self.prior)
        out._t_ref, out._n_seen = self._t_ref, self._n_seen
        out._main, out._holdout = rebin(self._main, out.config.bins), rebin(self._holdout, out.config.bins)
        return out

    def merge(self, other: Calibrator) -> Calibrator:
        """New calibrator equal (up to rounding) to one fed both streams; inputs are unchanged."""
        if other.config != self.config:
            raise ValueError("cannot merge calibrators with different configs")
        if self.prior is not None and other.prior is not None and self.prior != other.prior:
            raise ValueError("cannot merge calibrators with different priors")
        out = Calibrator(self.config, self.prior if self.prior is not None else other.prior)
        times = [c._t_ref for c in (self, other) if c._t_ref is not None]
        out._t_ref = max(times) if times else None
        for src in (self, other):
            if src._t_ref is None:
                continue
            dt = out._t_ref - src._t_ref
            out._main.sums += src._main.sums * 2.0 ** (-dt / self.config.half_life_ms)
            out._holdout.sums += src._holdout.sums * 2.0 ** (-dt / self.config.holdout_half_life_ms)
        out._n_seen = self._n_seen + other._n_seen
        return out

    def to_bytes(self) -> bytes:
        """The state as bytes (`recalibrators.calibrator_codec`); no pickle, <= 8 KB for the default config."""
        return encode(CalibratorState(self.config, self.prior, self._main, self._holdout, self._t_ref, self._n_seen))

    @classmethod
    def from_bytes(cls, data: bytes) -> Calibrator:
        state = decode(data)
        out = cls(state.config, state.prior)
        out._main, out._holdout = state.main, state.holdout
        out._t_ref, out._n_seen = state.t_ref, state.n_seen
        return out
