"""Aggregator: maps per model version, version cap and retirement, warm start, gate, state precedence."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from recalibrators import Calibrator, CalibratorConfig
from recalibrators.calibration_map import CalibrationMap
from recalibrators.serving.keys import MapField
from streams.dev.synthetic import SBend, make_stream
from streams.pipeline.aggregator import Aggregator, encode_partial, with_held_back
from streams.pipeline.config import ModelConfig
from streams.pipeline.map_metrics import map_metrics

T0 = 1_790_000_000_000
HOUR = 3_600_000
CONFIG = CalibratorConfig(half_life_ms=1e12, holdout_half_life_ms=1e12)


def calibrator(n: int, bias: float = 1.0, seed: int = 0, t0: int = T0, holdout: bool = True) -> Calibrator:
    s, _, ts, p = make_stream(np.random.default_rng(seed), n, SBend(), t0_ms=t0, rate_per_s=100.0)
    y = (np.random.default_rng(seed + 1000).random(n) < np.minimum(p * bias, 1)).astype(np.int8)
    cal = Calibrator(CONFIG)
    cal.learn_batch(s, y, ts_ms=ts, holdout=(np.arange(n) % 10 == 0) if holdout else None)
    return cal


def add(agg: Aggregator, model: str, version: str, segment: str, cal: Calibrator, partition: int = 0):
    key = str(MapField(model, version, segment))
    return agg.add(key, encode_partial(partition, model, version, segment, cal))


def aggregator(**config) -> Aggregator:
    return Aggregator(lambda name: ModelConfig(**({"min_samples": 1} | config)), with_metrics=False)


def by_field(maps: list[CalibrationMap]) -> dict[str, CalibrationMap]:
    return {str(MapField.of(m)): m for m in maps}


def test_every_live_version_gets_its_own_maps_and_a_canary_takes_nothing_over():
    agg = aggregator()
    add(agg, "ctr", "v2", "*", calibrator(20_000, bias=1.0))
    add(
        agg, "ctr", "v3", "*", calibrator(2_000, bias=2.0, seed=5, t0=T0 + 300_000)
    )  # a 10% canary, miscalibrated otherwise
    maps = by_field(agg.take_dirty(T0))
    assert set(maps) == {"ctr:v2:*", "ctr:v3:*"}
    assert maps["ctr:v2:*"].map_version == 20_000 and maps["ctr:v3:*"].map_version == 2_000
    assert maps["ctr:v2:*"].prior is None  # a version that started later is never an older one's prior
    add(agg, "ctr", "v2", "*", calibrator(30_000, bias=1.0))  # v2 keeps learning after the canary arrived
    assert [m.model_version for m in agg.take_dirty(T0)] == ["v2"]


def test_versions_beyond_the_cap_are_dropped_and_never_evict_a_live_one():
    agg = aggregator(max_versions=2)
    assert add(agg, "ctr", "v1", "*", calibrator(5_000)) is not None
    assert add(agg, "ctr", "v2", "*", calibrator(5_000, seed=1)) is not None
    for i in range(5):
        assert add(agg, "ctr", f"junk{i}", "*", calibrator(50, seed=i)) is None
    assert agg.dropped_partials == 5
    assert set(by_field(agg.take_dirty(T0))) == {"ctr:v1:*", "ctr:v2:*"}
    assert add(agg, "ctr", "v1", "*", calibrator(6_000)) is not None  # the live ones keep their maps
    assert add(agg, "cvr", "v9", "*", calibrator(500)) is not None  # the cap is per model


def test_versions_retire_by_event_time_idleness_not_by_a_new_version():
    agg = aggregator(version_idle_ms=10 * HOUR)
    add(agg, "ctr", "v1", "*", calibrator(1_000, t0=T0))
    add(agg, "ctr", "v2", "*", calibrator(1_000, t0=T0 + HOUR))
    add(agg, "ctr", "v3", "*", calibrator(1_000, t0=T0 + 2 * HOUR))
    versions = agg.take_versions()["ctr"]
    assert {v: i.state for v, i in versions.items()} == {"v1": "live", "v2": "live", "v3": "live"}
    assert versions["v1"].examples == 1_000 and versions["v1"].first_event_ms <= versions["v1"].last_event_ms
    add(agg, "ctr", "v3", "*", calibrator(2_000, t0=T0 + 12 * HOUR))  # v1, v2: idle > 10 h of event time
    versions = agg.take_versions()["ctr"]
    assert {v: i.state for v, i in versions.items()} == {"v1": "retired", "v2": "retired", "v3": "live"}
    assert agg.take_versions() == {}  # nothing changed since
    add(agg, "ctr", "v2", "*", calibrator(1_500, t0=T0 + 13 * HOUR))  # a rollback to v2: live again
    assert agg.take_versions()["ctr"]["v2"].state == "live"


def test_warm_start_from_the_most_recent_version_or_the_configured_one():
    agg = aggregator()
    add(agg, "ctr", "v1", "*", calibrator(20_000, bias=1.5, t0=T0))
    add(agg, "ctr", "v2", "*", calibrator(20_000, bias=0.7, t0=T0 + HOUR))
    _, v2 = sorted(agg.take_dirty(T0), key=lambda m: m.model_version)
    add(agg, "ctr", "v3", "placement=feed", calibrator(300, t0=T0 + 2 * HOUR))
    prior = agg.states["ctr:v3:placement=feed"].prior  # v2's model-wide map, via the fallback chain
    assert (prior.model_version, prior.map_version) == ("v2", v2.map_version)
    pinned = Aggregator(lambda name: ModelConfig(min_samples=1, warm_start_from="v1"), with_metrics=False)
    add(pinned, "ctr", "v1", "*", calibrator(20_000, bias=1.5, t0=T0))
    add(pinned, "ctr", "v2", "*", calibrator(20_000, bias=0.7, t0=T0 + HOUR))
    pinned.take_dirty(T0)
    add(pinned, "ctr", "v3", "*", calibrator(300, t0=T0 + 2 * HOUR))
    assert pinned.states["ctr:v3:*"].prior.model_version == "v1"
    reset = aggregator(on_new_version="reset")
    add(reset, "ctr", "v1", "*", calibrator(20_000))
    add(reset, "ctr", "v2", "*", calibrator(300, t0=T0 + HOUR))
    assert all(m.prior is None for m in reset.take_dirty(T0)) and reset.states["ctr:v2:*"].prior is None


def test_the_prior_is_chosen_once_and_survives_a_restart():
    """A restart reads the partials topic from its start: the stored prior is adopted, never re-chosen from
    the source version's newer state; keys without a stored prior choose theirs once the read is done."""
    agg = aggregator()
    add(agg, "ctr", "v1", "*", calibrator(20_000))
    agg.take_dirty(T0)
    assert agg.take_chosen_priors() == [("ctr:v1:*", None)]  # no older version to start from
    state = add(agg, "ctr", "v2", "*", calibrator(500, t0=T0 + HOUR))
    chosen = state.prior
    ((stored_key, stored_prior),) = agg.take_chosen_priors()
    assert stored_key == "ctr:v2:*" and stored_prior == chosen.to_json().decode()
    assert agg.take_chosen_priors() == []  # each choice is stored once
    restarted = aggregator()  # nothing in memory: what the topic holds, in its order
    add(restarted, "ctr", "v1", "*", calibrator(40_000, seed=3))
    key = "ctr:v2:*"
    restarted.add(key, encode_partial(0, "ctr", "v2", "*", calibrator(600, t0=T0 + HOUR)), choose_prior=False)
    assert not restarted.states[key].prior_chosen  # the stored prior may still follow
    restarted.adopt_prior(key, stored_prior)
    restarted.choose_priors([key])
    assert restarted.states[key].prior == chosen and key not in dict(restarted.take_chosen_priors())
    lost = aggregator()  # the first owner died before it stored the prior
    add(lost, "ctr", "v1", "*", calibrator(20_000))
    lost.add(key, encode_partial(0, "ctr", "v2", "*", calibrator(600, t0=T0 + HOUR)), choose_prior=False)
    lost.choose_priors([key])
    assert lost.states[key].prior.model_version == "v1" and key in dict(lost.take_chosen_priors())


def test_a_prior_record_before_the_partials_and_no_prior_are_kept():
    """Compaction keeps each key's latest record, so a prior may come before the partials it belongs to; a
    stored "none" (reset, or no source) is a choice too."""
    agg = aggregator()
    agg.adopt_prior("ctr:v2:*", None)
    assert "ctr:v2:*" not in agg.dirty  # nothing to build without partials
    add(agg, "ctr", "v1", "*", calibrator(20_000))
    add(agg, "ctr", "v2", "*", calibrator(500, t0=T0 + HOUR))
    assert agg.states["ctr:v2:*"].prior is None and agg.take_chosen_priors() == [("ctr:v1:*", None)]


def test_forgotten_keys_are_gone_and_republish_rebuilds_every_owned_key():
    agg = aggregator()
    add(agg, "ctr", "v1", "*", calibrator(1_000), partition=0)
    add(agg, "ctr", "v1", "placement=feed", calibrator(1_000), partition=1)
    assert len(agg.take_dirty(T0)) == 2
    agg.forget(["ctr:v1:placement=feed"])  # its partials partition moved to another worker
    assert set(agg.states) == {"ctr:v1:*"} and agg.retired_keys == ["ctr:v1:placement=feed"]
    agg.republish_all()  # Redis lost its maps
    (m,) = agg.take_dirty(T0)
    assert str(MapField.of(m)) == "ctr:v1:*" and m.map_version == 1_000


def test_max_change_is_relative():
    """`max_change` bounds |candidate - live| / live: a 30% move of tiny probabilities (absolute < 0.003)
    is refused, and passes when the bound is 0.5."""
    for bound, accepted in ((0.2, False), (0.5, True)):
        agg = aggregator(max_change=bound, gate_evidence_growth=100.0)
        add(agg, "ctr", "v1", "*", calibrator(50_000))
        agg.take_dirty(T0)
        live = agg.judged["ctr:v1:*"]  # the gate compares held-out fits: the one behind the live map
        low = live.x < 0.01
        moved = np.maximum.accumulate(np.where(low, live.y * 1.3, live.y))
        assert float(np.max(moved - live.y)) < 0.003
        agg.judged["ctr:v1:*"] = live.with_meta(y=moved)
        add(agg, "ctr", "v1", "*", calibrator(50_000))  # the same data: the candidate equals `live`
        assert (len(agg.take_dirty(T0)) == 1) is accepted
        assert accepted or "relative change" in agg.refused["ctr:v1:*"]


def test_a_held_key_is_visible_and_released_once_the_evidence_has_grown(caplog):
    agg = aggregator(max_change=0.05)
    add(agg, "ctr", "v1", "*", calibrator(10_000))
    agg.take_dirty(T0)
    with caplog.at_level(logging.INFO, logger="recal.aggregate"):
        add(agg, "ctr", "v1", "*", calibrator(15_000, bias=1.3, seed=4))
        assert agg.take_dirty(T0) == [] and "ctr:v1:*" in agg.refused
        add(agg, "ctr", "v1", "*", calibrator(20_000, bias=1.3, seed=4))
        assert len(agg.take_dirty(T0)) == 1 and agg.refused == {}
    messages = [r.getMessage() for r in caplog.records]
    assert any("gate holds ctr:v1:*" in msg and "relative change" in msg for msg in messages)
    assert any("gate releases ctr:v1:*" in msg and "evidence grew 2.00x" in msg for msg in messages)


def test_metrics_are_finite_or_absent():
    cal = calibrator(5_000)
    cal._holdout.sums[1] *= 1e-320  # held-back positives decayed to a subnormal: the ratio overflows
    metrics = map_metrics(cal.to_map(), cal)
    assert "ratio_raw" not in metrics or np.isfinite(metrics["ratio_raw"])
    assert all(isinstance(v, str) or np.isfinite(v) for v in metrics.values())
    m = cal.to_map(metrics=metrics)
    assert CalibrationMap.from_json(m.to_json()).metrics_dict == metrics


def test_schema_1_keys_are_refused():
    with pytest.raises(ValueError):
        MapField.parse("ctr:placement=feed")


def test_the_warm_start_gives_way_once_the_own_data_contradicts_it():
    agg = aggregator()
    add(agg, "ctr", "v1", "*", calibrator(50_000, bias=2.0))
    agg.take_dirty(T0)
    add(agg, "ctr", "v2", "*", calibrator(50_000, bias=2.0, t0=T0 + HOUR))  # the data agrees with v1's map
    (agreeing,) = agg.take_dirty(T0)
    assert agreeing.prior_dict["model_version"] == "v1"  # the prior shapes the map, named in it
    add(agg, "ctr", "v2", "*", calibrator(30_000, bias=0.7, t0=T0 + HOUR))
    (rich,) = agg.take_dirty(T0)
    assert rich.prior is None and agg.states["ctr:v2:*"].prior is not None  # own fit serves; choice kept


def test_the_gate_judges_the_held_out_fit_and_the_published_map_uses_the_held_back_examples_too():
    """The published map is fitted on every example (reference: one calibrator fed them all, none held
    back); the gate's candidate and the map it compares the next one with are fitted without the held-back ones."""
    s, _, ts, p = make_stream(np.random.default_rng(3), 30_000, SBend(), t0_ms=T0, rate_per_s=100.0)
    y = (np.random.default_rng(4).random(s.size) < p).astype(np.int8)
    held, every = Calibrator(CONFIG), Calibrator(CONFIG)
    held.learn_batch(s, y, ts_ms=ts, holdout=np.arange(s.size) % 10 == 0)
    every.learn_batch(s, y, ts_ms=ts)
    full = with_held_back(held)
    np.testing.assert_allclose(full.histogram.sums[:3], every.histogram.sums[:3], rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(full.histogram.mean_logit(), every.histogram.mean_logit(), atol=2e-3)
    assert full.n_seen == held.n_seen and full.holdout.sums.tolist() == held.holdout.sums.tolist()
    agg = aggregator()
    add(agg, "ctr", "v1", "*", held)
    (published,) = agg.take_dirty(T0)
    grid = np.linspace(0.001, 0.2, 200)
    np.testing.assert_allclose(published.apply(grid), every.to_map().apply(grid), rtol=1e-3)
    np.testing.assert_array_equal(agg.judged["ctr:v1:*"].y, held.to_map().y)


def test_a_retired_version_leaves_its_maps_and_drops_its_partials():
    agg = aggregator(version_idle_ms=HOUR, shrink_to_parent=True)
    for segment in ("*", "placement=feed"):
        add(agg, "ctr", "v1", segment, calibrator(2_000, t0=T0))
    agg.take_dirty(T0)
    assert "ctr:v1:placement=feed" in agg.shrinkage._states
    add(agg, "ctr", "v2", "*", calibrator(1_000, t0=T0 + 3 * HOUR))  # v1: idle for over an hour of event time
    assert agg.take_versions()["ctr"]["v1"].state == "retired"
    assert sorted(agg.states) == ["ctr:v2:*"] and list(agg.dirty) == ["ctr:v2:*"]
    agg.take_dirty(T0)  # the refresh thread prunes its own side
    assert "ctr:v1:placement=feed" not in agg.shrinkage._states and not agg.retired_keys
    assert {"ctr:v1:*", "ctr:v1:placement=feed", "ctr:v2:*"} <= set(agg.published)  # the maps stay
    # and their records are to be deleted from the partials topic, each partition's and the prior
    assert agg.take_retired() == [("ctr:v1:*", [0]), ("ctr:v1:placement=feed", [0])] and agg.take_retired() == []


def test_a_deleted_partial_read_back_removes_that_partition_and_an_emptied_key():
    agg = aggregator()
    add(agg, "ctr", "v1", "*", calibrator(1_000), partition=0)
    add(agg, "ctr", "v1", "*", calibrator(500, seed=1), partition=1)
    agg.remove("ctr:v1:*", 0)
    (m,) = agg.take_dirty(T0)
    assert m.map_version == 500
    agg.remove("ctr:v1:*", 1)
    agg.remove("ctr:v1:never-seen", 0)  # a tombstone of a key this aggregator never held
    assert agg.states == {} and not agg.dirty
