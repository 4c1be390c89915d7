"""Cardinality caps (#13 item 6) and de-duplicated early-click lists.

Before: no cap on distinct segment values or models; each new value made calibrators every snapshot
serialised. A click resent before its impression grew the early list by one entry per copy."""

from __future__ import annotations

from streams.pipeline.cardinality import MODELS, SEGMENTS, CardinalityGuard
from streams.pipeline.config import Config, ModelConfig
from streams.pipeline.events import CLICK, Action, Impression
from streams.pipeline.join import PartitionJoin

SEGMENT_BY = (("platform", "placement"), ("placement",))


def imp(i: int, placement: str, platform: str = "ios", models=("ctr",)) -> Impression:
    return Impression(
        f"i{i}", 1_000 + i, {"placement": placement, "platform": platform}, [(m, "v1", 0.1) for m in models]
    )


def guard(max_segments: int = 3, max_models: int = 100) -> CardinalityGuard:
    return CardinalityGuard(
        Config(max_models=max_models), lambda m: ModelConfig(segment_by=SEGMENT_BY, max_segments=max_segments)
    )


def test_20000_distinct_values_admit_exactly_the_cap():
    g = guard(max_segments=10_000)
    verdicts = [g.admit(imp(i, f"p{i}")) for i in range(20_000)]
    assert verdicts.count(None) == 10_000 and verdicts.count(SEGMENTS) == 10_000
    assert verdicts[:10_000] == [None] * 10_000  # the first ones in, the rest refused
    assert g.sizes() == {"ctr": 20_000}  # 10,000 keys at each of the two levels
    assert g.admit(imp(99_999, "p17")) is None  # known keys keep learning


def test_each_level_is_capped_separately():
    g = guard(max_segments=2)
    assert g.admit(imp(0, "feed", "ios")) is None
    assert g.admit(imp(1, "feed", "android")) is None  # level (platform, placement): 2 keys; (placement): 1
    assert g.admit(imp(2, "feed", "web")) == SEGMENTS  # a third (platform, placement) key
    assert g.admit(imp(3, "search", "ios")) == SEGMENTS  # (platform, placement) full although placement is not
    assert g.keys[("ctr", ("placement",))] == {"placement=feed"}  # a refused impression records nothing


def test_models_per_worker_are_capped():
    g = guard(max_models=2)
    assert g.admit(imp(0, "feed", models=("a", "b"))) is None
    assert g.admit(imp(1, "feed", models=("c",))) == MODELS
    assert g.admit(imp(2, "feed", models=("a", "b"))) is None
    assert g.admit(imp(3, "feed", models=("b", "c"))) == MODELS and g.models == {"a", "b"}


def test_zero_means_no_cap():
    g = guard(max_segments=0, max_models=0)
    assert all(g.admit(imp(i, f"p{i}", models=(f"m{i % 50}",))) is None for i in range(2_000))


def test_restored_keys_count_against_the_cap():
    keys = [("ctr", "v1", "placement=a"), ("ctr", "v1", "placement=b"), ("ctr", "v1", "*")]
    g = guard(max_segments=2)
    g.observe(keys)
    assert g.admit(imp(0, "c", "ios")) == SEGMENTS
    assert g.admit(imp(1, "a", "ios")) is None


def test_a_resent_early_click_is_kept_once():
    join = PartitionJoin(lambda m: ModelConfig(window_ms=60_000, allowed_lateness_ms=0), 30_000, 0)
    for _ in range(1_000):
        join.add_action(Action(CLICK, "imp-1", 5_000, "c-1"))
    join.add_action(Action(CLICK, "imp-1", 5_001, "c-2"))  # another click of the same impression: kept
    assert [a.action_id for a in join.early["imp-1"]] == ["c-1", "c-2"]
    assert join.counters["duplicate_click"] == 999 and join.counters["early_click"] == 2
