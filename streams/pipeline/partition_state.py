"""What a join worker holds per assigned partition, and both directions of its snapshot.

A partition's join state, its partial calibrators and the input offsets they reflect are snapshotted
together (`SnapshotStore`): after a crash the partition restarts from its last snapshot and re-reads
its inputs from the offsets stored in it, so no label is lost or counted twice. Labeled records carry
(partition, seq, durable) so a replay can drop the ones a crash superseded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from streams.pipeline.config import ModelConfig
from streams.pipeline.join import Labeled, PartitionJoin
from streams.pipeline.partials import PartialCalibrators
from streams.pipeline.records import compact_tables, pack, pack_examples, unpack


@dataclass
class PartitionState:
    partition: int
    join: PartitionJoin
    partials: PartialCalibrators
    offsets: dict[str, int]  # source topic -> next offset to read
    seq: int = 0  # labeled records written
    durable: int = 0  # seq covered by the last snapshot

    def snapshot_blob(self) -> bytes:
        keys, blobs = self.partials.to_blobs()
        header = {"partition": self.partition, "seq": self.seq, "offsets": self.offsets, "keys": keys}
        return pack(header, [self.join.snapshot(), *blobs])

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
            return cls(partition, new_join(None), PartialCalibrators(model_config), offsets={})
        header, blobs = unpack(blob)
        partials = PartialCalibrators.from_blobs(model_config, header["keys"], blobs[1:])
        join = new_join(bytes(blobs[0]))
        return cls(partition, join, partials, header["offsets"], header["seq"], header["seq"])

    def fold(self, examples: Labeled) -> tuple[bytes, dict[str, int]]:
        """Learn the examples into the partials; return the labeled record and the count per model.
        The record's header carries only the models, versions and segments its examples use."""
        tables = {"models": examples.models, "versions": examples.versions, "segments": examples.segments}
        columns, tables = compact_tables(examples.arrays(), tables)
        self.partials.learn(columns, tables["models"], tables["versions"], tables["segments"])
        models, counts = np.unique(columns["model"], return_counts=True)
        self.seq += 1
        header = {"type": "examples", "partition": self.partition, "seq": self.seq, "durable": self.durable}
        record = pack_examples({**header, **tables}, columns)
        return record, {tables["models"][m]: int(c) for m, c in zip(models.tolist(), counts.tolist(), strict=True)}
