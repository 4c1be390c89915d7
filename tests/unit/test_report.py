import math

import numpy as np
import pytest

from recalibrators import metrics
from recalibrators.calibration_map import CalibrationMap
from streams.dev.report import (
    ALL_SEGMENTS,
    Metrics,
    evaluate,
    mean_abs_error,
    reliability_png,
    render_table,
    resolve_maps,
)
from tests.unit.test_calibration_map import make_map

SEG = "placement=search|platform=ios"


def _map(x: list[float], y: list[float], segment: dict[str, str]) -> CalibrationMap:
    return make_map(x=x, y=y, segment=segment, map_version=3)


def test_metrics_are_the_core_ones_against_p_true():
    pred, truth = np.array([0.2, 0.4, 0.1, 0.3]), np.array([0.1, 0.2, 0.1, 0.3])
    m = Metrics.of(pred, truth, bins=2)
    assert m.ece == metrics.ece(pred, truth, n_bins=2)
    assert m.ratio == pytest.approx(1.0 / 0.7)  # sum(pred) / sum(p_true)
    assert m.mae == pytest.approx((0.1 + 0.2 + 0.0 + 0.0) / 4)
    assert math.isnan(mean_abs_error(np.array([]), np.array([])))


def test_resolve_maps_walks_the_fallback_chain():
    own = _map([0, 1], [0, 1], {"platform": "ios", "placement": "search"})
    coarse = _map([0, 1], [0, 1], {"placement": "feed"})
    wide = _map([0, 1], [0, 1], {})
    keys = [("ctr", SEG), ("ctr", "placement=feed|platform=ios"), ("ctr", "placement=related|platform=web")]
    resolved = resolve_maps(
        [own, coarse, wide], [*keys, ("cvr", SEG)], lambda model: [["placement"]], lambda model: "v7"
    )
    assert resolved[("ctr", SEG)] is own
    assert resolved[("ctr", "placement=feed|platform=ios")] is coarse  # the segment_by level
    assert resolved[("ctr", "placement=related|platform=web")] is wide  # model-wide, the last step
    assert ("cvr", SEG) not in resolved  # no map of that model: raw scores
    only_wide = resolve_maps(
        [own, wide], [("ctr", "placement=feed|platform=ios")], lambda model: [], lambda model: "v7"
    )
    assert only_wide[("ctr", "placement=feed|platform=ios")] is wide


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
