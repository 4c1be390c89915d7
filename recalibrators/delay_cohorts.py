"""Decayed sums per start-time cohort of attribution windows, the open-window part of the delay model
(`recalibrators.delay`) and of the pending exposure (`recalibrators.delay_pending`).

>>> import numpy as np
>>> t = CohortTable(width_ms=1000, n_cols=1)
>>> t.add(np.array([10, 20, 1500]), np.ones((3, 1)))
>>> t.ids.tolist(), t.rows[:, 0].tolist()
([0, 1], [2.0, 1.0])
"""

from __future__ import annotations

import numpy as np

__all__ = ["CohortTable"]


class CohortTable:
    """Decayed sums per start-time cohort (id = start // width): sorted int64 ids, the earliest and latest
    start each cohort has seen (its starts are taken as uniform between them), rows of n_cols floats."""

    __slots__ = ("hi_ms", "ids", "lo_ms", "rows", "width_ms")

    def __init__(self, width_ms: int, n_cols: int) -> None:
        self.width_ms = width_ms
        self.ids = np.zeros(0, dtype=np.int64)
        self.lo_ms = np.zeros(0, dtype=np.int64)
        self.hi_ms = np.zeros(0, dtype=np.int64)
        self.rows = np.zeros((0, n_cols))

    def _reindex(self, ids: np.ndarray) -> None:
        """Grow to the sorted id set `ids` (a superset of the current one)."""
        at = np.searchsorted(ids, self.ids)
        lo, hi = np.full(ids.size, np.iinfo(np.int64).max), np.full(ids.size, np.iinfo(np.int64).min)
        rows = np.zeros((ids.size, self.rows.shape[1]))
        lo[at], hi[at], rows[at] = self.lo_ms, self.hi_ms, self.rows
        self.ids, self.lo_ms, self.hi_ms, self.rows = ids, lo, hi, rows

    def add(self, start_ms: np.ndarray, cols: np.ndarray, only_existing: bool = False) -> None:
        """Add `cols` ((n, n_cols)) at each start's cohort. only_existing: updates of windows already
        opened (conversions, closes): cohorts not in the table are skipped and the start bounds kept."""
        cid = np.floor_divide(start_ms, self.width_ms)
        if only_existing:
            keep = np.isin(cid, self.ids)
            cid, cols, start_ms = cid[keep], cols[keep], start_ms[keep]
        if cid.size == 0:
            return
        u, inv = np.unique(cid, return_inverse=True)
        sums = np.stack([np.bincount(inv, weights=cols[:, k], minlength=u.size) for k in range(cols.shape[1])], 1)
        if not only_existing:
            self._reindex(np.union1d(self.ids, u))
        at = np.searchsorted(self.ids, u)
        self.rows[at] += sums
        if not only_existing:
            lo, hi = np.full(u.size, np.iinfo(np.int64).max), np.full(u.size, np.iinfo(np.int64).min)
            np.minimum.at(lo, inv, start_ms)
            np.maximum.at(hi, inv, start_ms)
            self.lo_ms[at] = np.minimum(self.lo_ms[at], lo)
            self.hi_ms[at] = np.maximum(self.hi_ms[at], hi)

    def copy(self) -> CohortTable:
        out = CohortTable(self.width_ms, self.rows.shape[1])
        out.ids, out.lo_ms, out.hi_ms = self.ids.copy(), self.lo_ms.copy(), self.hi_ms.copy()
        out.rows = self.rows.copy()
        return out

    def keep(self, mask: np.ndarray) -> None:
        self.ids, self.lo_ms, self.hi_ms, self.rows = (
            self.ids[mask],
            self.lo_ms[mask],
            self.hi_ms[mask],
            self.rows[mask],
        )

    def drop_before(self, start_ms: int) -> None:
        """Forget cohorts whose whole time range lies before start_ms (all their windows matured)."""
        self.keep((self.ids + 1) * self.width_ms > start_ms)

    def age_ranges(self, now_ms: int) -> tuple[np.ndarray, np.ndarray]:
        """Elapsed time of each cohort's newest and oldest start at now_ms."""
        return (
            np.maximum(now_ms - self.hi_ms, 0).astype(np.float64),
            np.maximum(now_ms - self.lo_ms, 0).astype(np.float64),
        )

    def merged(self, other: CohortTable, self_factor: float, other_factor: float, n_decayed: int | None = None):
        """Sum of two tables, the first n_decayed columns (default all) rescaled by the factors."""
        out = CohortTable(self.width_ms, self.rows.shape[1])
        out._reindex(np.union1d(self.ids, other.ids))
        k = self.rows.shape[1] if n_decayed is None else n_decayed
        for src, factor in ((self, self_factor), (other, other_factor)):
            at = np.searchsorted(out.ids, src.ids)
            out.rows[at, :k] += src.rows[:, :k] * factor
            out.rows[at, k:] += src.rows[:, k:]
            out.lo_ms[at] = np.minimum(out.lo_ms[at], src.lo_ms)
            out.hi_ms[at] = np.maximum(out.hi_ms[at], src.hi_ms)
        return out

    def to_bytes(self, n_counts: int = 0) -> bytes:
        """First id (int64) | per cohort: id - first, earliest and latest start - cohort start (int32) | rows
        (float64; the last `n_counts` columns, exact counts, as int32)."""
        if self.ids.size == 0:
            return b""
        base = self.ids * self.width_ms
        offsets = np.concatenate((self.ids - self.ids[0], self.lo_ms - base, self.hi_ms - base))
        if offsets.min() < 0 or offsets.max() >= 2**31:
            raise ValueError("cohort offsets out of int32 range")
        k = self.rows.shape[1] - n_counts
        rows = np.ascontiguousarray(self.rows[:, :k], dtype="<f8").tobytes()
        counts = np.ascontiguousarray(np.rint(self.rows[:, k:]), dtype="<i4").tobytes()
        return self.ids[:1].astype("<i8").tobytes() + offsets.astype("<i4").tobytes() + rows + counts

    @classmethod
    def from_buffer(
        cls, width_ms: int, n_cols: int, k: int, buf: memoryview, n_counts: int = 0
    ) -> tuple[CohortTable, memoryview]:
        out = cls(width_ms, n_cols)
        if k == 0:
            return out, buf
        n_float = n_cols - n_counts
        at = 8 + 12 * k
        size = at + 8 * k * n_float + 4 * k * n_counts
        if len(buf) < size:
            raise ValueError("truncated cohort table")
        first = int(np.frombuffer(buf[:8], dtype="<i8")[0])
        offsets = np.frombuffer(buf[8:at], dtype="<i4").astype(np.int64).reshape(3, k)
        out.ids = first + offsets[0]
        base = out.ids * width_ms
        out.lo_ms, out.hi_ms = base + offsets[1], base + offsets[2]
        out.rows = np.empty((k, n_cols))
        out.rows[:, :n_float] = np.frombuffer(buf[at : at + 8 * k * n_float], dtype="<f8").reshape(k, n_float)
        out.rows[:, n_float:] = np.frombuffer(buf[at + 8 * k * n_float : size], dtype="<i4").reshape(k, n_counts)
        return out, buf[size:]
