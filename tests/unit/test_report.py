import math

import numpy as np
import pytest

from recalibrators.calibration_map import CalibrationMap
from streams.dev.report import (
    ALL_SEGMENTS,
    Metrics,
    calibration_ratio,
    ece,
    evaluate,
    find_map,
    mean_abs_error,
    reliability_png,
    render_table,
)

SEG = "placement=search|platform=ios"


def _map(x: list[float], y: list[float], segment: dict[str, str], version: int = 3) -> CalibrationMap:
    return CalibrationMap(
        x=x,
        y=y,
        method="isotonic",
        n=100.0,
        positives=5.0,
        last_event_ms=0,
        model="ctr",
        segment=segment,
        map_version=version,
    )


def test_ece_equal_mass_bins_by_hand():
    pred = np.array([0.1, 0.2, 0.3, 0.4])
    truth = np.array([0.1, 0.1, 0.5, 0.5])
    # 2 bins of 2 by pred: |0.15 - 0.1| and |0.35 - 0.5|, equal weights.
    assert ece(pred, truth, bins=2) == pytest.approx((0.05 + 0.15) / 2)
    # 1 bin: |0.25 - 0.3|
    assert ece(pred, truth, bins=1) == pytest.approx(0.05)
    # one bin per sample: the mean absolute error
    assert ece(pred, truth, bins=4) == pytest.approx(mean_abs_error(pred, truth))


def test_ece_weights_unequal_bins_by_count():
    pred = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    truth = np.array([0.1, 0.2, 0.3, 0.0, 0.0])
    # array_split of 5 into 2: [0.1, 0.2, 0.3] (error 0) and [0.4, 0.5] (|0.45 - 0|), weights 3/5 and 2/5.
    assert ece(pred, truth, bins=2) == pytest.approx(0.45 * 2 / 5)


def test_ece_sorts_by_prediction_not_input_order():
    pred = np.array([0.4, 0.1, 0.3, 0.2])
    truth = np.array([0.5, 0.1, 0.5, 0.1])
    assert ece(pred, truth, bins=2) == pytest.approx(0.1)


def test_ratio_and_mae_by_hand():
    pred, truth = np.array([0.2, 0.4]), np.array([0.1, 0.2])
    assert calibration_ratio(pred, truth) == pytest.approx(2.0)
    assert mean_abs_error(pred, truth) == pytest.approx(0.15)
    assert math.isnan(calibration_ratio(pred, np.zeros(2)))
    assert math.isnan(ece(np.array([]), np.array([])))


def test_find_map_prefers_segment_then_model_wide():
    own, wide = _map([0, 1], [0, 1], {"platform": "ios", "placement": "search"}), _map([0, 1], [0, 1], {})
    maps = {("ctr", SEG): own, ("ctr", "*"): wide}
    assert find_map(maps, "ctr", SEG) == (SEG, own)
    assert find_map(maps, "ctr", "placement=feed|platform=ios") == ("*", wide)
    assert find_map(maps, "cvr", SEG) is None


def test_evaluate_before_after_and_pooled_rows():
    scores = np.array([0.1, 0.2, 0.3, 0.4])
    p_true = scores / 2  # raw over-predicts 2x; the map y = x/2 is exact
    other = "placement=feed|platform=ios"
    truth = {("ctr", SEG): (scores, p_true), ("ctr", other): (scores, p_true), ("cvr", SEG): (scores, p_true)}
    maps = {("ctr", SEG): _map([0.0, 1.0], [0.0, 0.5], {"platform": "ios", "placement": "search"})}
    rows = {(r.model, r.segment): r for r in evaluate(truth, maps, bins=2)}

    fixed = rows[("ctr", SEG)]
    assert fixed.n == 4 and fixed.map_label == f"{SEG}@v3"
    assert fixed.before == Metrics(pytest.approx(0.125), pytest.approx(2.0), pytest.approx(0.125))
    assert fixed.after == Metrics(0.0, pytest.approx(1.0), 0.0)

    unmapped = rows[("ctr", other)]
    assert unmapped.map_label == "none" and unmapped.after == unmapped.before

    pooled = rows[("ctr", ALL_SEGMENTS)]
    assert pooled.n == 8 and pooled.map_label == "mixed"
    assert pooled.before.ratio == pytest.approx(2.0)
    assert pooled.after.ratio == pytest.approx(1.5)  # (sum/2 + sum) / sum
    assert rows[("cvr", ALL_SEGMENTS)].map_label == "none"


def test_render_table_aligns_columns():
    scores = np.array([0.1, 0.3])
    text = render_table(evaluate({("ctr", SEG): (scores, scores)}, {}))
    lines = text.splitlines()
    assert lines[0].split() == [
        "model",
        "segment",
        "n",
        "map",
        "ECE",
        "raw",
        "ECE",
        "cal",
        "ratio",
        "raw",
        "ratio",
        "cal",
        "MAE",
        "raw",
        "MAE",
        "cal",
    ]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split()[:4] == ["ctr", SEG, "2", "none"]
    assert "1.000" in lines[2] and "0.0000" in lines[2]
    assert len({len(line) for line in lines[:2]}) == 1


def test_reliability_png_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.001, 0.2, 2000)
    truth = {("ctr", SEG): (scores, scores * 0.7), ("ctr", "*"): (scores, scores)}
    maps = {("ctr", SEG): _map([0.0, 1.0], [0.0, 0.7], {"platform": "ios", "placement": "search"})}
    path = reliability_png(tmp_path / "rel.png", truth, maps)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        reliability_png(tmp_path / "none.png", truth, maps, keys=[("cvr", SEG)])
