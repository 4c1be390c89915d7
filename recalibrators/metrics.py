"""Calibration metrics on example arrays (p, y, w=None) and on binned data (per-bin weight, positives, score).

Conventions: w defaults to 1; probabilities are clipped to [1e-15, 1 - 1e-15] inside logs.
calibration_ratio = sum(w*p) / sum(w*y): > 1 means the model OVER-predicts, < 1 under-predicts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

__all__ = [
    "Reliability",
    "binned_calibration_ratio",
    "binned_log_loss",
    "brier",
    "calibration_ratio",
    "ece",
    "field_rce",
    "log_loss",
    "mce",
    "multi_field_rce",
    "normalized_entropy",
    "pcoc",
    "reliability",
]

_EPS = 1e-15


def _arrays(p: object, y: object, w: object | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(p) if w is None else np.asarray(w, dtype=np.float64)
    if not p.shape == y.shape == w.shape or p.ndim != 1:
        raise ValueError(f"p, y, w must be 1-d of equal length, got {p.shape}, {y.shape}, {w.shape}")
    if p.size == 0 or w.sum() <= 0:
        raise ValueError("metrics need at least one example with positive weight")
    return p, y, w


@dataclasses.dataclass(frozen=True)
class Reliability:
    """Per non-empty bin: weighted mean prediction, observed positive rate, total weight."""

    mean_pred: np.ndarray
    observed: np.ndarray
    weight: np.ndarray


def _bin_ids(p: np.ndarray, w: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if strategy == "uniform":
        return np.minimum((p * n_bins).astype(np.intp), n_bins - 1)
    if strategy == "quantile":
        # Equal-mass edges from the weighted CDF; ties land in one bin, so bins can be unequal when p repeats.
        order = np.argsort(p, kind="stable")
        cdf = np.cumsum(w[order])
        cdf /= cdf[-1]
        inner = p[order][np.searchsorted(cdf, np.arange(1, n_bins) / n_bins)]
        return np.searchsorted(inner, p, side="right")
    raise ValueError(f"strategy must be 'quantile' or 'uniform', got {strategy!r}")


def reliability(
    p: object, y: object, w: object | None = None, n_bins: int = 15, strategy: str = "quantile"
) -> Reliability:
    p, y, w = _arrays(p, y, w)
    ids = _bin_ids(p, w, n_bins, strategy)
    wb = np.bincount(ids, weights=w, minlength=n_bins)
    pb = np.bincount(ids, weights=w * p, minlength=n_bins)
    yb = np.bincount(ids, weights=w * y, minlength=n_bins)
    ok = wb > 0
    return Reliability(pb[ok] / wb[ok], yb[ok] / wb[ok], wb[ok])


def ece(p: object, y: object, w: object | None = None, n_bins: int = 15, strategy: str = "quantile") -> float:
    """Expected calibration error: sum_b (W_b / W) |mean_pred_b - observed_b|."""
    r = reliability(p, y, w, n_bins, strategy)
    return float(np.sum(r.weight * np.abs(r.mean_pred - r.observed)) / r.weight.sum())


def mce(p: object, y: object, w: object | None = None, n_bins: int = 15, strategy: str = "quantile") -> float:
    """Maximum calibration error over non-empty bins."""
    r = reliability(p, y, w, n_bins, strategy)
    return float(np.max(np.abs(r.mean_pred - r.observed)))


def brier(p: object, y: object, w: object | None = None) -> float:
    p, y, w = _arrays(p, y, w)
    return float(np.sum(w * (p - y) ** 2) / w.sum())


def log_loss(p: object, y: object, w: object | None = None) -> float:
    p, y, w = _arrays(p, y, w)
    p = np.clip(p, _EPS, 1.0 - _EPS)
    return float(-np.sum(w * (y * np.log(p) + (1.0 - y) * np.log1p(-p))) / w.sum())


def _entropy(rate: float) -> float:
    rate = min(max(rate, _EPS), 1.0 - _EPS)
    return float(-(rate * np.log(rate) + (1.0 - rate) * np.log1p(-rate)))


def normalized_entropy(p: object, y: object, w: object | None = None) -> float:
    """Log loss divided by the entropy of the base rate (1.0 = no better than predicting the average CTR)."""
    p, y, w = _arrays(p, y, w)
    return log_loss(p, y, w) / _entropy(float(np.sum(w * y) / w.sum()))


def calibration_ratio(p: object, y: object, w: object | None = None) -> float:
    """sum(w*p) / sum(w*y); > 1 = over-prediction. inf when there are no positives."""
    p, y, w = _arrays(p, y, w)
    pos = float(np.sum(w * y))
    return float(np.sum(w * p)) / pos if pos > 0 else float("inf")


def field_rce(p: object, y: object, segment_ids: object, w: object | None = None) -> float:
    """Field-level relative calibration error across segments of one feature (field):

        sum_s W_s * |sum_s(w p) - sum_s(w y)| / sum_s(w y)  /  sum_s W_s

    i.e. the weight-averaged per-segment |calibration_ratio - 1|. Segments without positives are skipped
    (their relative error is undefined); returns nan if no segment has positives.
    """
    p, y, w = _arrays(p, y, w)
    seg = np.asarray(segment_ids)
    if seg.shape != p.shape:
        raise ValueError("segment_ids must match p in length")
    _, ids = np.unique(seg, return_inverse=True)
    ws = np.bincount(ids, weights=w)
    ps = np.bincount(ids, weights=w * p)
    ys = np.bincount(ids, weights=w * y)
    ok = ys > 0
    if not ok.any():
        return float("nan")
    return float(np.sum(ws[ok] * np.abs(ps[ok] - ys[ok]) / ys[ok]) / ws[ok].sum())


def multi_field_rce(p: object, y: object, fields: Mapping[str, object], w: object | None = None) -> float:
    """Multi-field RCE: the unweighted mean of `field_rce` over several fields (e.g. {"platform": ids,
    "placement": ids}), each a per-example array of that field's value; fields whose RCE is nan are skipped."""
    values = [field_rce(p, y, ids, w) for ids in fields.values()]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def pcoc(p: object, y: object, segment_ids: object, w: object | None = None) -> dict[object, float]:
    """Predicted over observed per segment: sum_s(w p) / sum_s(w y) (the calibration ratio of each segment;
    inf for a segment without positives)."""
    p, y, w = _arrays(p, y, w)
    seg = np.asarray(segment_ids)
    if seg.shape != p.shape:
        raise ValueError("segment_ids must match p in length")
    values, ids = np.unique(seg, return_inverse=True)
    ps = np.bincount(ids, weights=w * p, minlength=values.size)
    ys = np.bincount(ids, weights=w * y, minlength=values.size)
    with np.errstate(divide="ignore"):
        ratio = np.where(ys > 0, ps / np.where(ys > 0, ys, 1.0), np.inf)
    return dict(zip(values.tolist(), ratio.tolist(), strict=True))


def binned_log_loss(
    predict: Callable[[np.ndarray], np.ndarray], weight: np.ndarray, positives: np.ndarray, mean_score: np.ndarray
) -> float:
    """Weighted log loss of `predict` (e.g. CalibrationMap.apply) evaluated at each bin's mean score."""
    ok = weight > 0
    if not ok.any():
        raise ValueError("binned metrics need at least one bin with positive weight")
    q = np.clip(predict(mean_score[ok]), _EPS, 1.0 - _EPS)
    pos, wt = positives[ok], weight[ok]
    return float(-np.sum(pos * np.log(q) + (wt - pos) * np.log1p(-q)) / wt.sum())


def binned_calibration_ratio(
    predict: Callable[[np.ndarray], np.ndarray], weight: np.ndarray, positives: np.ndarray, mean_score: np.ndarray
) -> float:
    ok = weight > 0
    pos = float(positives[ok].sum())
    return float(np.sum(weight[ok] * predict(mean_score[ok]))) / pos if pos > 0 else float("inf")


def parse_reliability(metrics: dict | None) -> list[tuple[float, float, float, float]]:
    """The `rel` metric of a map as (raw, calibrated, observed, weight) per group; [] if absent."""
    text = (metrics or {}).get("rel")
    if not isinstance(text, str) or not text:
        return []
    rows = []
    for part in text.split(";"):
        values = part.split(",")
        if len(values) == 4:
            try:
                rows.append(tuple(float(v) for v in values))
            except ValueError:
                continue
    return rows
