"""The one plotting module: both reliability pictures are drawn and written as PNG files."""

import numpy as np
import pytest

from recalibrators.calibration_map import CalibrationMap
from streams.dashboard.plots import Curve, TruthPanel, map_png, reliability_axes, truth_png
from tests.unit.test_calibration_map import make_map

PNG = b"\x89PNG\r\n\x1a\n"


def _map(metrics: dict | None) -> CalibrationMap:
    return make_map(segment={"placement": "a|b"}, metrics=metrics)


def test_map_png_with_and_without_reliability_bins(tmp_path):
    rel = "0.01,0.008,0.009,400;0.05,0.04,0.041,300;0.2,0.15,0.16,50"
    metrics = {"rel": rel, "ece_raw": 0.02, "ece_cal": 0.003, "ratio_raw": 1.3, "ratio_cal": 1.01, "eval": "holdout"}
    assert map_png(_map(metrics), tmp_path / "m.png").read_bytes()[:8] == PNG
    assert map_png(_map(None), tmp_path / "empty.png").read_bytes()[:8] == PNG


def test_reliability_axes_share_limits_around_every_point():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    curves = [
        Curve("raw", "red", np.array([0.01, 0.2]), np.array([0.005, 0.1]), np.array([10.0, 1.0])),
        Curve("cal", "blue", np.array([0.005, 0.1]), np.array([0.005, 0.1])),
    ]
    reliability_axes(ax, curves, log=True, title="t")
    lo, hi = ax.get_xlim()
    assert ax.get_ylim() == (lo, hi)
    assert lo == pytest.approx(0.005 / 1.08) and hi == pytest.approx(0.2 * 1.08)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["perfect", "raw", "cal"]
    plt.close(fig)


def test_truth_png_needs_a_panel(tmp_path):
    scores = np.linspace(0.001, 0.3, 500)
    panel = TruthPanel("ctr *", scores, scores * 0.8, scores * 0.8, "*@v1")
    assert truth_png(tmp_path / "t.png", [panel, TruthPanel("raw only", scores, scores, None)]).read_bytes()[:8] == PNG
    with pytest.raises(ValueError):
        truth_png(tmp_path / "none.png", [])
