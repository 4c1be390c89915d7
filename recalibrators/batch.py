"""A batch validated, clipped, turned into logits and binned once (`prepare_batch`), so the same examples can
update every level of a segment fallback chain without repeating that work (`Calibrator.learn_prepared`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .histogram import BinSpec, Histogram
from .validation import check_batch, check_timestamps

__all__ = ["PreparedBatch", "add_part", "prepare_batch"]

_Part = tuple  # (idx, s, z, y, w | None, t): one histogram's share of a batch


@dataclasses.dataclass(frozen=True)
class PreparedBatch:
    """A validated, clipped and binned batch, split into its fitting and held-back parts."""

    n: int
    t_max: int
    main: _Part | None
    held: _Part | None


def prepare_batch(
    spec: BinSpec,
    scores: Any,
    labels: Any,
    weights: Any | None = None,
    *,
    ts_ms: int | np.ndarray,
    holdout: Any | None = None,
) -> PreparedBatch:
    """Validate (ValueError on bad input), clip, take logits and bin once."""
    s, y, w = check_batch(scores, labels, weights)
    t = check_timestamps(ts_ms, s.shape[0])
    mask = None
    if holdout is not None:
        mask = np.asarray(holdout)
        if mask.shape != s.shape:
            raise ValueError(f"length mismatch: {s.shape[0]} scores but holdout has shape {mask.shape}")
        if mask.dtype != np.bool_:
            if not np.all((mask == 0) | (mask == 1)):
                raise ValueError("holdout must be a boolean mask")
            mask = mask.astype(np.bool_)
    t_max = t if isinstance(t, int) else int(t.max())
    s, z = spec.clip_logit(s)
    idx = spec.index(z)
    if mask is None or not mask.any():
        return PreparedBatch(s.shape[0], t_max, (idx, s, z, y, w, t), None)
    if mask.all():
        return PreparedBatch(s.shape[0], t_max, None, (idx, s, z, y, w, t))
    parts = []
    for m in (~mask, mask):
        parts.append((idx[m], s[m], z[m], y[m], None if w is None else w[m], t if isinstance(t, int) else t[m]))
    return PreparedBatch(
        s.shape[0], t_max, parts[0] if parts[0][0].size else None, parts[1] if parts[1][0].size else None
    )


def add_part(hist: Histogram, part: _Part, half_life: float, t_ref: int) -> None:
    """Add one part of a prepared batch to `hist`, each example decayed from its time to `t_ref`.

    >>> spec = BinSpec(8, -8.0, 4.0, 1e-7)
    >>> hist = Histogram(spec)
    >>> add_part(hist, prepare_batch(spec, [0.1, 0.2], [0, 1], ts_ms=0).main, half_life=10.0, t_ref=10)
    >>> hist.total_weight, hist.total_positives
    (1.0, 0.5)
    """
    idx, s, z, y, w, t = part
    if isinstance(t, int):
        decay = 2.0 ** ((t - t_ref) / half_life)
        hist.add(idx, s, z, y, decay if w is None else w * decay)
    else:
        decay = np.exp2((t - t_ref) / half_life)
        hist.add(idx, s, z, y, decay if w is None else np.multiply(decay, w, out=decay))
