"""Replay checkpoints: per-partition offsets, partial calibrators and not-yet-final records in one file,
written atomically, so an interrupted `recal replay` resumes where it stopped."""

from __future__ import annotations

import os
from collections.abc import Callable

from streams.pipeline.config import ModelConfig
from streams.pipeline.partials import PartialCalibrators
from streams.pipeline.records import pack, unpack
from streams.replay.partition import LabeledPartition, PendingRecord, RowFilter

CHECKPOINT_KIND = "recal-replay-checkpoint"


def save_checkpoint(
    path: str, identity: dict, parts: dict[int, LabeledPartition], ends: dict[int, int], complete: bool = False
) -> None:
    """Per-partition offsets + partial calibrators + not-yet-final records, written atomically."""
    entries, blobs = [], []
    for p in sorted(parts):
        part = parts[p]
        keys, cal_blobs = part.partials.to_blobs()
        entries.append(
            {
                "partition": p,
                "next": part.next_offset,
                "end": ends[p],
                "max_seq": part.max_seq,
                "durable": part.durable,
                "applied_seq": part.applied_seq,
                "keys": keys,
                "buffer": [b.seq for b in part.buffer],
                "records": part.records,
                "examples": part.examples,
                "superseded": part.superseded,
                "conflicts": part.conflicts,
                "read_examples": part.read_examples,
                "first_ts": [[m, v, t] for (m, v), t in sorted(part.version_first_ts.items())],
            }
        )
        blobs += cal_blobs + [b.record for b in part.buffer]
    data = pack({"kind": CHECKPOINT_KIND, "identity": identity, "complete": complete, "parts": entries}, blobs)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def load_checkpoint(
    path: str,
    identity: dict,
    model_config: Callable[[str], ModelConfig],
    row_filter_fn: RowFilter | None,
) -> tuple[dict[int, LabeledPartition], dict[int, int], bool] | None:
    """The saved state, None if there is no file; ValueError if it belongs to a different replay."""
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        header, blobs = unpack(f.read())
    if header.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"{path} is not a replay checkpoint")
    if header["identity"] != identity:
        raise ValueError(
            f"{path} belongs to another replay ({header['identity']}), not {identity}; "
            "remove it or pass another --checkpoint"
        )
    parts, ends, pos = {}, {}, 0
    for e in header["parts"]:
        part = LabeledPartition(e["partition"], model_config, row_filter_fn)
        n_keys = len(e["keys"])
        part.partials = PartialCalibrators.from_blobs(model_config, e["keys"], blobs[pos : pos + n_keys])
        pos += n_keys
        part.buffer = [PendingRecord(seq, bytes(blobs[pos + i])) for i, seq in enumerate(e["buffer"])]
        pos += len(e["buffer"])
        part.next_offset, part.max_seq, part.durable = e["next"], e["max_seq"], e["durable"]
        part.applied_seq, part.records, part.examples = e["applied_seq"], e["records"], e["examples"]
        part.superseded, part.conflicts = e["superseded"], e["conflicts"]
        part.read_examples = e.get("read_examples", 0)
        part.version_first_ts = {(m, v): t for m, v, t in e["first_ts"]}
        parts[part.partition] = part
        ends[part.partition] = e["end"]
    return parts, ends, bool(header["complete"])
