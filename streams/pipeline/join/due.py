"""`DueQueue`: integer items (0 <= item < 2^31) released when the join's clock passes their due time.

Each push is one sorted run (a batch's slots); popping everything due up to a time is one
`searchsorted` per run. Runs are merged when they pile up, so a pop costs O(runs + released).

>>> q = DueQueue()
>>> q.push(np.array([30, 10, 20]), np.array([3, 1, 2]))
>>> q.push(np.array([15]), np.array([9]))
>>> q.pop(20).tolist(), q.pop(100).tolist(), len(q)
([1, 9, 2], [3], 0)
"""

from __future__ import annotations

import numpy as np

_MAX_RUNS = 32


class DueQueue:
    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []  # (due ascending, item)

    def __len__(self) -> int:
        return sum(len(due) for due, _ in self._runs)

    def push(self, due: np.ndarray, items: np.ndarray) -> None:
        if not len(due):
            return
        due, items = np.asarray(due, np.int64), np.asarray(items, np.int32)
        order = np.lexsort((items, due))
        self._runs.append((due[order], items[order]))
        if len(self._runs) > _MAX_RUNS:
            self._merge()

    def pop(self, limit: int) -> np.ndarray:
        """Items due at or before `limit`, in (due, item) order: the same however they were pushed."""
        taken_due, taken = [], []
        kept = []
        for due, items in self._runs:
            k = int(np.searchsorted(due, limit, side="right"))
            if k:
                taken_due.append(due[:k])
                taken.append(items[:k])
            if k < len(due):
                kept.append((due[k:], items[k:]))
        self._runs = kept
        if not taken:
            return np.zeros(0, np.int32)
        if len(taken) == 1:
            return taken[0]
        items = np.concatenate(taken)
        return items[np.lexsort((items, np.concatenate(taken_due)))]

    def remap(self, new_index: np.ndarray) -> None:
        """Renumber items after a compaction: item i becomes new_index[i]; negative drops it."""
        runs = []
        for due, items in self._runs:
            moved = new_index[items]
            keep = moved >= 0
            if keep.any():
                runs.append((due[keep], moved[keep]))
        self._runs = runs

    def _merge(self) -> None:
        due = np.concatenate([d for d, _ in self._runs])
        items = np.concatenate([i for _, i in self._runs])
        order = np.lexsort((items, due))
        self._runs = [(due[order], items[order])]
