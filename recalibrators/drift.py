"""The drift signal of a published map: its standardised calibration residual on labels it has not seen.

Per refresh, the map published at the previous refresh is scored on the examples labeled since (prequential,
so the map was not fitted to them):

    z = (sum w y - sum w q) / sqrt(sum w q (1 - q)),     q = map(score)

which is ~N(0, 1) while the map is calibrated and moves by about (ratio - 1) * sqrt(expected positives) when the
truth's level changes by `ratio`. A change detector (`streams.pipeline.drift`, river's ADWIN or Page-Hinkley)
watches the z of each map key; on a detection the key's calibrator forgets faster (`Calibrator.forget`).
Pure numpy: the detectors live in the stream shell, this module only computes what they watch.

>>> import numpy as np
>>> from recalibrators.calibration_map import identity_map
>>> abs(calibration_z(identity_map(), np.full(400, 0.05), np.r_[np.ones(20), np.zeros(380)])) < 1e-9  # as expected
True
>>> round(calibration_z(identity_map(), np.full(400, 0.05), np.r_[np.ones(40), np.zeros(360)]), 2)
4.59
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .calibration_map import CalibrationMap
from .validation import check_batch

__all__ = ["binned_calibration_z", "calibration_z"]


def _z(positives: float, expected: float, variance: float) -> float:
    return 0.0 if variance <= 0 else float((positives - expected) / np.sqrt(variance))


def calibration_z(calibration: CalibrationMap, scores: Any, labels: Any, weights: Any | None = None) -> float:
    """z of `calibration` on labeled examples (0.0 when they carry no variance, e.g. none)."""
    if np.asarray(scores).size == 0:
        return 0.0
    s, y, w = check_batch(scores, labels, weights)
    q = calibration.apply(s)
    w = np.ones_like(q) if w is None else w
    return _z(float(w @ y), float(w @ q), float(w @ (q * (1.0 - q))))


def binned_calibration_z(
    calibration: CalibrationMap, weight: np.ndarray, positives: np.ndarray, mean_score: np.ndarray
) -> float:
    """z of `calibration` on binned labels, each bin evaluated at its mean score (e.g. what a merged state
    learned since the last refresh); bins without weight are ignored."""
    ok = weight > 0
    q = calibration.apply(mean_score[ok])
    w = weight[ok]
    return _z(float(positives[ok].sum()), float(w @ q), float(w @ (q * (1.0 - q))))
