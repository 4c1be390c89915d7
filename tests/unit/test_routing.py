"""Routing one partition's messages (#13 item 8: every event's partition is checked with the producers'
partitioner), re-keying, refusal hooks, and the labeled-record format (#13 items 4 and 5)."""

from __future__ import annotations

import zlib
from types import SimpleNamespace

import numpy as np
import orjson
from aiokafka.partitioner import murmur2

from streams.pipeline.config import ModelConfig
from streams.pipeline.events import CLICK, IMPRESSION, ImpressionEvent, Invalid, Limits, Prediction
from streams.pipeline.join import PartitionJoin
from streams.pipeline.records import compact_tables, pack_examples, unpack_examples
from streams.pipeline.routing import KIND_HEADER, route

TS = 1_700_000_000_000
N = 8


def impression(iid: str) -> bytes:
    return orjson.dumps(
        {"impression_id": iid, "ts": TS, "predictions": [{"model": "ctr", "version": "v1", "score": 0.5}]}
    )


def message(value: bytes | None, key: bytes | None = None, headers=(), offset: int = 0):
    return SimpleNamespace(value=value, key=key, headers=list(headers), topic="t", partition=0, offset=offset)


def crc32_partition(key: bytes) -> int:
    return zlib.crc32(key) % N


def murmur2_partition(key: bytes) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % N


def disagreeing_ids(count: int) -> list[str]:
    ids = (f"imp-{i}" for i in range(10_000))
    return [i for i in ids if crc32_partition(i.encode()) != murmur2_partition(i.encode())][:count]


def test_an_event_keyed_by_its_id_on_the_wrong_partition_is_rekeyed():
    """A librdkafka producer (crc32) keyed the impression by its id: before, the key matching the id
    was taken as proof of co-partitioning and the impression was joined where no click would come."""
    ids = disagreeing_ids(20)
    for iid in ids:
        p = crc32_partition(iid.encode())
        routed = route(p, [message(impression(iid), iid.encode())], IMPRESSION, N, Limits())
        assert routed.impressions == []
        assert [(k, owner, e.impression_id) for k, owner, e in routed.rekeys] == [
            (IMPRESSION, murmur2_partition(iid.encode()), iid)
        ]


def test_with_the_crc32_partitioner_the_same_events_are_joined_in_place():
    for iid in disagreeing_ids(20):
        p = crc32_partition(iid.encode())
        for name in ("crc32", "consistent_random"):
            routed = route(p, [message(impression(iid), iid.encode())], IMPRESSION, N, Limits(), name)
            assert [e.impression_id for e in routed.impressions] == [iid] and routed.rekeys == []
            assert routed.impression_ids == [iid.encode()]


def test_rekeyed_topic_messages_are_routed_by_their_kind_header():
    iid = "imp-1"
    p = murmur2_partition(iid.encode())
    click = orjson.dumps({"click_id": "c", "impression_id": iid, "ts": TS})
    messages = [
        message(impression(iid), headers=[(KIND_HEADER, b"impression")]),
        message(click, headers=[(KIND_HEADER, b"click")], offset=1),
        message(click, headers=[(KIND_HEADER, b"bogus")], offset=2),
        message(click, offset=3),
    ]
    routed = route(p, messages, None, N, Limits())
    assert [e.impression_id for e in routed.impressions] == [iid]
    assert [(a.kind, a.action_id) for a in routed.actions] == [(CLICK, "c")]
    assert [(m.offset, r) for m, r in routed.refused] == [
        (2, [Invalid("bad_header:recal-kind", -1)]),
        (3, [Invalid("bad_header:recal-kind", -1)]),
    ]


def test_refused_messages_keep_their_reasons_and_good_ones_flow():
    iid = "imp-1"
    p = murmur2_partition(iid.encode())
    bad = orjson.dumps({"impression_id": iid, "ts": True, "predictions": []})
    twice = orjson.dumps(
        {
            "impression_id": iid,
            "ts": TS,
            "predictions": [{"model": "ctr", "version": "v1", "score": 0.5}] * 64,
        }
    )
    routed = route(p, [message(impression(iid)), message(bad), message(twice), message(None)], IMPRESSION, N, Limits())
    assert len(routed.impressions) == 1
    assert [r for _, r in routed.refused] == [
        [Invalid("bad_type:ts", -1)],
        [Invalid("duplicate_model", -1)],
        [Invalid("empty_message", -1)],
    ]


def test_screens_refuse_valid_impressions_with_their_reason():
    """The hook a per-model cap on live versions plugs into (`too_many_versions`)."""
    p = murmur2_partition(b"imp-1")

    def cap(events):
        return ["too_many_versions" if e.predictions[0].model_version != "v1" else None for e in events]

    v2 = impression("imp-1").replace(b'"v1"', b'"v2"')
    routed = route(p, [message(impression("imp-1")), message(v2)], IMPRESSION, N, Limits(), screens=[cap])
    assert len(routed.impressions) == 1
    assert [r for _, r in routed.refused] == [[Invalid("too_many_versions", -1)]]


def test_more_than_65536_model_versions_label_and_round_trip():
    """#13 item 5: u16 indices overflowed (struct.error in the join, repeated after every restart)."""
    cfg = ModelConfig(window_ms=1_000, allowed_lateness_ms=0, segment_by=())
    join = PartitionJoin({"ctr": cfg}.get, 1_000, 0)
    n = 70_000
    events = [ImpressionEvent(f"i{k}", TS, [Prediction("ctr", f"v{k}", 0.5)], None) for k in range(n)]
    join.process(events, [])
    join.process([ImpressionEvent(f"t{k}", TS + 5_000, [Prediction("ctr", "v0", 0.5)], None) for k in range(4096)], [])
    join.expire()
    labeled, _ = join.drain()
    assert len(labeled) == n
    tables = {"models": labeled.models, "versions": labeled.versions, "segments": labeled.segments}
    columns, tables = compact_tables(labeled.arrays(), tables)
    header, back = unpack_examples(pack_examples({"type": "examples", **tables}, columns))
    versions = {header["versions"][v] for v in back["version"].tolist()}
    assert len(versions) == n and "v69999" in versions


def test_a_record_header_carries_only_the_tables_its_examples_use():
    """#13 item 4: every record carried every model, version and segment its partition ever saw."""
    columns = {
        "model": np.array([3, 3]),
        "version": np.array([250, 7]),
        "segment": np.array([299, 299]),
        "score": np.array([0.1, 0.2]),
        "label": np.array([0, 1]),
        "ts": np.array([TS, TS]),
        "holdout": np.array([False, True]),
    }
    tables = {
        "models": [f"m{i}" for i in range(4)],
        "versions": [f"v{i}" for i in range(300)],
        "segments": [{"placement": "x" * 100 + str(i)} for i in range(300)],
    }
    small, used = compact_tables(columns, tables)
    assert used == {"models": ["m3"], "versions": ["v7", "v250"], "segments": [tables["segments"][299]]}
    header, back = unpack_examples(pack_examples({"type": "examples", **used}, small))
    assert [header["versions"][v] for v in back["version"].tolist()] == ["v250", "v7"]
    assert len(pack_examples({"type": "examples", **used}, small)) < 1_000
