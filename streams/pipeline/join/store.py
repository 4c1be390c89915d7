"""Columnar storage of the pending impressions (rows) and their predictions (slots).

Rows and slots are appended a batch at a time into numpy columns; a row dies when its last slot is
decided, and the store compacts itself when the dead outnumber the living. The id bytes sit in one
buffer (`id_start`, `id_len`), so a pending impression with two predictions costs ~35 bytes of row
columns, ~34 of slot columns and its id, instead of a Python object per impression.
"""

from __future__ import annotations

import numpy as np

ROW_COLUMNS = {
    "key": np.uint64,  # ids.id_keys of the impression id
    "ts": np.int64,  # impression event time
    "holdout": np.bool_,  # held back from fitting (by id, see partition.is_holdout)
    "touched": np.bool_,  # a click or conversion was applied: labels go through the LabelRule path
    "open": np.int16,  # slots not yet decided
    "slot_start": np.int32,  # first slot; the row's slots are contiguous
    "n_slots": np.int16,
    "id_start": np.int64,
    "id_len": np.int16,
}
SLOT_COLUMNS = {
    "row": np.int32,
    "group": np.uint32,  # interned (model, model version, segment projected on the model's dims)
    "score": np.float64,
    "open": np.bool_,
}


class Columns:
    """Named numpy columns of one length, grown by half when full."""

    def __init__(self, dtypes: dict[str, type], capacity: int = 1024) -> None:
        self.dtypes = dtypes
        self.size = 0
        self._data = {name: np.zeros(capacity, dtype) for name, dtype in dtypes.items()}

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self._data[name][: self.size]
        except KeyError:
            raise AttributeError(name) from None

    def append(self, **values: np.ndarray) -> int:
        """Append rows (one array per column); return the index of the first."""
        n = len(next(iter(values.values())))
        start = self.size
        capacity = len(next(iter(self._data.values())))
        if start + n > capacity:
            capacity = max(start + n, capacity + capacity // 2)
            for name, column in self._data.items():
                grown = np.zeros(capacity, column.dtype)
                grown[:start] = column[:start]
                self._data[name] = grown
        for name, column in self._data.items():
            column[start : start + n] = values[name]
        self.size += n
        return start

    def keep(self, mask: np.ndarray) -> None:
        kept = {name: column[: self.size][mask] for name, column in self._data.items()}
        self.size = int(mask.sum())
        capacity = max(1024, self.size + self.size // 2)
        for name, column in kept.items():
            self._data[name] = np.zeros(capacity, column.dtype)
            self._data[name][: self.size] = column

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: column[: self.size] for name, column in self._data.items()}

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self._data.values())


class PendingStore:
    """Rows, slots and id bytes; `len()` is the number of pending impressions."""

    def __init__(self) -> None:
        self.rows = Columns(ROW_COLUMNS)
        self.slots = Columns(SLOT_COLUMNS)
        self.id_bytes = np.zeros(1 << 16, np.uint8)
        self.id_size = 0
        self.dead = 0

    def __len__(self) -> int:
        return self.rows.size - self.dead

    def add(
        self, keys: np.ndarray, ids: list[bytes], ts: np.ndarray, holdout: np.ndarray, n_slots: np.ndarray, **slots
    ) -> tuple[int, int]:
        """Append impressions and their slots (`slots`: group, score, open); (first row, first slot)."""
        n = len(keys)
        id_len = np.fromiter(map(len, ids), np.int64, n)
        id_start = self.id_size + np.concatenate(([0], np.cumsum(id_len)[:-1])) if n else id_len
        blob = np.frombuffer(b"".join(ids), np.uint8)
        if self.id_size + len(blob) > len(self.id_bytes):
            grown = np.zeros(max(self.id_size + len(blob), len(self.id_bytes) * 3 // 2), np.uint8)
            grown[: self.id_size] = self.id_bytes[: self.id_size]
            self.id_bytes = grown
        self.id_bytes[self.id_size : self.id_size + len(blob)] = blob
        self.id_size += len(blob)
        slot_start = self.slots.size + np.concatenate(([0], np.cumsum(n_slots)[:-1])) if n else n_slots
        open_slots = np.add.reduceat(slots["open"].astype(np.int16), slot_start - self.slots.size) if n else n_slots
        first_row = self.rows.append(
            key=keys,
            ts=ts,
            holdout=holdout,
            touched=np.zeros(n, bool),
            open=open_slots,
            slot_start=slot_start,
            n_slots=n_slots,
            id_start=id_start,
            id_len=id_len,
        )
        first_slot = self.slots.append(row=np.repeat(np.arange(first_row, first_row + n), n_slots), **slots)
        return first_row, first_slot

    def id_of(self, row: int) -> bytes:
        start = int(self.rows.id_start[row])
        return self.id_bytes[start : start + int(self.rows.id_len[row])].tobytes()

    def columns(self, slots: np.ndarray, label: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """A labeled chunk of `slots`: group, score, (label,) and their impressions' time and holdout."""
        rows = self.slots.row[slots]
        out = {"group": self.slots.group[slots], "score": self.slots.score[slots]}
        if label is not None:
            out["label"] = label
        out.update(ts=self.rows.ts[rows], holdout=self.rows.holdout[rows])
        return out

    def close(self, slots: np.ndarray) -> np.ndarray:
        """Mark `slots` decided; return the rows this left without open slots (now dead)."""
        self.slots.open[slots] = False
        rows = self.slots.row[slots]
        open_ = self.rows.open
        np.subtract.at(open_, rows, 1)
        finished = np.unique(rows[open_[rows] == 0])
        self.dead += len(finished)
        return finished

    def compact(self) -> tuple[np.ndarray, np.ndarray]:
        """Drop dead rows and their slots; return (new row index, new slot index) per old one (-1: gone)."""
        alive = self.rows.open > 0
        new_row = np.where(alive, np.cumsum(alive) - 1, -1)
        slot_alive = alive[self.slots.row]
        new_slot = np.where(slot_alive, np.cumsum(slot_alive) - 1, -1)
        # rows own contiguous byte ranges in row order, so the live ids are the bytes of live rows
        keep_bytes = np.repeat(alive, self.rows.id_len.astype(np.int64))
        ids = self.id_bytes[: self.id_size][keep_bytes]
        self.slots.keep(slot_alive)
        self.slots.row[:] = new_row[self.slots.row]
        self.rows.keep(alive)
        live_len = self.rows.id_len.astype(np.int64)
        self.rows.id_start[:] = np.concatenate(([0], np.cumsum(live_len)[:-1])) if len(live_len) else live_len
        self.rows.slot_start[:] = (
            np.concatenate(([0], np.cumsum(self.rows.n_slots)[:-1])) if self.rows.size else self.rows.slot_start
        )
        self.id_bytes = np.zeros(max(1 << 16, len(ids) * 3 // 2), np.uint8)
        self.id_bytes[: len(ids)] = ids
        self.id_size = len(ids)
        self.dead = 0
        return new_row, new_slot

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + self.slots.nbytes + self.id_bytes.nbytes
