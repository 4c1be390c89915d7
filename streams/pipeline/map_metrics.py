"""What a published map says about itself (`metrics`), and the drift alert computed from it."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np

from recalibrators.calibration_map import CalibrationMap
from recalibrators.calibrator import Calibrator
from recalibrators.histogram import Histogram
from recalibrators.serving.keys import MapField
from streams.pipeline.config import ModelConfig

drift_log = logging.getLogger("recal.drift")

RELIABILITY_BINS = 15  # equal-mass groups of the evaluation histogram's bins (ECE and the diagram)
MIN_EVAL_WEIGHT = 100.0  # below this much holdout weight, metrics are computed on the fitting histogram


def _group_ids(weight: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """(non-empty bin indices, their group 0..k-1): consecutive bins in about equal-weight groups."""
    idx = np.flatnonzero(weight > 1e-12 * max(float(weight.sum()), 1e-300))
    if idx.size == 0:
        return idx, idx
    cum = np.cumsum(weight[idx])
    group = np.minimum((cum - weight[idx] / 2) / cum[-1] * n_groups, n_groups - 1).astype(np.intp)
    # group is non-decreasing: renumber the groups that occur as 0..k-1
    return idx, np.concatenate(([0], np.cumsum(np.diff(group) > 0)))


def map_metrics(
    candidate: CalibrationMap, calibrator: Calibrator, n_groups: int = RELIABILITY_BINS
) -> dict[str, float | str]:
    """Calibration of the raw scores and of `candidate` on the calibrator's most recent data.

    Evaluated on the holdout histogram (held-back examples, short half-life) when it holds at least
    MIN_EVAL_WEIGHT, else on the fitting histogram (in-sample; `eval` says which). Each histogram bin
    is evaluated at its mean score; bins are grouped into `n_groups` equal-mass groups for the ECE and
    for the reliability diagram, stored compactly as `rel` = "raw,calibrated,observed,weight;..." (one
    group per `;`, 4 significant digits). ratio = sum(prediction) / sum(positives), > 1 over-predicts.
    Every number is finite: one that is not (positives decayed to a subnormal) is left out, because a
    map readers must reject for a diagnostic would be the worse failure.
    """
    hist: Histogram = calibrator.holdout
    source = "holdout"
    if hist.total_weight < MIN_EVAL_WEIGHT:
        hist, source = calibrator.histogram, "fit"
    total_w, total_pos = hist.total_weight, hist.total_positives
    out: dict[str, float | str] = {
        "eval": source,
        "eval_weight": round(total_w, 3),
        "eval_positives": round(total_pos, 3),
    }
    idx, group = _group_ids(hist.weight, n_groups)
    if idx.size:
        w, pos = hist.weight[idx], hist.positives[idx]
        raw = hist.sums[2][idx] / w  # per-bin mean score (WS / W)
        cal = candidate.apply(raw)
        gw = np.bincount(group, weights=w)
        g_raw = np.bincount(group, weights=w * raw) / gw
        g_cal = np.bincount(group, weights=w * cal) / gw
        g_obs = np.bincount(group, weights=pos) / gw
        out["ece_raw"] = float(np.dot(gw, np.abs(g_raw - g_obs)) / total_w)
        out["ece_cal"] = float(np.dot(gw, np.abs(g_cal - g_obs)) / total_w)
        if total_pos > 0:
            out["ratio_raw"] = float(np.dot(w, raw)) / total_pos
            out["ratio_cal"] = float(np.dot(w, cal)) / total_pos
        out["rel"] = ";".join(
            f"{a:.4g},{b:.4g},{c:.4g},{d:.4g}"
            for a, b, c, d in zip(g_raw.tolist(), g_cal.tolist(), g_obs.tolist(), gw.tolist(), strict=True)
        )
    return {k: v for k, v in out.items() if isinstance(v, str) or math.isfinite(v)}


class DriftAlerts:
    """A key is in alert while the raw scores' calibration ratio on the recent window leaves
    [drift_ratio_low, drift_ratio_high] or their ECE exceeds drift_max_ece (judged only with at least
    drift_min_weight of evaluation weight); each transition is logged once on the `recal.drift` logger
    with extra fields model, model_version, segment, ratio, ece, alert."""

    def __init__(self, model_config: Callable[[str], ModelConfig]) -> None:
        self._model_config = model_config
        self.alerts: dict[str, bool] = {}  # field -> current alert state

    def check(self, key: str, metrics: dict[str, float | str]) -> None:
        field = MapField.parse(key)
        cfg = self._model_config(field.model)
        if float(metrics.get("eval_weight", 0.0)) < cfg.drift_min_weight or "ece_raw" not in metrics:
            return  # too little recent data to judge: keep the previous state
        ratio = float(metrics.get("ratio_raw", math.inf))
        ece = float(metrics["ece_raw"])
        alert = not (cfg.drift_ratio_low <= ratio <= cfg.drift_ratio_high) or ece > cfg.drift_max_ece
        if alert == self.alerts.get(key, False):
            self.alerts[key] = alert
            return
        self.alerts[key] = alert
        extra = {
            "model": field.model,
            "model_version": field.model_version,
            "segment": field.segment_key,
            "ratio": ratio,
            "ece": ece,
            "alert": alert,
        }
        if alert:
            drift_log.warning(
                "calibration drift on %s: raw ratio %.3f (allowed %.2f..%.2f), raw ECE %.4f (max %.4f)",
                key,
                ratio,
                cfg.drift_ratio_low,
                cfg.drift_ratio_high,
                ece,
                cfg.drift_max_ece,
                extra=extra,
            )
        else:
            drift_log.warning(
                "calibration drift cleared on %s: raw ratio %.3f, raw ECE %.4f", key, ratio, ece, extra=extra
            )
