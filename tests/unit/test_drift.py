import numpy as np
import pytest

from recalibrators.calibrator import Calibrator, CalibratorConfig
from recalibrators.drift import calibration_z
from streams.dev.synthetic import SBend, make_drift_stream, sample_scores
from streams.pipeline.drift import KINDS, DriftMonitor

HL = 30 * 60_000


def test_calibration_z_hand_computed():
    cal = Calibrator().to_map()  # identity
    # q = 0.2 on 10 examples: E = 2, V = 1.6; 5 positives -> z = 3 / sqrt(1.6)
    z = calibration_z(cal, np.full(10, 0.2), np.r_[np.ones(5), np.zeros(5)])
    assert z == pytest.approx(3 / np.sqrt(1.6))
    w = np.r_[np.full(5, 2.0), np.ones(5)]  # weighted: E = 3, V = 2.4, P = 10
    assert calibration_z(cal, np.full(10, 0.2), np.r_[np.ones(5), np.zeros(5)], w) == pytest.approx(7 / np.sqrt(2.4))
    assert calibration_z(cal, np.array([]), np.array([])) == 0.0


def _prequential(kind: str, seed: int, after: SBend, hours: float, switch_hl: float) -> tuple[list[int], list[float]]:
    """Refresh indices with a detection and the z stream of a key fed 20 labels/s, one refresh a minute."""
    n = int(hours * 3600 * 20)
    s, y, ts, _ = make_drift_stream(np.random.default_rng(seed), n, SBend(), after, int(switch_hl * HL), rate_per_s=20)
    cal = Calibrator(CalibratorConfig(half_life_ms=HL))
    monitor = DriftMonitor(kind)
    edges = np.searchsorted(ts, np.arange(60_000, int(hours * 3600_000) + 1, 60_000))
    fired, zs, lo, current = [], [], 0, None
    for i, hi in enumerate(edges.tolist()):
        if current is not None and hi > lo:
            zs.append(calibration_z(current, s[lo:hi], y[lo:hi]))
            if monitor.update("k", zs[-1]):
                fired.append(i)
                cal.forget(monitor.forget_half_lives)
        cal.learn_batch(s[lo:hi], y[lo:hi], ts_ms=ts[lo:hi])
        current, lo = cal.to_map(), hi
    assert monitor.detections["k"] == len(fired)
    return fired, zs


@pytest.mark.parametrize("kind", KINDS)
def test_detector_quiet_on_a_stationary_stream(kind):
    fired, zs = _prequential(kind, 11, SBend(), hours=5.0, switch_hl=100.0)  # 10 half-lives
    assert fired == []
    assert abs(np.mean(zs[60:])) < 0.3 and 0.7 < np.std(zs[60:]) < 1.3  # z is ~N(0, 1) once the map has settled


@pytest.mark.parametrize(("kind", "within"), [("page_hinkley", 8), ("adwin", 30)])
def test_detector_fires_soon_after_a_step(kind, within):
    """A +80% level step: Page-Hinkley within ~0.25 half-life (8 refreshes), ADWIN within one (30)."""
    after = SBend(b=SBend().b + 0.6, c=SBend().c - 0.3)
    fired, _ = _prequential(kind, 12, after, hours=3.0, switch_hl=4.0)  # drift at refresh 120
    assert fired and 120 <= fired[0] <= 120 + within


def test_monitor_validates():
    with pytest.raises(ValueError):
        DriftMonitor("cusum")
    with pytest.raises(ValueError):
        DriftMonitor(forget_half_lives=0)


def _aggregated(detector: str, after: SBend, switch_hl: float, hours: float):
    """A key fed by one partition whose cumulative partial is re-sent every minute, as the worker does."""
    from streams.pipeline.aggregator import Aggregator, encode_partial
    from streams.pipeline.config import ModelConfig

    cfg = ModelConfig(half_life_ms=HL, min_samples=1, drift_detector=detector)
    agg = Aggregator(lambda name: cfg)
    n = int(hours * 3600 * 20)
    s, y, ts, _ = make_drift_stream(np.random.default_rng(21), n, SBend(), after, int(switch_hl * HL), rate_per_s=20)
    partial = Calibrator(CalibratorConfig(half_life_ms=HL))
    lo, maps = 0, []
    for end in range(60_000, int(hours * 3600_000) + 1, 60_000):
        hi = int(np.searchsorted(ts, end))
        partial.learn_batch(s[lo:hi], y[lo:hi], ts_ms=ts[lo:hi])
        agg.add("ctr:v1:*", encode_partial(0, "ctr", "v1", "*", partial))
        maps += agg.take_dirty(now_ms=end)
        lo = hi
    return agg, maps


def test_worker_path_forgets_a_silent_drift_on_cumulative_partials():
    """Forgetting at merge time on re-sent cumulative partials gives the map of a calibrator that forgot
    before learning the refresh whose labels set the detector off, and tracks the new truth faster."""
    after = SBend(b=SBend().b + 0.6, c=SBend().c - 0.3)
    ev = sample_scores(np.random.default_rng(3), 50_000)
    errors = {}
    for detector in ("", "page_hinkley"):
        agg, maps = _aggregated(detector, after, switch_hl=4.0, hours=2.5)  # drift at refresh 120 of 150
        errors[detector] = float(np.abs(maps[-1].apply(ev) - after.p_true(ev)).mean())
        assert agg.silent_drift.detections("ctr:v1:*") == (1 if detector else 0)
    assert maps[-1].metrics_dict["drift_detections"] == 1
    assert errors["page_hinkley"] < 0.5 * errors[""]  # one half-life after the drift (measured 0.41x)
    # The same stream through the core: forget at the refresh the worker path detected at, then learn it.
    fired = _prequential("page_hinkley", 21, after, hours=2.5, switch_hl=4.0)[0]
    assert len(fired) == 1
    n = int(2.5 * 3600 * 20)
    s, y, ts, _ = make_drift_stream(np.random.default_rng(21), n, SBend(), after, int(4 * HL), rate_per_s=20)
    core = Calibrator(CalibratorConfig(half_life_ms=HL))
    edges = np.searchsorted(ts, np.arange(60_000, int(2.5 * 3600_000) + 1, 60_000))
    lo = 0
    for i, hi in enumerate(edges.tolist()):
        if i == fired[0]:
            core.forget(4.0)
        core.learn_batch(s[lo:hi], y[lo:hi], ts_ms=ts[lo:hi])
        lo = hi
    np.testing.assert_allclose(maps[-1].apply(ev), core.to_map().apply(ev), rtol=1e-6, atol=1e-9)


def test_worker_path_stays_quiet_on_a_stationary_stream():
    agg, maps = _aggregated("page_hinkley", SBend(), switch_hl=100.0, hours=5.0)  # 10 half-lives
    assert agg.silent_drift.detections("ctr:v1:*") == 0 and maps[-1].metrics_dict["drift_detections"] == 0


def test_dashboard_shows_the_detections():
    from streams.dashboard.pages import render_map

    _, maps = _aggregated("page_hinkley", SBend(b=SBend().b + 0.6), switch_hl=4.0, hours=2.3)
    assert "silent-drift detections 1" in render_map(maps[-1], maps[-3:], now_s=maps[-1].updated_at / 1000)
