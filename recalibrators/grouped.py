"""Many calibrators fed from one batch at once: the rows of each group go to one or more calibrators (every
level of a segment fallback chain), with one `np.bincount` per histogram column for the whole batch instead
of one per (calibrator, group). Bit-identical to calling `Calibrator.learn_batch` on each group's rows, one
(calibrator, group) pair after the other: each pair's sums are decayed to the reference time its calibrator
has once advanced to that group, and are added in the same order as the per-pair path adds them.

>>> import numpy as np
>>> from recalibrators.calibrator import Calibrator
>>> rows = np.array([0, 2, 1, 3])  # group 0: rows 0, 2; group 1: rows 1, 3
>>> a, both = Calibrator(), Calibrator()
>>> learn_grouped(rows, np.array([0, 2]), [(a, 0), (both, 0), (both, 1)],
...               np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 1, 1, 0]), np.array([5, 6, 7, 8]),
...               np.zeros(4, bool))
>>> a.n_seen, both.n_seen, both.last_event_ms
(2, 4, 8)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .calibrator import Calibrator
from .validation import check_batch, check_timestamps

__all__ = ["learn_grouped"]


def learn_grouped(
    order: np.ndarray,
    starts: np.ndarray,
    targets: Sequence[tuple[Calibrator, int]],
    scores: np.ndarray,
    labels: np.ndarray,
    ts_ms: np.ndarray,
    holdout: np.ndarray,
) -> None:
    """Group g holds rows `order[starts[g]:starts[g + 1]]` (the last group runs to the end); `targets` lists
        (calibrator, group) in the order the groups are learned. All calibrators share one bin layout (their
    half-lives may differ). Raises
        ValueError on invalid input (before any calibrator changes)."""
    if not targets:
        return
    spec = targets[0][0].config.bins
    if any(cal.config.bins != spec for cal, _ in targets):
        raise ValueError("learn_grouped needs calibrators of one bin layout")
    s, y, _ = check_batch(scores, labels)
    t = check_timestamps(ts_ms, s.shape[0])
    t = np.full(s.shape[0], t, np.int64) if isinstance(t, int) else t
    held = np.asarray(holdout, dtype=np.bool_)
    if held.shape != s.shape:
        raise ValueError(f"length mismatch: {s.shape[0]} scores but holdout has shape {held.shape}")
    s, z = spec.clip_logit(s)
    idx = spec.index(z)
    starts = np.asarray(starts, dtype=np.intp)
    sizes = np.diff(np.r_[starts, len(order)])
    group_t_max = np.maximum.reduceat(t[order], starts)

    # Each pair's reference time: its calibrator's running maximum of event times up to that group.
    refs: dict[int, int | None] = {}
    pair_ref = np.empty(len(targets), np.int64)
    for j, (cal, g) in enumerate(targets):
        ref = refs.get(id(cal), cal._t_ref)
        t_max = int(group_t_max[g])
        refs[id(cal)] = pair_ref[j] = t_max if ref is None or t_max > ref else ref

    # Every pair's rows, in group order, then one bincount per column over (main|held, pair, bin) slots.
    pair_group = np.fromiter((g for _, g in targets), np.intp, len(targets))
    lengths = sizes[pair_group]
    pair = np.repeat(np.arange(len(targets)), lengths)
    offsets = np.cumsum(lengths) - lengths
    rows = order[np.repeat(starts[pair_group] - offsets, lengths) + np.arange(lengths.sum())]
    h = held[rows]
    main_half_life = np.fromiter((cal.config.half_life_ms for cal, _ in targets), np.float64, len(targets))
    held_half_life = np.fromiter((cal.config.holdout_half_life_ms for cal, _ in targets), np.float64, len(targets))
    half_life = np.where(h, held_half_life[pair], main_half_life[pair])
    decay = np.exp2((t[rows] - pair_ref[pair]) / half_life)
    n_bins, n_pairs = spec.n_bins, len(targets)
    slot = (h * n_pairs + pair) * n_bins + idx[rows]
    size = 2 * n_pairs * n_bins
    sums = np.empty((4, size))
    for row, v in enumerate((decay, decay * y[rows], decay * s[rows], decay * z[rows])):
        sums[row] = np.bincount(slot, weights=v, minlength=size)
    sums = sums.reshape(4, 2, n_pairs, n_bins)
    for j, (cal, g) in enumerate(targets):
        cal.add_decayed_sums(int(group_t_max[g]), int(sizes[g]), sums[:, 0, j], sums[:3, 1, j])
