"""Calibrator settings changed between two runs (#13 item 9) and restored calibrators (#13 item 10).

Before: a restored partial kept its old config, so raising n_bins raised inside the join, lowering it put
examples in the wrong bins, and a changed half_life / method / prior_strength made the merge raise in the
refresh timer; restored calibrators started clean, so a crash between snapshot and partials send lost labels.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from recalibrators.calibrator import Calibrator, CalibratorConfig
from streams.pipeline.aggregator import Aggregator, MapState, merged
from streams.pipeline.config import ModelConfig
from streams.pipeline.partials import PartialCalibrators, calibrator_config

T0 = 1_790_000_000_000


def data(n: int = 5_000, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.beta(1, 12, n)
    labels = (rng.random(n) < np.clip(scores * 1.3, 0, 1)).astype(np.int8)
    ts = T0 + np.arange(n) * 10
    return scores, labels, ts


def learned(config: CalibratorConfig, seed: int = 1) -> Calibrator:
    cal = Calibrator(config)
    scores, labels, ts = data(seed=seed)
    holdout = np.arange(scores.size) % 10 == 0
    cal.learn_batch(scores, labels, ts_ms=ts, holdout=holdout)
    return cal


def test_halving_the_bins_equals_learning_with_the_coarser_bins():
    """96 -> 48 bins nest exactly (each new bin is two old ones): re-binning must equal a fresh fit."""
    old = learned(CalibratorConfig(n_bins=96))
    target = CalibratorConfig(n_bins=48)
    moved, fresh = old.with_config(target), learned(target)
    np.testing.assert_allclose(moved.histogram.sums, fresh.histogram.sums, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(moved.holdout.sums, fresh.holdout.sums, rtol=1e-12, atol=1e-12)
    assert moved.n_seen == old.n_seen and moved.last_event_ms == old.last_event_ms


@pytest.mark.parametrize("n_bins", [37, 96, 200])
def test_any_rebinning_keeps_the_totals_exact(n_bins):
    old = learned(CalibratorConfig(n_bins=96))
    moved = old.with_config(CalibratorConfig(n_bins=n_bins, half_life_ms=3_600_000.0, method="platt"))
    for a, b in ((old.histogram, moved.histogram), (old.holdout, moved.holdout)):
        np.testing.assert_allclose(a.sums.sum(axis=1), b.sums.sum(axis=1), rtol=1e-12)
    moved.learn_batch([0.5], [1], ts_ms=T0 + 60_000)  # learns under the new bins: no shape error
    assert moved.to_map(model="m", model_version="v", segment={}, map_version=1).x.size >= 2


def model_config(settings: dict[str, ModelConfig]):
    return lambda name: settings[name]


def snapshot_of(cfg: ModelConfig) -> tuple[list[list[str]], list[bytes]]:
    partials = PartialCalibrators(model_config({"ctr": cfg}))
    scores, labels, ts = data(200)
    columns = {
        "model": np.zeros(200, np.int64),
        "version": np.zeros(200, np.int64),
        "segment": np.zeros(200, np.int64),
        "score": scores,
        "label": labels,
        "ts": ts,
        "holdout": np.zeros(200, bool),
    }
    partials.learn(columns, ["ctr"], ["v1"], [{"placement": "feed"}])
    partials.take_dirty()  # sent before the snapshot
    return partials.to_blobs()


def test_restored_calibrators_are_marked_changed():
    cfg = ModelConfig(segment_by=(("placement",),))
    keys, blobs = snapshot_of(cfg)
    restored = PartialCalibrators.from_blobs(model_config({"ctr": cfg}), keys, blobs)
    assert sorted(k for k, _ in restored.take_dirty()) == sorted(tuple(k) for k in keys)


@pytest.mark.parametrize(
    "change",
    [{"n_bins": 120}, {"n_bins": 40}, {"half_life_ms": 3_600_000}, {"method": "platt"}, {"prior_strength": 5.0}],
)
def test_a_settings_change_is_carried_over_on_restore(change, caplog):
    before = ModelConfig(segment_by=(("placement",),))
    after = ModelConfig(**{**before.__dict__, **change})
    keys, blobs = snapshot_of(before)
    with caplog.at_level(logging.WARNING, logger="recal.partials"):
        restored = PartialCalibrators.from_blobs(model_config({"ctr": after}), keys, blobs)
    assert next(iter(change)) in caplog.text
    target = calibrator_config(after)
    assert all(c.config == target for c in restored.calibrators.values())
    old_positives = {tuple(k): Calibrator.from_bytes(b).positives for k, b in zip(keys, blobs, strict=True)}
    assert {k: c.positives for k, c in restored.calibrators.items()} == pytest.approx(old_positives)
    # the join keeps learning into them (raised inside prepare_batch/learn_prepared before)
    columns = {
        "model": np.zeros(3, np.int64),
        "version": np.zeros(3, np.int64),
        "segment": np.zeros(3, np.int64),
        "score": np.array([0.1, 0.5, 0.9]),
        "label": np.array([0, 1, 1], np.int8),
        "ts": np.full(3, T0 + 10_000, np.int64),
        "holdout": np.zeros(3, bool),
    }
    restored.learn(columns, ["ctr"], ["v1"], [{"placement": "feed"}])


def test_partials_of_two_configs_merge_under_the_current_one():
    old, new = CalibratorConfig(n_bins=96), CalibratorConfig(n_bins=48, half_life_ms=3_600_000.0)
    a, b = learned(old, seed=1), learned(new, seed=2)
    total = merged({0: a.to_bytes(), 1: b.to_bytes()}, None, new)
    assert total.config == new and total.n_seen == a.n_seen + b.n_seen
    assert total.positives == pytest.approx(a.positives + b.positives)


def test_one_failing_key_does_not_stop_the_others(monkeypatch):
    cfg = ModelConfig(segment_by=(), min_samples=1)
    agg = Aggregator(lambda name: cfg)
    for key in ("bad:v1:*", "good:v1:*"):
        state = MapState()
        state.partials[0] = learned(calibrator_config(cfg)).to_bytes()
        agg.states[key] = state
        agg.dirty[key] = None
    real = agg.build

    def build(key, now_ms=None, state=None):
        if key == "bad:v1:*":
            raise ValueError("cannot merge calibrators with different configs")
        return real(key, now_ms, state)

    monkeypatch.setattr(agg, "build", build)
    maps = agg.take_dirty(T0)
    assert [m.model for m in maps] == ["good"] and agg.build_errors == 1
