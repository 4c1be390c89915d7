"""The pure functions under `Calibrator`: the map fitted to a histogram, and a histogram moved to other bins."""

from __future__ import annotations

import numpy as np

from .calibration_map import CalibrationMap
from .calibrator_config import CalibratorConfig
from .histogram import BinSpec, Histogram
from .isotonic import cap_by_prior_evidence, eb_prior_strength, match_total, shrunk_isotonic
from .logit import logit, sigmoid
from .platt import fit_platt

__all__ = ["Fit", "fit_map", "rebin"]

Fit = tuple[np.ndarray, np.ndarray, tuple[float, float] | None, str]
"""Knots x, y, the Platt parameters (a, b) and the method: a `CalibrationMap`'s curve."""


def fit_map(h: Histogram, cfg: CalibratorConfig, prior: CalibrationMap | None) -> Fit:
    """The map's curve for fitting histogram `h` under `cfg`, shrunk toward `prior` (or toward Platt).

    An empty histogram gives the prior's curve, or the identity without one:

    >>> cfg = CalibratorConfig(n_bins=8)
    >>> fit_map(Histogram(cfg.bins), cfg, None)
    (array([0., 1.]), array([0., 1.]), None, 'identity')

    A bin at score 0.12 that never clicked and one at 0.5 that always did (100 impressions each): the knots are
    the bin means (empty bins at their centres) plus 0 and 1, and the curve is monotone:

    >>> h = Histogram(cfg.bins)
    >>> h.add(cfg.bins.index(np.array([-2.0, 0.0])), np.array([0.12, 0.5]), np.array([-2.0, 0.0]),
    ...       np.array([0.0, 1.0]), 100.0)
    >>> x, y, platt, method = fit_map(h, cfg, None)
    >>> method, x.size, x[[0, 5, 6, 9]].tolist(), y[[5, 6]].round(2).tolist(), bool(np.all(np.diff(y) >= 0))
    ('isotonic', 10, [0.0, 0.12, 0.5, 1.0], [0.02, 0.98], True)
    """
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


def rebin(src: Histogram, spec: BinSpec) -> Histogram:
    """`src`'s sums on the bins `spec`: each old bin's sums move whole to the new bin holding its mean logit,
    so totals (weight, positives, score sums) stay exact and no example moves by more than one old bin width.

    >>> old = Histogram(BinSpec(96, -8.0, 4.0, 1e-7))
    >>> old.add(old.spec.index(np.array([-2.0, 1.0])), np.array([0.12, 0.73]), np.array([-2.0, 1.0]),
    ...         np.array([0.0, 1.0]), 1.0)
    >>> new = rebin(old, BinSpec(40, -8.0, 4.0, 1e-7))
    >>> new.sums.shape, new.total_weight, new.total_positives
    ((4, 40), 2.0, 1.0)
    """
    out = Histogram(spec, with_logit=src.with_logit)
    if src.spec == spec:
        out.sums[:] = src.sums
        return out
    used = np.any(src.sums != 0.0, axis=0)
    w = src.sums[0, used]
    safe_w = np.where(w != 0.0, w, 1.0)
    if src.with_logit:
        z = np.where(w != 0.0, src.sums[3, used] / safe_w, src.spec.center_logits[used])
    else:
        mean = np.where(w != 0.0, src.sums[2, used] / safe_w, sigmoid(src.spec.center_logits[used]))
        z = spec.clip_logit(mean)[1]
    idx = spec.index(z)
    for row in range(out.sums.shape[0]):
        out.sums[row] = np.bincount(idx, weights=src.sums[row, used], minlength=spec.n_bins)
    return out
