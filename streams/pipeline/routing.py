"""`route`: one partition's share of a fetched batch -> the events it joins, the events it re-keys to
the partition they belong to, and the refused messages. Pure: no I/O, no state.

Every event is checked against the partitioner of the producers (`partitioners`): an event whose
impression id belongs to another partition (a producer that keyed by something else, an array message
mixing impressions, a producer on another partitioner) is re-keyed, never joined where it landed.

`screens` is the hook for worker-side refusals of valid impressions (a cap on live model versions,
`too_many_versions`; cardinality caps): each returns, per impression, a dead-letter reason or None.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from streams.pipeline.events import (
    IMPRESSION,
    KIND_NAMES,
    Action,
    ImpressionEvent,
    Invalid,
    Limits,
    as_action,
    decode_batch,
)
from streams.pipeline.partitioners import partitions_of

KIND_HEADER = "recal-kind"  # on re-keyed records: which kind of event the value is

Screen = Callable[[list[ImpressionEvent]], list[str | None]]


@dataclass
class Routed:
    impressions: list[ImpressionEvent] = field(default_factory=list)
    impression_ids: list[bytes] = field(default_factory=list)  # utf-8 ids, reused for hashing
    actions: list[Action] = field(default_factory=list)
    rekeys: list[tuple[int, int, object]] = field(default_factory=list)  # (kind, partition, event struct)
    refused: list[tuple[object, list[Invalid]]] = field(default_factory=list)  # (message, reasons)


def header_kind(headers) -> int | None:
    for name, value in headers or ():
        if name == KIND_HEADER:
            try:
                return KIND_NAMES.index(value.decode())
            except ValueError:
                return None
    return None


def route(
    partition: int,
    messages: Sequence,
    kind: int | None,
    n_partitions: int,
    limits: Limits,
    partitioner: str = "murmur2",
    screens: Sequence[Screen] = (),
    into: Routed | None = None,
) -> Routed:
    """Route the messages of one topic-partition (`kind` None: per message, from `recal-kind`)."""
    out = into if into is not None else Routed()
    if kind is None:
        by_kind: dict[int | None, list] = {}
        for message in messages:
            by_kind.setdefault(header_kind(message.headers), []).append(message)
        for k, group in by_kind.items():
            if k is None:
                out.refused.extend((m, [Invalid("bad_header:recal-kind", -1)]) for m in group)
            else:
                route(partition, group, k, n_partitions, limits, partitioner, screens, out)
        return out
    decoded = decode_batch([m.value for m in messages], kind, limits)
    refused = decoded.invalid
    events, origin = decoded.events, decoded.origin
    if events:
        ids = [e.impression_id.encode() for e in events]
        owner = partitions_of(ids, n_partitions, partitioner)
        here = owner == partition
        if not here.all():
            for i in np.flatnonzero(~here).tolist():
                out.rekeys.append((kind, int(owner[i]), events[i]))
            keep = np.flatnonzero(here).tolist()
            events, origin, ids = [events[i] for i in keep], [origin[i] for i in keep], [ids[i] for i in keep]
    if kind == IMPRESSION and events:
        for screen in screens:  # worker-side refusals of the impressions joined here
            reasons = screen(events)
            if any(reasons):
                for i in [i for i, r in enumerate(reasons) if r]:
                    refused.setdefault(origin[i], []).append(Invalid(reasons[i], -1))
                keep = [i for i, r in enumerate(reasons) if not r]
                events, origin, ids = [events[i] for i in keep], [origin[i] for i in keep], [ids[i] for i in keep]
    out.refused.extend((messages[i], reasons) for i, reasons in sorted(refused.items()))
    if not events:
        return out
    if kind == IMPRESSION:
        out.impressions.extend(events)
        out.impression_ids.extend(ids)
    else:
        out.actions.extend(as_action(e, kind) for e in events)
    return out
