"""Input validation for (score, label, weight) batches.

Strict mode (`check_batch`, used by `Calibrator.learn_batch`) raises `ValueError` naming the first problem.
Filtering mode (`valid_mask` / `drop_invalid`) removes bad rows instead and reports how many were dropped;
use it in front of `learn_batch` when the stream should survive garbage (apply the same mask to ts/holdout).
The fast path is a handful of vectorised comparisons; the slow diagnosis only runs once a check has failed.
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_batch", "check_timestamps", "drop_invalid", "valid_mask"]


def _as_1d(name: str, values: object) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-d array, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr


def _describe_scores(s: np.ndarray) -> str:
    if np.isnan(s).any():
        return "scores contain NaN"
    if np.isinf(s).any():
        return "scores contain inf"
    return f"scores outside [0, 1] (min={s.min()!r}, max={s.max()!r})"


def _describe_weights(w: np.ndarray) -> str:
    if np.isnan(w).any():
        return "weights contain NaN"
    if np.isinf(w).any():
        return "weights contain inf"
    return f"weights contain negative values (min={w.min()!r})"


def check_batch(
    scores: object, labels: object, weights: object | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate a batch; return (scores float64, labels, weights float64 | None), copying only to convert."""
    s = _as_1d("scores", scores).astype(np.float64, copy=False)
    y = _as_1d("labels", labels)
    n = s.shape[0]
    if n == 0:
        raise ValueError("empty batch: scores has length 0")
    if y.shape[0] != n:
        raise ValueError(f"length mismatch: {n} scores but {y.shape[0]} labels")
    # NaN fails both comparisons, so this single pass also rejects NaN.
    if not np.all((s >= 0.0) & (s <= 1.0)):
        raise ValueError(_describe_scores(s))
    if y.dtype.kind != "b" and not np.all((y == 0) | (y == 1)):
        bad = y[(y != 0) & (y != 1)][0]
        raise ValueError(f"labels must be 0 or 1, got {bad!r}")
    if weights is None:
        return s, y, None
    w = _as_1d("weights", weights).astype(np.float64, copy=False)
    if w.shape[0] != n:
        raise ValueError(f"length mismatch: {n} scores but {w.shape[0]} weights")
    if not np.all((w >= 0.0) & (w < np.inf)):
        raise ValueError(_describe_weights(w))
    return s, y, w


def check_timestamps(ts_ms: object, n: int) -> int | np.ndarray:
    """Event times in integer milliseconds: a scalar for the whole batch or one per example (int64)."""
    if isinstance(ts_ms, (bool, np.bool_)):
        raise ValueError("ts_ms must be integer milliseconds, got bool")
    if isinstance(ts_ms, (int, np.integer)):
        return int(ts_ms)
    t = np.asarray(ts_ms)
    if t.ndim == 0:
        raise ValueError(f"ts_ms must be integer milliseconds, got {ts_ms!r}")
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"length mismatch: {n} scores but ts_ms has shape {t.shape}")
    if t.dtype.kind in "iu":
        return t.astype(np.int64, copy=False)
    if t.dtype.kind == "f" and np.all(np.isfinite(t)) and np.all(t == np.round(t)):
        return t.astype(np.int64)
    raise ValueError("ts_ms must be finite integer milliseconds")


def valid_mask(scores: object, labels: object, weights: object | None = None) -> np.ndarray:
    """Boolean mask of rows that `check_batch` would accept (shapes must still agree)."""
    s = _as_1d("scores", scores).astype(np.float64, copy=False)
    y = _as_1d("labels", labels)
    if y.shape[0] != s.shape[0]:
        raise ValueError(f"length mismatch: {s.shape[0]} scores but {y.shape[0]} labels")
    ok = (s >= 0.0) & (s <= 1.0) & ((y == 0) | (y == 1))
    if weights is not None:
        w = _as_1d("weights", weights).astype(np.float64, copy=False)
        if w.shape[0] != s.shape[0]:
            raise ValueError(f"length mismatch: {s.shape[0]} scores but {w.shape[0]} weights")
        ok &= (w >= 0.0) & (w < np.inf)
    return ok


def drop_invalid(
    scores: object, labels: object, weights: object | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """Filtering mode: return (scores, labels, weights, n_dropped) keeping only valid rows (may be empty)."""
    ok = valid_mask(scores, labels, weights)
    s = np.asarray(scores, dtype=np.float64)[ok]
    y = np.asarray(labels)[ok]
    w = None if weights is None else np.asarray(weights, dtype=np.float64)[ok]
    return s, y, w, int(ok.size - np.count_nonzero(ok))
