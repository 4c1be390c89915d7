"""Impression ids as 64-bit keys: `id_keys` (FNV-1a, vectorised, the same in every process, so
snapshots can store keys), `IdTable` (key -> row, open addressing in two numpy arrays: ~24-48 bytes
a pending impression instead of a dict's ~100) and `RecentIds` (keys decided within the last one or
two grace periods: a click for one of them is late, not an orphan).

A key is not an id: the join compares the stored id bytes on every hit, so two ids sharing a key are
never mixed up (the second is counted as `id_key_collision`, ~n^2/2^64: once in 10^8 years at 10^6/s).

>>> keys = id_keys([b"a", b"bb", b"a"])
>>> bool(keys[0] == keys[2]), bool(keys[0] == keys[1])
(True, False)
>>> table = IdTable()
>>> table.insert(keys[:2], np.array([7, 8]))
>>> table.lookup(keys).tolist()
[7, 8, 7]
>>> table.delete(keys[:1]); table.lookup(keys).tolist()
[-1, 8, -1]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np

from streams.pipeline.partitioners import by_length

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_EMPTY, _DELETED = np.uint64(0), np.uint64(1)  # reserved table markers; keys are never 0 or 1


def id_keys(ids: list[bytes]) -> np.ndarray:
    """FNV-1a 64 of each id (length mixed in), vectorised over ids of equal length; never 0 or 1."""
    out = np.empty(len(ids), np.uint64)
    with np.errstate(over="ignore"):
        for idx, matrix in by_length(ids):
            h = np.full(len(idx), _FNV_OFFSET, np.uint64)
            for j in range(matrix.shape[1]):
                h ^= matrix[:, j]
                h *= _FNV_PRIME
            h ^= np.uint64(matrix.shape[1]) << np.uint64(56)
            out[idx] = h
    return np.where(out <= _DELETED, out + np.uint64(2), out)


class IdTable:
    """Key -> row (0 <= row < 2^31); linear probing, load kept under 0.6, rebuilt to under 0.5 (and
    rid of tombstones) when it gets there: 12 bytes a slot, ~24-31 bytes a live key."""

    def __init__(self, capacity: int = 1024) -> None:
        self._keys = np.zeros(capacity, np.uint64)
        self._rows = np.zeros(capacity, np.int32)
        self._used = 0  # live + deleted slots
        self._live = 0

    def __len__(self) -> int:
        return self._live

    @property
    def nbytes(self) -> int:
        return self._keys.nbytes + self._rows.nbytes

    def _probe(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(slot of each key or -1, slot of the first free place on its probe path)."""
        mask = np.uint64(len(self._keys) - 1)
        pos = (keys & mask).astype(np.int64)
        found = np.full(len(keys), -1, np.int64)
        todo = np.arange(len(keys))
        while todo.size:
            p = pos[todo]
            at = self._keys[p]
            hit = at == keys[todo]
            found[todo[hit]] = p[hit]
            go_on = ~hit & (at != _EMPTY)
            todo = todo[go_on]
            pos[todo] = (p[go_on] + 1) & int(mask)
        return found, pos

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        found, _ = self._probe(keys)
        return np.where(found >= 0, self._rows[np.maximum(found, 0)], -1)

    def insert(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Add keys that are absent and distinct (the caller checked both)."""
        if (self._used + len(keys)) * 5 > len(self._keys) * 3:
            self._rebuild(self._live + len(keys))
        mask = len(self._keys) - 1
        pos = (keys & np.uint64(mask)).astype(np.int64)
        todo = np.arange(len(keys))
        while todo.size:
            p = pos[todo]
            free = self._keys[p] == _EMPTY
            slots, first = np.unique(p[free], return_index=True)  # one winner per free slot
            winners = todo[free][first]
            self._keys[slots] = keys[winners]
            self._rows[slots] = rows[winners]
            placed = np.zeros(len(keys), bool)
            placed[winners] = True
            todo = todo[~placed[todo]]
            pos[todo] = (pos[todo] + 1) & mask
        self._used += len(keys)
        self._live += len(keys)

    def delete(self, keys: np.ndarray) -> None:
        found, _ = self._probe(keys)
        found = found[found >= 0]
        self._keys[found] = _DELETED
        self._live -= len(found)

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        live = self._keys > _DELETED
        return self._keys[live], self._rows[live]

    def remap(self, new_row: np.ndarray) -> None:
        """Renumber rows after a compaction (new_row[old] >= 0 for every live row)."""
        keys, rows = self.items()
        self._keys[:] = _EMPTY
        self._used = self._live = 0
        self.insert(keys, new_row[rows])

    def _rebuild(self, live: int) -> None:
        keys, rows = self.items()
        capacity = 1024
        while capacity < 2 * live:
            capacity *= 2
        self._keys = np.zeros(capacity, np.uint64)
        self._rows = np.zeros(capacity, np.int32)
        self._used = self._live = 0
        self.insert(keys, rows)


class RecentIds:
    """Keys of impressions decided in the current and the previous generation (grace-long periods of
    event time): sorted runs, searched on lookups, dropped two generations on."""

    def __init__(self, grace_ms: int) -> None:
        self.grace_ms = max(grace_ms, 1)
        self.generation = 0
        self.current: list[np.ndarray] = []
        self.previous: list[np.ndarray] = []

    def add(self, keys: np.ndarray) -> None:
        if len(keys):
            self.current.append(np.sort(keys))
            if len(self.current) > 16:
                self.current = [np.sort(np.concatenate(self.current))]

    def advance(self, clock_ms: int) -> None:
        generation = clock_ms // self.grace_ms
        if generation != self.generation:
            self.previous = self.current if generation == self.generation + 1 else []
            self.current, self.generation = [], generation

    def contains(self, keys: np.ndarray) -> np.ndarray:
        out = np.zeros(len(keys), bool)
        for run in (*self.current, *self.previous):
            pos = np.minimum(np.searchsorted(run, keys), len(run) - 1)
            out |= run[pos] == keys
        return out

    def __len__(self) -> int:
        return sum(map(len, self.current)) + sum(map(len, self.previous))

    def state(self) -> tuple[int, np.ndarray, np.ndarray]:
        cat = lambda runs: np.sort(np.concatenate(runs)) if runs else np.zeros(0, np.uint64)  # noqa: E731
        return self.generation, cat(self.current), cat(self.previous)

    def load(self, generation: int, current: np.ndarray, previous: np.ndarray) -> None:
        self.generation = generation
        self.current = [current] if len(current) else []
        self.previous = [previous] if len(previous) else []


def unseen(
    keys: np.ndarray,
    ids: list[bytes],
    table: IdTable,
    id_of: Callable[[int], bytes],
    recent: RecentIds,
    counters: Counter[str],
) -> np.ndarray:
    """Which of a batch's impressions (`keys` of `ids`) are new: first in the batch, not pending in `table`
    (rows whose id is `id_of(row)`), not decided `recent`ly. Counts the others in `counters`."""
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    fresh = np.zeros(len(keys), bool)
    fresh[first] = True
    for i in np.flatnonzero(~fresh).tolist():
        same = ids[i] == ids[first[inverse[i]]]
        counters["duplicate_impression" if same else "id_key_collision"] += 1
    rows = table.lookup(keys)
    for i in np.flatnonzero(fresh & (rows >= 0)).tolist():
        same = id_of(int(rows[i])) == ids[i]
        counters["duplicate_impression" if same else "id_key_collision"] += 1
        fresh[i] = False
    decided = fresh & recent.contains(keys)
    counters["duplicate_impression"] += int(decided.sum())
    return fresh & ~decided
