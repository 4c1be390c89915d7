"""Silent-drift detection per map key with river's change detectors, and the faster forgetting it triggers.

Each key's detector watches `recalibrators.drift.calibration_z` of its published map on the labels that arrived
since the last refresh (~N(0, 1) while calibrated). On a detection the key's calibrator forgets: its state is
aged by `forget_half_lives` at once (`Calibrator.forget`), so the next map is fitted mostly on post-change data.

Why aging and not a reset with the current map as prior: an aged state is still an ordinary decayed state, so
partition partials keep merging and replays stay deterministic; a false alarm costs variance for about one
half-life, never bias; and the map follows the new data at once, where a prior map of empirical-Bayes strength
would hold the stale curve until the new data reject it.

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

from river import drift

log = logging.getLogger("recal.drift")

__all__ = ["KINDS", "DriftMonitor"]

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
        self._detectors: dict[str, drift.PageHinkley | drift.ADWIN] = {}
        self.detections: Counter[str] = Counter()

    def _new(self) -> drift.PageHinkley | drift.ADWIN:
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
