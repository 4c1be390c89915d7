"""Pending exposure of one calibrator: the open attribution windows of its (model, model version, segment),
aggregated per calibrator bin and per start cohort x bin group, never per example.

Correction (`label_delay = "corrected"`): an open window of elapsed time e counts G(e) = F(e) / F(W) of a
trial, its conversion (if one arrived) counts in full, and at window close the example leaves the pending
state and enters the calibrator as an ordinary matured example, so the final state is the waited-for one.
Per calibrator bin b the folded sums are

    W_b = max(gbar_g(b) * w_b, y_b),   Y_b = y_b,   mean score of the bin = s_b / w_b,

with w_b, y_b, s_b the decayed opened mass, conversions so far and score sum of the bin's open windows, and
gbar_g the exposure factor of the bin's group: sum over start cohorts c of n_{c,g} * mean G over c's ages,
divided by sum_c n_{c,g}. Why it is unbiased: an open window with true rate p has converted by e with
probability p G(e), so E[Y] = p * sum G(e_i), and Y / sum G(e_i) solves the estimating equation (it is the
exact Bernoulli maximum likelihood when the e_i share one G). The per-bin max keeps a bin from holding more
conversions than trials (the fit's binomial terms need W >= Y); it errs towards lower rates in sparse bins.

>>> from recalibrators.calibrator import CalibratorConfig
>>> pe = PendingExposure.for_calibrator(CalibratorConfig(), window_ms=7 * 86_400_000)
>>> scores, starts = np.array([0.02, 0.03]), np.array([0, 1000])
>>> pe.add(scores, starts)  # two windows open
>>> pe.convert(scores[1:], starts[1:])  # the second converts
>>> round(pe.weight, 3), pe.n_open, pe.n_open_converted
(2.0, 2, 1)
>>> pe.mature(scores, np.array([0, 1]), starts)  # both close: the calibrator learns them as usual
>>> pe.weight, pe.cohorts.ids.size  # exactly empty
(0.0, 0)

Settings changes (`with_config`): a new bin layout or half-life cannot be applied to sums that must later be
taken out example by example with the same weight, so the exposure of the windows open at the change is
dropped and they enter at maturity only; their counts stay (`floor_ms`), so the map version never goes back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .calibration_map import CalibrationMap
from .calibrator import Calibrator, CalibratorConfig
from .delay import DelayCurve, DelayModel, advance_reference, align, select_curve
from .delay_cohorts import CohortTable
from .delay_pending_codec import PendingState, decode, encode
from .delay_pending_config import PendingConfig
from .logit import logit
from .validation import check_batch, check_timestamps

__all__ = ["PendingConfig", "PendingExposure", "corrected", "corrected_map", "corrected_version"]

W, WY, WS = 0, 1, 2


class PendingExposure:
    """Mutable pending state of one calibrator; one owner per instance."""

    __slots__ = ("_t_ref", "cohorts", "config", "floor_ms", "sums")

    def __init__(self, config: PendingConfig) -> None:
        self.config = config
        self.sums = np.zeros((3, config.bins.n_bins))
        # columns: decayed opened mass per bin group, then the exact (undecayed) counts of open windows and of
        # those that converted
        self.cohorts = CohortTable(config.cohort_ms, config.n_groups + 2)
        self._t_ref: int | None = None
        # windows that started before floor_ms (open at a settings change) are counted but carry no exposure
        self.floor_ms: int | None = None

    @classmethod
    def for_calibrator(cls, config: CalibratorConfig, window_ms: int, **kw: int) -> PendingExposure:
        return cls(PendingConfig(config.bins, config.half_life_ms, window_ms, **kw))

    @property
    def n_open(self) -> int:
        """Windows open now (exact; merged states add)."""
        return round(float(self.cohorts.rows[:, self.config.n_groups].sum()))

    @property
    def n_open_converted(self) -> int:
        """Open windows whose conversion arrived (exact; merged states add)."""
        return round(float(self.cohorts.rows[:, self.config.n_groups + 1].sum()))

    @property
    def weight(self) -> float:
        """Decayed mass of open windows (as of last_event_ms), each counted as one trial."""
        return float(self.sums[W].sum())

    @property
    def last_event_ms(self) -> int:
        return 0 if self._t_ref is None else self._t_ref

    def _prepare(self, scores: Any, start_ms: Any, labels: Any = None):
        """Validate (ValueError), advance T, bin; the decay weight of each example as of T."""
        s, y, _ = check_batch(scores, np.zeros(np.shape(scores), np.uint8) if labels is None else labels)
        t = check_timestamps(start_ms, s.shape[0])
        t = np.full(s.shape[0], t, dtype=np.int64) if isinstance(t, int) else t
        self._t_ref, factor = advance_reference(self._t_ref, t, self.config.half_life_ms)
        if factor != 1.0:
            self.sums *= factor
            self.cohorts.rows[:, : self.config.n_groups] *= factor
        s, z = self.config.bins.clip_logit(s)
        w = np.exp2((t - self.last_event_ms) / self.config.half_life_ms)
        return self.config.bins.index(z), s, y, t, w

    def _cohort_cols(self, idx: np.ndarray, w: np.ndarray, opened: float, converted: Any) -> np.ndarray:
        k = self.config.n_groups
        cols = np.zeros((idx.size, k + 2))
        cols[np.arange(idx.size), self.config.group[idx]] = w
        cols[:, k], cols[:, k + 1] = opened, converted
        return cols

    def _exposed(self, t: np.ndarray) -> np.ndarray:
        """Which windows carry exposure: all but those open at a settings change (`floor_ms`)."""
        return np.ones(t.shape, bool) if self.floor_ms is None else t >= self.floor_ms

    def add(self, scores: Any, start_ms: Any) -> None:
        """Windows opened: examples whose labels are not final yet."""
        if np.size(scores) == 0:
            return
        idx, s, _, t, w = self._prepare(scores, start_ms)
        w = w * self._exposed(t)
        n = self.config.bins.n_bins
        self.sums[W] += np.bincount(idx, weights=w, minlength=n)
        self.sums[WS] += np.bincount(idx, weights=w * s, minlength=n)
        self.cohorts.add(t, self._cohort_cols(idx, w, 1.0, 0.0))

    def convert(self, scores: Any, start_ms: Any) -> None:
        """First in-window conversions of open windows (scores and starts as added)."""
        if np.size(scores) == 0:
            return
        idx, _, _, t, w = self._prepare(scores, start_ms)
        live = np.isin(np.floor_divide(t, self.cohorts.width_ms), self.cohorts.ids)
        w = w * self._exposed(t)
        self.sums[WY] += np.bincount(idx[live], weights=w[live], minlength=self.config.bins.n_bins)
        self.cohorts.add(t, self._cohort_cols(idx, np.zeros_like(w), 0.0, 1.0), only_existing=True)

    def mature(self, scores: Any, labels: Any, start_ms: Any) -> None:
        """Windows closed: take the examples out (the caller feeds them to the calibrator as usual)."""
        if np.size(scores) == 0:
            return
        idx, s, y, t, w = self._prepare(scores, start_ms, labels)
        live = np.isin(np.floor_divide(t, self.cohorts.width_ms), self.cohorts.ids)
        idx, s, y, t, w = idx[live], s[live], y[live], t[live], w[live] * self._exposed(t[live])
        n = self.config.bins.n_bins
        self.sums[W] -= np.bincount(idx, weights=w, minlength=n)
        self.sums[WY] -= np.bincount(idx, weights=w * y, minlength=n)
        self.sums[WS] -= np.bincount(idx, weights=w * s, minlength=n)
        self.cohorts.add(t, -self._cohort_cols(idx, w, 1.0, y), only_existing=True)
        self._forget(self.cohorts.rows[:, self.config.n_groups] > 0.5)

    def close_through(self, start_ms: int) -> None:
        """Every window that started before start_ms has matured: drop those cohorts."""
        self._forget((self.cohorts.ids + 1) * self.cohorts.width_ms > start_ms)

    def _forget(self, keep: np.ndarray) -> None:
        """Drop cohorts (all their windows closed); with none left the sums are set to exactly zero, so no
        rounding dust of the subtractions survives and the state is the waited-for one."""
        self.cohorts.keep(keep)
        if self.cohorts.ids.size == 0:
            self.sums[:] = 0.0

    def fold(self, curve: DelayCurve | None, now_ms: int | None = None) -> np.ndarray:
        """(4, n_bins) fitting-histogram sums (W, WY, WS, WZ) of the corrected open windows, decayed as of
        last_event_ms; ages are taken at now_ms (default last_event_ms). Zero without a curve."""
        out = np.zeros((4, self.config.bins.n_bins))
        if curve is None or self.cohorts.ids.size == 0:
            return out
        lo, hi = self.cohorts.age_ranges(self.last_event_ms if now_ms is None else now_ms)
        rows = np.maximum(self.cohorts.rows[:, : self.config.n_groups], 0.0)
        mass = rows.sum(axis=0)
        gbar = np.where(mass > 0, (curve.mean_over(lo, hi) @ rows) / np.where(mass > 0, mass, 1.0), 0.0)
        w, y, ws = (np.maximum(r, 0.0) for r in self.sums)
        live = w > 1e-12 * max(float(w.sum()), 1e-300)
        mean = np.where(live, ws / np.where(live, w, 1.0), 0.5)
        mean = np.clip(mean, self.config.bins.clip, 1.0 - self.config.bins.clip)
        out[0] = np.where(live, np.maximum(gbar[self.config.group] * w, y), 0.0)
        out[1] = np.where(live, y, 0.0)
        out[2] = out[0] * mean
        out[3] = out[0] * logit(mean)
        return out

    def merge(self, other: PendingExposure) -> PendingExposure:
        if other.config != self.config:
            raise ValueError("cannot merge pending exposures with different configs")
        out = PendingExposure(self.config)
        out._t_ref, f = align(self._t_ref, other._t_ref, self.config.half_life_ms)
        out.floor_ms = max((v for v in (self.floor_ms, other.floor_ms) if v is not None), default=None)
        out.sums = self.sums * f[0] + other.sums * f[1]
        out.cohorts = self.cohorts.merged(other.cohorts, f[0], f[1], n_decayed=self.config.n_groups)
        return out

    def with_config(self, config: PendingConfig) -> PendingExposure:
        """This state under other settings (module doc): a new bin layout or half-life keeps the open windows'
        counts and drops their exposure (they enter at maturity, exactly as they would have); a new window or
        cohort layout starts afresh. Unchanged settings: self."""
        if config == self.config:
            return self
        out = PendingExposure(config)
        same_cohorts = (config.window_ms, config.n_cohorts, config.n_groups) == (
            self.config.window_ms,
            self.config.n_cohorts,
            self.config.n_groups,
        )
        if same_cohorts and self.cohorts.ids.size:
            out.cohorts = self.cohorts.copy()
            out.cohorts.rows[:, : config.n_groups] = 0.0
            out._t_ref = self._t_ref
            # every open window started before the floor
            out.floor_ms = max(self.floor_ms or 0, int(self.cohorts.hi_ms.max()) + 1)
        return out

    def to_bytes(self) -> bytes:
        """The state as bytes (`recalibrators.delay_pending_codec`); lossless."""
        return encode(PendingState(self.config, self.sums, self.cohorts, self._t_ref, self.floor_ms))

    @classmethod
    def from_bytes(cls, data: bytes) -> PendingExposure:
        state = decode(data)
        out = cls(state.config)
        out.sums, out.cohorts, out._t_ref, out.floor_ms = state.sums, state.cohorts, state.t_ref, state.floor_ms
        return out


def corrected(
    calibrator: Calibrator, pending: PendingExposure, curve: DelayCurve | None, now_ms: int | None = None
) -> tuple[Calibrator, float]:
    """(the calibrator with the corrected open windows folded in, matured_fraction: the share of its fitting
    weight whose windows have closed). With nothing pending or no curve it is the calibrator itself."""
    sums, t_ref = pending.fold(curve, now_ms), pending.last_event_ms
    if now_ms is not None and t_ref is not None and t_ref > now_ms:
        # A window dated ahead of the clock (within max_future_skew) must not move the map's decay reference
        # past it: that decayed every matured example by 2**(-lead / half_life). Its sums are re-expressed
        # as of the clock instead (it then weighs 2**(lead / half_life), about 1, as the join's clock bounds it).
        sums, t_ref = sums * 2.0 ** ((t_ref - now_ms) / pending.config.half_life_ms), now_ms
    out = calibrator.with_pending(sums, t_ref)
    total = out.n_effective
    matured = calibrator.n_effective * 2.0 ** (
        -(out.last_event_ms - calibrator.last_event_ms) / pending.config.half_life_ms
    )
    return out, (matured / total if total > 0 else 1.0)


def corrected_version(calibrator: Calibrator, pending: PendingExposure | None) -> int:
    """Map version of a corrected key: 3 per matured example plus 1 per open window and 1 per open window's
    conversion. It grows with every record (a window opens +1, converts +1, closes +3 - 1 - converted), so a
    corrected map can replace the one before it under the publish fence; once every window has closed it is
    3 * n_seen, whichever way the state was built (a replay from the matured labels gives the same)."""
    return 3 * calibrator.n_seen + (0 if pending is None else pending.n_open + pending.n_open_converted)


def corrected_map(
    calibrator: Calibrator,
    pending: PendingExposure | None,
    delay_chain: Sequence[DelayModel | None],
    now_ms: int | None = None,
    **meta: Any,
) -> CalibrationMap:
    """The refresh-time map of a `label_delay = "corrected"` calibrator: the curve of the first level of the
    segment fallback chain (finest first) with enough conversions, the open windows folded in, and in
    `metrics` the matured fraction, the delay summary and `delay_level` (index in the chain). When no open
    window carries exposure (none open, no curve yet, or pending None: a replay of matured labels) it is the
    waited-for map with `matured_fraction` 1.0 and `delay_level` -1 and nothing else: a fully matured map
    rests on no delay model, and carries the same bytes whichever path built it. Version: `corrected_version`;
    `meta` overrides as in `to_map`."""
    curve, level = select_curve(delay_chain, now_ms) if pending is not None else (None, -1)
    metrics = dict(meta.pop("metrics", None) or {})
    version = corrected_version(calibrator, pending)
    if pending is None or not np.any(pending.fold(curve, now_ms)):
        metrics |= {"matured_fraction": 1.0, "delay_level": -1}
        return calibrator.to_map(**({"map_version": version, "metrics": metrics} | meta))
    cal, matured = corrected(calibrator, pending, curve, now_ms)
    metrics |= {"matured_fraction": round(matured, 6), "delay_level": level}
    if curve is not None:
        metrics |= curve.summary()
    return cal.to_map(**({"map_version": version, "metrics": metrics} | meta))
