"""Silent-drift detection per map key with river's change detectors, and the faster forgetting it triggers.

Each key's detector watches `recalibrators.drift.calibration_z` of its published map on the labels that arrived
since the last refresh (~N(0, 1) while calibrated). On a detection the key's calibrator forgets: its state is
aged by `forget_half_lives` at once (`Calibrator.forget`), so the next map is fitted mostly on post-change data.

Why aging and not a reset with the current map as prior: an aged state is still an ordinary decayed state, so
partition partials keep merging and replays stay deterministic; a false alarm costs variance for about one
half-life, never bias; and the map follows the new data at once, where a prior map of empirical-Bayes strength
would hold the stale curve until the new data reject it.

In the worker (`drift_detector = "page_hinkley"` or `"adwin"` in a model's config) the merged state of a key is
cumulative (partition partials are re-sent whole), so `SilentDrift` forgets at merge time instead: it keeps a
discount `D` per key, fits on `C - D`, and on a detection sets `D <- (1 - f) C_prev + f D` (f =
2**-forget_half_lives, C_prev the state of the previous refresh decayed to now): what was known before the change
is weighted f times, the news that set the detector off stays whole, exactly as `Calibrator.forget` before
learning the refresh's batch. `D` lives in memory: after a restart the stale state comes
back, its z jumps and the detector fires again.

Page-Hinkley (`kind="page_hinkley"`, a two-sided CUSUM on z with tolerance `delta` and threshold `threshold`)
is the default: the benchmark (`bench/bench_sparse.py`) measures it against ADWIN (`kind="adwin"`).

>>> import numpy as np
>>> monitor = DriftMonitor()
>>> rng = np.random.default_rng(0)
>>> [monitor.update("ctr:*", float(z)) for z in rng.normal(0.0, 1.0, 200)].count(True)
0
>>> [monitor.update("ctr:*", float(z)) for z in rng.normal(4.0, 1.0, 10)].count(True)
1
>>> monitor.detections["ctr:*"]
1
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import numpy as np

from recalibrators.calibration_map import CalibrationMap
from recalibrators.calibrator import Calibrator
from recalibrators.drift import binned_calibration_z

log = logging.getLogger("recal.drift")

__all__ = ["KINDS", "DriftMonitor", "SilentDrift"]

KINDS = ("page_hinkley", "adwin")
# Tuned on z-statistics (bench/bench_sparse.py): PH tolerates a level offset of `delta` standard errors; ADWIN
# checks every update (clock=1: one value per refresh is already an aggregate).
DEFAULTS: dict[str, dict[str, Any]] = {
    "page_hinkley": {"min_instances": 10, "delta": 0.5, "threshold": 12.0, "alpha": 1.0, "mode": "both"},
    "adwin": {"delta": 0.002, "clock": 1, "grace_period": 10},
}


class DriftMonitor:
    """One river detector per key, fed one z per refresh; counts detections per key."""

    def __init__(self, kind: str = "page_hinkley", forget_half_lives: float = 4.0, **params: Any) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if not forget_half_lives > 0:
            raise ValueError(f"forget_half_lives must be > 0, got {forget_half_lives!r}")
        self.kind = kind
        self.forget_half_lives = forget_half_lives
        self.params = DEFAULTS[kind] | params
        self._detectors: dict[str, Any] = {}
        self.detections: Counter[str] = Counter()

    def _new(self) -> Any:
        try:
            from river import drift  # optional: only models with a drift_detector need it
        except ImportError as exc:
            raise RuntimeError("drift detection needs river: pip install 'recal[drift]'") from exc
        return drift.PageHinkley(**self.params) if self.kind == "page_hinkley" else drift.ADWIN(**self.params)

    def update(self, key: str, z: float) -> bool:
        """Feed one refresh's z for `key`; True when it signals a change (counted and logged)."""
        detector = self._detectors.get(key)
        if detector is None:
            detector = self._detectors[key] = self._new()
        detector.update(z)
        if not detector.drift_detected:
            return False
        self.detections[key] += 1
        log.warning(
            "silent drift on %s (%s, z=%.2f): forgetting %.1f half-lives",
            key,
            self.kind,
            z,
            self.forget_half_lives,
            extra={"key": key, "detector": self.kind, "z": z, "detections": self.detections[key]},
        )
        return True


Sums = tuple[np.ndarray, np.ndarray]  # a state's fitting and held-back histogram sums


def _decayed(sums: Sums, since_ms: int, now_ms: int, cal: Calibrator) -> Sums:
    """Sums kept as of `since_ms`, decayed to `now_ms` with `cal`'s two half-lives."""
    cfg = cal.config
    main, held = sums
    return (
        main * 2.0 ** (-(now_ms - since_ms) / cfg.half_life_ms),
        held * 2.0 ** (-(now_ms - since_ms) / cfg.holdout_half_life_ms),
    )


def _increment(now: Sums, before: Sums) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weight, positives, mean score) per bin of the examples learned between `before` (already decayed to
    now) and `now`, fitting and held back together."""
    w, pos, ws = (
        np.clip(now[0][i] - before[0][i], 0.0, None) + np.clip(now[1][i] - before[1][i], 0.0, None) for i in range(3)
    )
    live = w > 1e-9 * max(float(now[0][0].sum()), 1.0)  # decay leaves rounding dust in bins without news
    w = np.where(live, w, 0.0)
    return w, np.where(live, pos, 0.0), np.where(live, ws / np.where(live, w, 1.0), 0.0)


class SilentDrift:
    """Per key: the z of its published map on what the merged state learned since the last refresh, one
    `DriftMonitor` per detector kind, and the discount that makes a cumulative state forget."""

    def __init__(self) -> None:
        self.monitors: dict[str, DriftMonitor] = {}
        self._last: dict[str, tuple[str, int, Sums]] = {}  # key -> (model version, T, merged sums at T)
        self._discount: dict[str, tuple[str, int, Sums]] = {}  # key -> (model version, T, D as of T)

    def detections(self, key: str) -> int:
        return sum(m.detections[key] for m in self.monitors.values())

    def observe(
        self, kind: str, key: str, version: str, merged: Calibrator, published: CalibrationMap | None
    ) -> Calibrator:
        """Update `key`'s detector with its freshly merged (cumulative) state; return the state to fit:
        `merged` itself, the key's discount subtracted in place."""
        if kind not in self.monitors:
            self.monitors[kind] = DriftMonitor(kind)
        monitor = self.monitors[kind]
        now = merged.last_event_ms
        raw = (merged.histogram.sums.copy(), merged.holdout.sums.copy())
        last, self._last[key] = self._last.get(key), (version, now, raw)
        same = last is not None and last[0] == version and published is not None and published.model_version == version
        if same:
            before = _decayed(last[2], last[1], now, merged)
            w, pos, mean = _increment(raw, before)
            if w.any() and monitor.update(key, binned_calibration_z(published, w, pos, mean)):
                # Forget what was known before this refresh; the news that set the detector off is kept whole.
                f = 2.0**-monitor.forget_half_lives
                old = self._discount.get(key)
                d = _decayed(old[2], old[1], now, merged) if old and old[0] == version else (0.0, 0.0)
                self._discount[key] = (version, now, tuple((1 - f) * b + f * x for b, x in zip(before, d, strict=True)))
        discount = self._discount.get(key)
        if discount is not None and discount[0] == version:
            decayed = _decayed(discount[2], discount[1], now, merged)
            for hist, d in zip((merged.histogram, merged.holdout), decayed, strict=True):
                hist.sums -= d
                np.clip(hist.sums[:3], 0.0, None, out=hist.sums[:3])  # w, w*y, w*s >= 0 (w*logit(s) is not)
            merged.forget(0.0)  # drops the fit cache of the edited sums
        return merged
