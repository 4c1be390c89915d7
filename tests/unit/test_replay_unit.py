"""Replay's pure parts: supersession of labeled records, checkpoints, filters, map building."""

from __future__ import annotations

import numpy as np
import pytest

from recalibrators.serving.keys import MapField
from streams.cli.replay import parse_time_ms
from streams.pipeline.aggregator import Aggregator, encode_partial
from streams.pipeline.config import ModelConfig
from streams.pipeline.partials import PartialCalibrators
from streams.pipeline.records import pack_examples
from streams.replay.checkpoint import load_checkpoint, save_checkpoint
from streams.replay.merge import build_maps
from streams.replay.partition import LabeledPartition, row_filter

T0 = 1_790_000_000_000
MODELS, VERSIONS = ["ctr", "cvr"], ["v1"]
SEGMENTS = [{"placement": "search"}, {"placement": "feed"}]


def cfg(_name: str) -> ModelConfig:
    return ModelConfig(segment_by=(("placement",),), half_life_ms=3_600_000, min_samples=1)


def columns(tag: int, n: int = 50) -> dict[str, np.ndarray]:
    """Examples that differ per `tag`, so applying the wrong record changes the state."""
    rng = np.random.default_rng(tag)
    return {
        "model": rng.integers(0, 2, n).astype(np.uint16),
        "version": np.zeros(n, np.uint16),
        "segment": rng.integers(0, 2, n).astype(np.uint32),
        "score": rng.uniform(0.001, 0.999, n),
        "label": rng.integers(0, 2, n).astype(np.uint8),
        "ts": T0 + tag * 1_000 + np.arange(n, dtype=np.int64),
        "holdout": rng.uniform(size=n) < 0.1,
    }


def record(seq: int, durable: int, tag: int) -> bytes:
    header = {
        "type": "examples",
        "partition": 0,
        "seq": seq,
        "durable": durable,
        "models": MODELS,
        "versions": VERSIONS,
        "segments": SEGMENTS,
    }
    return pack_examples(header, columns(tag))


def reference(tags: list[int]) -> PartialCalibrators:
    partials = PartialCalibrators(cfg)
    for tag in tags:
        partials.learn(columns(tag), MODELS, VERSIONS, SEGMENTS)
    return partials


def same_state(a: PartialCalibrators, b: PartialCalibrators) -> bool:
    return a.to_blobs() == b.to_blobs()


def replay(records: list[bytes]) -> LabeledPartition:
    part = LabeledPartition(0, cfg)
    for r in records:
        part.add(r)
    part.finish()
    return part


def test_records_without_crash_are_applied_in_order():
    part = replay([record(1, 0, 1), record(2, 0, 2), record(3, 2, 3), record(4, 2, 4), record(5, 4, 5)])
    assert same_state(part.partials, reference([1, 2, 3, 4, 5]))
    assert part.superseded == 0 and part.conflicts == 0 and part.examples == 250


# worker A: snapshot at seq 2, wrote 3 and 4, crashed; worker B restored seq 2 and recomputed 3, 4, 5 with
# other batch boundaries (tags 13, 14, 15)
CRASH_AFTER_SNAPSHOT = [
    record(1, 0, 1),
    record(2, 0, 2),
    record(3, 2, 3),
    record(4, 2, 4),
    record(3, 2, 13),
    record(4, 2, 14),
    record(5, 4, 15),
]


def test_crash_after_snapshot_supersedes_the_recomputed_records():
    part = replay(CRASH_AFTER_SNAPSHOT)
    assert same_state(part.partials, reference([1, 2, 13, 14, 15]))
    assert part.superseded == 2 and part.conflicts == 0


def test_crash_before_any_snapshot_supersedes_everything():
    records = [record(1, 0, 1), record(2, 0, 2), record(3, 0, 3), record(1, 0, 11), record(2, 0, 12), record(3, 1, 13)]
    part = replay(records)
    assert same_state(part.partials, reference([11, 12, 13]))
    assert part.superseded == 3


def test_two_crashes_in_a_row():
    records = [
        record(1, 0, 1),
        record(2, 1, 2),
        record(3, 1, 3),
        record(4, 1, 4),  # snapshot at 2 ...
        record(3, 2, 23),
        record(4, 2, 24),  # ... B restored at 2, crashed again
        record(3, 2, 33),
        record(4, 3, 34),
        record(5, 3, 35),
    ]  # C restored at 2 as well
    part = replay(records)
    assert same_state(part.partials, reference([1, 2, 33, 34, 35]))
    assert part.superseded == 4


def test_records_wait_until_a_snapshot_covers_them():
    part = LabeledPartition(0, cfg)
    for r in (record(1, 0, 1), record(2, 0, 2), record(3, 0, 3)):
        part.add(r)
    assert part.applied_seq == 0 and len(part.buffer) == 3 and not part.partials.calibrators
    part.add(record(4, 2, 4))
    assert part.applied_seq == 2 and [p.seq for p in part.buffer] == [3, 4]


def test_conflict_is_counted_not_hidden():
    part = replay([record(1, 0, 1), record(2, 2, 2), record(1, 0, 11)])  # seq 1 was final already
    assert part.conflicts == 1


def test_checkpoint_round_trip_resumes_identically(tmp_path):
    records = [*CRASH_AFTER_SNAPSHOT, record(6, 4, 16)]
    whole = replay(records)
    path = str(tmp_path / "ckpt")
    first = LabeledPartition(0, cfg)
    for offset, r in enumerate(records[:4]):  # stop with records buffered
        first.add(r)
        first.next_offset = offset + 1
    identity = {"source": "labeled", "topic": "t"}
    save_checkpoint(path, identity, {0: first}, {0: len(records)})
    with pytest.raises(ValueError, match="another replay"):
        load_checkpoint(path, {"source": "raw"}, cfg, None)
    parts, ends, complete = load_checkpoint(path, identity, cfg, None)
    resumed = parts[0]
    assert not complete and ends == {0: len(records)} and resumed.next_offset == 4
    for r in records[resumed.next_offset :]:
        resumed.add(r)
    resumed.finish()
    assert same_state(resumed.partials, whole.partials)
    assert resumed.superseded == whole.superseded == 2


def test_row_filter_by_model_and_event_time():
    part = LabeledPartition(0, cfg, row_filter({"ctr"}, T0 + 1_010, T0 + 2_020))
    part.add(record(1, 0, 1))
    part.add(record(2, 0, 2))
    part.finish()
    assert {k[0] for k in part.partials.calibrators} == {"ctr"}
    c1, c2 = columns(1), columns(2)
    expected = sum(int(((c["model"] == 0) & (c["ts"] >= T0 + 1_010) & (c["ts"] < T0 + 2_020)).sum()) for c in (c1, c2))
    assert part.examples == expected
    assert row_filter(None, None, None) is None


def test_build_maps_equals_the_live_aggregator():
    a, b = reference([1, 2]), reference([3])
    live = Aggregator(cfg)
    for partition, partials in ((1, b), (0, a)):  # arrival order does not matter within a version
        for (model, version, segment), cal in partials.calibrators.items():
            live.add(str(MapField(model, version, segment)), encode_partial(partition, model, version, segment, cal))
    expected = {m.to_json() for m in live.take_dirty(now_ms=1)}
    maps, _ = build_maps({0: a, 1: b}, cfg, {("ctr", "v1"): T0, ("cvr", "v1"): T0}, now_ms=1)
    assert {m.to_json() for m in maps} == expected and len(maps) == 6


def test_parse_time():
    assert parse_time_ms("2026-11-01T00:00Z") == 1_793_491_200_000
    assert parse_time_ms("2026-11-01T00:00") == 1_793_491_200_000
    assert parse_time_ms("1793491200000") == 1_793_491_200_000
