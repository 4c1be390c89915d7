"""Streaming calibrator for one (model, segment): decayed histograms -> Platt / Bayes-shrunk isotonic map.

Decay runs on EVENT time so a replay reproduces the state bit-for-bit: sums are kept "as of" T = max event
time seen; an event at t contributes w * 2**(-(T - t) / half_life) and advancing T rescales all sums. The
result is independent of arrival order and batching up to float rounding, and two calibrators merge by
aligning to the later T and adding.
"""

from __future__ import annotations

import dataclasses
import functools
import struct
from typing import Any

import numpy as np
import orjson

from .batch import PreparedBatch, prepare_batch
from .calibration_map import CalibrationMap
from .histogram import BinSpec, Histogram
from .isotonic import cap_by_prior_evidence, eb_prior_strength, match_total, shrunk_isotonic
from .logit import logit, sigmoid
from .platt import fit_platt

__all__ = ["METHODS", "Calibrator", "CalibratorConfig"]

METHODS = ("isotonic", "platt")
_FORMAT = 1
_HEADER = struct.Struct("<I")


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
        self._fit: tuple[np.ndarray, np.ndarray, tuple[float, float] | None, str] | None = None

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
                self._add(hist, half_life, *part)
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

    def _add(
        self,
        hist: Histogram,
        half_life: float,
        idx: np.ndarray,
        s: np.ndarray,
        z: np.ndarray,
        y: np.ndarray,
        w: np.ndarray | None,
        t: int | np.ndarray,
    ) -> None:
        if isinstance(t, int):
            decay = 2.0 ** ((t - self._t_ref) / half_life)
            hist.add(idx, s, z, y, decay if w is None else w * decay)
        else:
            decay = np.exp2((t - self._t_ref) / half_life)
            hist.add(idx, s, z, y, decay if w is None else np.multiply(decay, w, out=decay))

    # ---- fitting ---------------------------------------------------------------------------------------
    def to_map(self, **meta: Any) -> CalibrationMap:
        """Publishable map. Defaults: n/positives/last_event_ms from the state, map_version=n_seen,
        updated_at=last_event_ms (event time, so replays reproduce maps); any field may be overridden."""
        if self._fit is None:
            self._fit = self._compute_fit()
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

    def _compute_fit(self) -> tuple[np.ndarray, np.ndarray, tuple[float, float] | None, str]:
        cfg, h, prior = self.config, self._main, self.prior
        if h.total_weight <= 0.0:
            if prior is not None:
                return prior.x, prior.y, prior.platt, prior.method
            return np.array([0.0, 1.0]), np.array([0.0, 1.0]), None, "identity"
        ok = h.nonempty()
        w = np.where(ok, h.weight, 0.0)
        p = np.where(ok, h.positives, 0.0)
        x = h.mean_score()
        center = prior.platt if prior is not None and prior.platt is not None else (1.0, 0.0)
        a, b = fit_platt(w[ok], p[ok], h.mean_logit()[ok], ridge=cfg.ridge, center=center)
        platt_knots = sigmoid(a * logit(x) + b)
        # Platt's limits at s=0 and s=1 (a >= 0 is enforced by the fit).
        ends = (0.0, 1.0) if a > 0 else (float(sigmoid(b)),) * 2
        if cfg.method == "platt":
            y = platt_knots
        else:
            base = platt_knots if prior is None else prior.apply(x)
            if prior is not None:
                ends = (prior.apply_one(0.0), prior.apply_one(1.0))
            m = cfg.prior_strength if cfg.prior_strength is not None else eb_prior_strength(w, p, base)
            if prior is not None and cfg.prior_strength is None:
                m = cap_by_prior_evidence(m, w, x, prior.n, None if prior.ess is None else (prior.x, prior.ess))
            y = np.clip(shrunk_isotonic(w, p, base, m), 0.0, 1.0)
            if prior is None:  # a previous model's map is not fitted to this data: its total may be off
                y = match_total(y, w, p, cfg.ridge)
        x = np.concatenate(([0.0], x, [1.0]))
        y = np.concatenate(([min(ends[0], y[0])], y, [max(ends[1], y[-1])]))
        # Bin means are strictly increasing in exact arithmetic; drop any knot rounding made non-increasing.
        keep = np.concatenate(([True], np.diff(x) > 0))
        if not keep.all():
            x, y = x[keep], y[keep]
        return x, y, (a, b), cfg.method

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
        sums and n_seen are kept. When the bins differ, each old bin's sums move whole to the new bin holding
        its mean logit, so totals (weight, positives, score sums) stay exact and no example moves by more than
        one old bin width. New half-lives apply from the next event on.

        >>> old = Calibrator(CalibratorConfig(n_bins=96))
        >>> old.learn_batch([0.1, 0.2, 0.9], [0, 1, 1], ts_ms=0)
        >>> new = old.with_config(CalibratorConfig(n_bins=40))
        >>> new.config.n_bins, new.n_seen, new.positives == old.positives
        (40, 3, True)
        """
        out = Calibrator(config, self.prior)
        out._t_ref, out._n_seen = self._t_ref, self._n_seen
        for src, dst in ((self._main, out._main), (self._holdout, out._holdout)):
            if src.spec == dst.spec:
                dst.sums[:] = src.sums
                continue
            used = np.any(src.sums != 0.0, axis=0)
            w = src.sums[0, used]
            safe_w = np.where(w != 0.0, w, 1.0)
            if src.with_logit:
                z = np.where(w != 0.0, src.sums[3, used] / safe_w, src.spec.center_logits[used])
            else:
                mean = np.where(w != 0.0, src.sums[2, used] / safe_w, sigmoid(src.spec.center_logits[used]))
                z = dst.spec.clip_logit(mean)[1]
            idx = dst.spec.index(z)
            for row in range(dst.sums.shape[0]):
                dst.sums[row] = np.bincount(idx, weights=src.sums[row, used], minlength=dst.spec.n_bins)
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
        """u32 header length | orjson header | per histogram: packed non-empty-bin mask + those columns
        (float64 LE) | prior knots x, y (float64 LE). No pickle; <= 8 KB for the default config."""
        header: dict[str, Any] = {
            "format": _FORMAT,
            "config": dataclasses.asdict(self.config),
            "t_ref": self._t_ref,
            "n_seen": self._n_seen,
        }
        parts = []
        for hist in (self._main, self._holdout):
            mask = np.any(hist.sums != 0.0, axis=0)
            parts.append(np.packbits(mask).tobytes())
            parts.append(np.ascontiguousarray(hist.sums[:, mask], dtype="<f8").tobytes())
        if self.prior is not None:
            prior_doc = orjson.loads(self.prior.to_json())
            del prior_doc["x"], prior_doc["y"]
            header["prior"] = prior_doc
            header["prior_knots"] = int(self.prior.x.size)
            parts.append(self.prior.x.astype("<f8").tobytes() + self.prior.y.astype("<f8").tobytes())
        head = orjson.dumps(header)
        return _HEADER.pack(len(head)) + head + b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> Calibrator:
        try:
            (hlen,) = _HEADER.unpack_from(data, 0)
            header = orjson.loads(data[_HEADER.size : _HEADER.size + hlen])
            if header.get("format") != _FORMAT:
                raise ValueError(f"unsupported calibrator format {header.get('format')!r}")
            config = CalibratorConfig(**header["config"])
            buf = memoryview(data)[_HEADER.size + hlen :]
            spec = config.bins
            hists = []
            for rows in (4, 3):
                nmask = (spec.n_bins + 7) // 8
                mask = np.unpackbits(np.frombuffer(buf[:nmask], dtype=np.uint8))[: spec.n_bins].astype(bool)
                k = int(mask.sum())
                cols = np.frombuffer(buf[nmask : nmask + 8 * rows * k], dtype="<f8").reshape(rows, k)
                sums = np.zeros((rows, spec.n_bins))
                sums[:, mask] = cols
                hists.append(Histogram(spec, with_logit=rows == 4, sums=sums))
                buf = buf[nmask + 8 * rows * k :]
            prior = None
            if "prior" in header:
                n = header["prior_knots"]
                knots = np.frombuffer(buf[: 16 * n], dtype="<f8")
                prior_doc = header["prior"] | {"x": knots[:n].tolist(), "y": knots[n:].tolist()}
                prior = CalibrationMap.from_json(orjson.dumps(prior_doc))
                buf = buf[16 * n :]
            if len(buf):
                raise ValueError(f"{len(buf)} trailing bytes")
        except (struct.error, orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"corrupt calibrator state: {exc!r}") from None
        except ValueError as exc:
            raise ValueError(f"corrupt calibrator state: {exc}") from None
        out = cls(config, prior)
        out._main, out._holdout = hists
        out._t_ref = header["t_ref"]
        out._n_seen = header["n_seen"]
        return out
