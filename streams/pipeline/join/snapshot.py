"""A partition's join state as bytes, and back: both directions of the format in one place.

`records.pack` framing (no pickle): an orjson header (clock, the interned tables, the touched and
early impressions, column dtypes) and one blob per numpy column of the compacted store. The due queue
and the id table are rebuilt on restore; ids keep their keys (`id_keys` is the same in every process).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from streams.pipeline.join.tables import Interner
from streams.pipeline.records import pack, unpack

if TYPE_CHECKING:
    from streams.pipeline.join.partition import PartitionJoin

FORMAT = 2  # 1: the row-per-bytes-object layout before the columnar join


def dump(join: PartitionJoin) -> bytes:
    if join.pending.dead:
        join._compact()
    rows, slots = join.pending.rows.arrays(), join.pending.slots.arrays()
    generation, current, previous = join.recent.state()
    tables = join.tables
    header = {
        "type": "join",
        "format": FORMAT,
        "clock": join.clock,
        "models": tables.models.items,
        "versions": tables.versions.items,
        "segments": tables.segments.items,
        "groups": tables.groups.items,
        "clicked": join.clicked,
        "converted": join.converted,
        "early": {k: [list(a) for a in v] for k, v in join.early.items()},
        "recent_generation": generation,
        "rows": list(rows),
        "slots": list(slots),
    }
    blobs = [rows[name].tobytes() for name in rows] + [slots[name].tobytes() for name in slots]
    blobs += [join.pending.id_bytes[: join.pending.id_size].tobytes(), current.tobytes(), previous.tobytes()]
    blobs.append(join._clock.recent.tobytes())
    return pack(header, blobs)


def load(data: bytes, join: PartitionJoin) -> PartitionJoin:
    """`join`, new and empty, with the state of `data`."""
    header, blobs = unpack(data)
    if header.get("format") != FORMAT:
        raise ValueError(f"join snapshot format {header.get('format')!r}, this worker reads {FORMAT}")
    tables = join.tables
    for name in header["models"]:
        tables._model(name)
    tables.versions = Interner(header["versions"])
    tables.segments = Interner(header["segments"])
    for m, v, s in header["groups"]:
        tables.groups.index((m, v, s))
    tables._set_groups(np.array(header["groups"], np.uint32).reshape(-1, 3))
    store = join.pending
    columns = iter(blobs)
    row_data = {name: np.frombuffer(next(columns), store.rows.dtypes[name]) for name in header["rows"]}
    slot_data = {name: np.frombuffer(next(columns), store.slots.dtypes[name]) for name in header["slots"]}
    ids = np.frombuffer(next(columns), np.uint8)
    current, previous = (np.frombuffer(next(columns), np.uint64).copy() for _ in range(2))
    join._clock.recent = np.frombuffer(next(columns), np.int64).copy()
    store.rows.append(**row_data)
    store.slots.append(**slot_data)
    store.id_bytes = ids.copy()
    store.id_size = len(ids)
    join._clock.value = header["clock"]
    join.ids.insert(store.rows.key.copy(), np.arange(store.rows.size))
    join.recent.load(header["recent_generation"], current, previous)
    join.touches.clicked, join.touches.converted = header["clicked"], header["converted"]
    # due times: an open slot is due when it would be were nobody to click; a clicked post-click
    # slot again when its conversion window closes (the expiry keeps whichever applies)
    open_slots = np.flatnonzero(store.slots.open)
    slot_rows = store.slots.row[open_slots]
    model = tables.group_model[store.slots.group[open_slots]]
    join.due.push(store.rows.ts[slot_rows] + tables.rules.untouched_due[model], open_slots)
    touched = store.rows.touched[slot_rows]
    for slot, row in zip(open_slots[touched].tolist(), slot_rows[touched].tolist(), strict=True):
        click_ts = join.clicked.get(store.id_of(row).decode())
        rule = tables.rule_of(int(store.slots.group[slot]))
        join.due.push(np.array([rule.due(int(store.rows.ts[row]), click_ts)]), np.array([slot]))
    join.early.load(header["early"])
    return join
