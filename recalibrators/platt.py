"""Platt scaling p = sigmoid(a*z + b), z = logit(score), fitted by Newton/IRLS on binned statistics.

Minimises  -sum_i [P_i log p_i + (W_i - P_i) log(1 - p_i)] + ridge/2 * ((a - a0)^2 + (b - b0)^2)
with p_i = sigmoid(a*Z_i + b), W_i the bin weight, P_i its positives, Z_i its mean logit. The ridge (units:
pseudo observations of Fisher information) keeps the fit finite and near (a0, b0) (identity by default) when
positives are rare or separable. The slope is kept >= 0 so the resulting map is monotone.
"""

from __future__ import annotations

import numpy as np

from .logit import logit, sigmoid

__all__ = ["fit_platt", "platt_predict"]


def _objective(
    a: float, b: float, w: np.ndarray, p: np.ndarray, z: np.ndarray, ridge: float, a0: float, b0: float
) -> float:
    eta = a * z + b
    # -log sigmoid(eta) = logaddexp(0, -eta); -log(1 - sigmoid(eta)) = logaddexp(0, eta)
    nll = float(p @ np.logaddexp(0.0, -eta) + (w - p) @ np.logaddexp(0.0, eta))
    return nll + 0.5 * ridge * ((a - a0) ** 2 + (b - b0) ** 2)


def fit_platt(
    weight: np.ndarray,
    positives: np.ndarray,
    mean_logit: np.ndarray,
    ridge: float = 1.0,
    center: tuple[float, float] = (1.0, 0.0),
    max_iter: int = 50,
    tol: float = 1e-10,
) -> tuple[float, float]:
    """Return (a, b). Deterministic; ~20-60 us for <= 256 bins."""
    w = np.asarray(weight, dtype=np.float64)
    p = np.asarray(positives, dtype=np.float64)
    z = np.asarray(mean_logit, dtype=np.float64)
    a0, b0 = center
    a, b = a0, b0
    if ridge <= 0 and (w.sum() <= 0 or p.sum() <= 0 or p.sum() >= w.sum()):
        raise ValueError("Platt fit without ridge needs both positive and negative weight")
    free_a = True
    f = _objective(a, b, w, p, z, ridge, a0, b0)
    for _ in range(max_iter):
        eta = a * z + b
        q = sigmoid(eta)
        r = w * q - p  # gradient of the NLL wrt eta
        h = w * q * (1.0 - q)  # curvature
        gb = r.sum() + ridge * (b - b0)
        hbb = h.sum() + ridge
        if free_a:
            hz = h @ z
            ga = r @ z + ridge * (a - a0)
            haa = h @ (z * z) + ridge
            det = haa * hbb - hz * hz
            da = (hbb * ga - hz * gb) / det
            db = (haa * gb - hz * ga) / det
        else:
            da, db = 0.0, gb / hbb
        # Backtracking keeps steps descending (Newton alone can overshoot from a far start). The slack lets
        # the final quadratic-convergence steps through: near the optimum f changes below its rounding noise.
        step = 1.0
        slack = 1e-12 * (1.0 + abs(f))
        while True:
            a_new, b_new = a - step * da, b - step * db
            f_new = _objective(a_new, b_new, w, p, z, ridge, a0, b0)
            if f_new <= f + slack or step < 1e-6:
                break
            step *= 0.5
        a, b, f = a_new, b_new, f_new
        if free_a and a < 0.0:
            # Decreasing fit: project onto a = 0 and finish with a constant (monotone) model.
            a, free_a = 0.0, False
            f = _objective(a, b, w, p, z, ridge, a0, b0)
            continue
        if abs(step * da) < tol and abs(step * db) < tol:
            break
    return float(a), float(b)


def platt_predict(a: float, b: float, scores: np.ndarray, clip: float = 1e-7) -> np.ndarray:
    s = np.clip(np.asarray(scores, dtype=np.float64), clip, 1.0 - clip)
    return sigmoid(a * logit(s) + b)
