import numpy as np
import pytest

from recalibrators.calibrator import Calibrator, CalibratorConfig
from recalibrators.drift import calibration_z
from streams.dev.synthetic import SBend, make_drift_stream
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
