"""What a join worker holds per assigned partition, and both directions of its snapshot.

A partition's join state, its partial calibrators and the input offsets they reflect are snapshotted
together (`SnapshotStore`): after a crash the partition restarts from its last snapshot and re-reads
its inputs from the offsets stored in it, so no label is lost or counted twice. Labeled records carry
(partition, seq, durable) so a replay can drop the ones a crash superseded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from recalibrators.calibrator import Calibrator
from streams.pipeline.config import ModelConfig
from streams.pipeline.delayed import DelayedFeedback
from streams.pipeline.join import Labeled, PartitionJoin
from streams.pipeline.partials import PartialCalibrators, calibrator_config
from streams.pipeline.records import compact_tables, pack, pack_examples, unpack


@dataclass
class PartitionState:
    partition: int
    join: PartitionJoin
    partials: PartialCalibrators
    offsets: dict[str, int]  # source topic -> next offset to read
    delayed: DelayedFeedback  # open windows and delay models of label_delay = "corrected" models
    seq: int = 0  # labeled records written
    durable: int = 0  # seq covered by the last snapshot
    expiry_deferred: bool = False  # its last emission kept due windows open (label topics lagged): retried

    def snapshot_blob(self) -> bytes:
        keys, blobs = self.partials.to_blobs()
        header = {"partition": self.partition, "seq": self.seq, "offsets": self.offsets, "keys": keys, "delayed": 1}
        return pack(header, [self.join.snapshot(), *blobs, self.delayed.to_bytes()])

    @classmethod
    def from_blob(
        cls,
        partition: int,
        blob: bytes | None,
        new_join: Callable[[bytes | None], PartitionJoin],
        model_config: Callable[[str], ModelConfig],
    ) -> PartitionState:
        """The state a snapshot holds (`blob`), or a fresh one (None)."""
        if blob is None:
            return cls(partition, new_join(None), PartialCalibrators(model_config), {}, DelayedFeedback(model_config))
        header, blobs = unpack(blob)
        n = len(header["keys"])
        partials = PartialCalibrators.from_blobs(model_config, header["keys"], blobs[1 : 1 + n])
        delayed = (  # a snapshot from before label_delay has none: windows open then enter only at maturity
            DelayedFeedback.from_bytes(model_config, bytes(blobs[-1]))
            if header.get("delayed")
            else DelayedFeedback(model_config)
        )
        join = new_join(bytes(blobs[0]))
        return cls(partition, join, partials, header["offsets"], delayed, header["seq"], header["seq"])

    def learn_facts(self) -> None:
        """The join's open-window facts of this batch (before its matured examples: `fold`)."""
        for facts, learn in zip(self.join.drain_facts(), (self.delayed.opened, self.delayed.converted), strict=True):
            if facts is not None:
                learn(facts.columns, facts.models, facts.versions, facts.segments)

    def take_partials(self) -> Iterator[tuple[tuple[str, str, str], bytes, bytes | None]]:
        """Changed keys: (key, partial calibrator's bytes, its DelayedPartial bytes for corrected models, else
        None), each encoded as it is taken. A corrected key may have open windows and no matured example
        yet: its calibrator is empty."""
        keys = {key for key, _ in self.partials.take_dirty()} | set(self.delayed.take_dirty())
        for key in sorted(keys):
            cfg = self.delayed.model_config(key[0])
            if key in self.partials.calibrators:
                blob = self.partials.blob(key)
            else:
                blob = Calibrator(calibrator_config(cfg)).to_bytes()
            yield key, blob, self.delayed.partial(key).encode() if cfg.corrected else None

    async def fold(self, examples: Labeled) -> tuple[bytes, dict[str, int]]:
        """Learn the examples into the partials; return the labeled record and the count per model.
        The record's header carries only the models, versions and segments its examples use. The event
        loop is handed back between learning steps (`PartialCalibrators.learn_steps`); the join worker's
        lock keeps checkpoints and rebalances out until the fold is done."""
        tables = {"models": examples.models, "versions": examples.versions, "segments": examples.segments}
        columns, tables = compact_tables(examples.arrays(), tables)
        for _ in self.partials.learn_steps(columns, tables["models"], tables["versions"], tables["segments"]):
            await asyncio.sleep(0)
        self.delayed.matured(columns, tables["models"], tables["versions"], tables["segments"])
        models, counts = np.unique(columns["model"], return_counts=True)
        self.seq += 1
        header = {"type": "examples", "partition": self.partition, "seq": self.seq, "durable": self.durable}
        record = pack_examples({**header, **tables}, columns)
        return record, {tables["models"][m]: int(c) for m, c in zip(models.tolist(), counts.tolist(), strict=True)}
