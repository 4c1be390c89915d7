"""One labeled partition's replay: supersession and application of its records (see the package doc)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from streams.pipeline.config import ModelConfig
from streams.pipeline.partials import PartialCalibrators
from streams.pipeline.records import unpack, unpack_examples

log = logging.getLogger("recal.replay")

RowFilter = Callable[[dict, dict], np.ndarray | None]  # (header, columns) -> row mask, None for all rows


@dataclass
class PendingRecord:
    seq: int
    record: bytes


class LabeledPartition:
    """Applies one partition's labeled records in offset order, honouring supersession (module doc)."""

    def __init__(
        self,
        partition: int,
        model_config: Callable[[str], ModelConfig],
        row_filter: RowFilter | None = None,
    ) -> None:
        self.partition = partition
        self.partials = PartialCalibrators(model_config)
        self.row_filter = row_filter
        self.max_seq = 0  # highest seq seen
        self.durable = 0  # highest `durable` seen: records up to it are final
        self.applied_seq = 0  # highest seq applied
        self.buffer: list[PendingRecord] = []  # seen, not yet final, in arrival order (increasing seq)
        self.next_offset: int | None = None
        self.records = 0
        self.examples = 0  # examples applied
        self.read_examples = 0  # examples in the records read
        self.superseded = 0  # records dropped because a restarted worker recomputed them
        self.conflicts = 0  # records that supersede already-final ones (should never happen; counted)
        self.version_first_ts: dict[tuple[str, str], int] = {}  # (model, version) -> first event time

    def add(self, record: bytes) -> None:
        """One labeled record, in offset order."""
        header, _ = unpack(record)
        if header.get("type") != "examples":
            raise ValueError("not a labeled-examples record")
        seq, durable = int(header["seq"]), int(header["durable"])
        self.records += 1
        self.read_examples += int(header.get("n", 0))
        if seq <= self.max_seq:
            kept = [p for p in self.buffer if p.seq < seq]
            self.superseded += len(self.buffer) - len(kept)
            self.buffer = kept
            if seq <= self.applied_seq:
                self.conflicts += 1
                log.warning(
                    "partition %d: record seq %d supersedes records already final (applied up to %d)",
                    self.partition,
                    seq,
                    self.applied_seq,
                )
        self.buffer.append(PendingRecord(seq, record))
        self.max_seq = seq
        self.durable = max(self.durable, durable)
        self._apply_final(self.durable)

    def _apply_final(self, upto: int) -> None:
        n = 0
        while n < len(self.buffer) and self.buffer[n].seq <= upto:
            self._apply(self.buffer[n])
            n += 1
        if n:
            del self.buffer[:n]

    def finish(self) -> None:
        """End of the range: what is still buffered is the newest known state; apply it."""
        for pending in self.buffer:
            self._apply(pending)
        self.buffer = []

    def _apply(self, pending: PendingRecord) -> None:
        header, columns = unpack_examples(pending.record)
        if self.row_filter is not None:
            mask = self.row_filter(header, columns)
            if mask is not None:
                columns = {name: column[mask] for name, column in columns.items()}
        n = len(columns["label"])
        if n:
            models, versions = header["models"], header["versions"]
            pairs = np.unique((columns["model"].astype(np.int64) << 16) | columns["version"], return_index=True)
            for packed, first in zip(*pairs, strict=True):
                key = (models[int(packed) >> 16], versions[int(packed) & 0xFFFF])
                ts = int(columns["ts"][first])
                if key not in self.version_first_ts or ts < self.version_first_ts[key]:
                    self.version_first_ts[key] = ts
            self.partials.learn(columns, models, versions, header["segments"])
            self.examples += n
        self.applied_seq = max(self.applied_seq, pending.seq)


def row_filter(models: set[str] | None, from_ms: int | None, to_ms: int | None) -> RowFilter | None:
    """A mask builder for `LabeledPartition`: chosen models, and examples' event time in [from, to)."""
    if not models and from_ms is None and to_ms is None:
        return None

    def build(header: dict, columns: dict) -> np.ndarray | None:
        mask = np.ones(len(columns["label"]), dtype=bool)
        if models:
            wanted = [i for i, name in enumerate(header["models"]) if name in models]
            mask &= np.isin(columns["model"], wanted)
        if from_ms is not None:
            mask &= columns["ts"] >= from_ms
        if to_ms is not None:
            mask &= columns["ts"] < to_ms
        return None if mask.all() else mask

    return build
