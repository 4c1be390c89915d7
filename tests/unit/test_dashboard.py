"""Map metrics, drift alerting, Prometheus exposition and dashboard rendering, without any I/O."""

from __future__ import annotations

import logging
import re
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from recalibrators import Calibrator, CalibratorConfig
from recalibrators.calibration_map import CalibrationMap
from recalibrators.metrics import parse_reliability
from recalibrators.serving.keys import MapField, map_field
from streams.dashboard.charts import history_svg, reliability_svg
from streams.dashboard.pages import render_index, render_map, rows
from streams.pipeline.aggregator import Aggregator, encode_partial
from streams.pipeline.config import ModelConfig
from streams.pipeline.join_worker import Stats
from streams.pipeline.map_metrics import map_metrics
from streams.pipeline.metrics import MapTracker, Readiness, RecalCollector, exposition, registry
from streams.pipeline.publisher import PublishResult

T0 = 1_790_000_000_000


def calibrator(n: int, bias: float, seed: int = 0, holdout: float = 0.3) -> Calibrator:
    """Scores over-predict by `bias` (true p = score / bias)."""
    rng = np.random.default_rng(seed)
    s = np.clip(rng.beta(1.2, 40, n), 1e-4, 0.5)
    y = (rng.random(n) < s / bias).astype(np.float64)
    cal = Calibrator(CalibratorConfig())
    cal.learn_batch(s, y, ts_ms=T0 + np.arange(n), holdout=rng.random(n) < holdout)
    return cal


def aggregator_with(keys: dict[str, Calibrator], **config) -> Aggregator:
    agg = Aggregator(lambda name: ModelConfig(min_samples=1, **config))
    for key, cal in keys.items():
        model, model_version, segment = MapField.parse(key)
        agg.add(key, encode_partial(0, model, model_version, segment, cal))
    return agg


def test_map_metrics_measure_raw_and_calibrated_on_the_holdout():
    cal = calibrator(200_000, bias=2.0)
    m = cal.to_map()
    metrics = map_metrics(m, cal)
    assert metrics["eval"] == "holdout"
    assert metrics["ratio_raw"] == pytest.approx(2.0, rel=0.1)
    assert metrics["ratio_cal"] == pytest.approx(1.0, abs=0.05)
    assert metrics["ece_cal"] < metrics["ece_raw"] / 4
    rel = parse_reliability(metrics)
    assert 5 <= len(rel) <= 15
    assert sum(r[3] for r in rel) == pytest.approx(metrics["eval_weight"], rel=1e-3)
    assert all(r[1] <= r[0] for r in rel)  # calibration pulls over-predictions down
    published = m.with_meta(metrics=metrics)
    assert len(published.to_json()) - len(m.to_json()) < 800  # the reliability data keeps the map small
    assert CalibrationMap.from_json(published.to_json()).metrics_dict == published.metrics_dict


def test_map_metrics_fall_back_to_the_fitting_histogram_without_holdout():
    cal = calibrator(20_000, bias=1.0, holdout=0.0)
    metrics = map_metrics(cal.to_map(), cal)
    assert metrics["eval"] == "fit"
    assert metrics["ratio_raw"] == pytest.approx(1.0, abs=0.1)
    assert metrics["ece_raw"] < 0.01


def test_aggregator_attaches_metrics_and_alerts_on_drift_once_per_transition(caplog):
    agg = aggregator_with(
        {"ctr:v1:*": calibrator(100_000, 2.0), "ctr:v1:placement=feed": calibrator(100_000, 1.0)}, drift_min_weight=100
    )
    with caplog.at_level(logging.WARNING, logger="recal.drift"):
        maps = {map_field(m): m for m in agg.take_dirty(T0)}
        assert set(maps) == {"ctr:v1:*", "ctr:v1:placement=feed"}
        assert maps["ctr:v1:*"].metrics_dict["ratio_raw"] > 1.5
        assert agg.drift == {"ctr:v1:*": True, "ctr:v1:placement=feed": False}
        agg.add("ctr:v1:*", encode_partial(0, "ctr", "v1", "*", calibrator(100_000, 2.0, seed=1)))
        agg.take_dirty(T0 + 1000)  # still drifting: no second warning
    records = [r for r in caplog.records if r.name == "recal.drift"]
    assert len(records) == 1
    assert (records[0].model, records[0].model_version, records[0].segment) == ("ctr", "v1", "*")
    assert records[0].ratio > 1.5 and records[0].ece > 0.001

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="recal.drift"):
        agg.add("ctr:v1:*", encode_partial(0, "ctr", "v1", "*", calibrator(100_000, 1.0, seed=2)))
        agg.take_dirty(T0 + 2000)
    assert agg.drift["ctr:v1:*"] is False
    assert [r.alert for r in caplog.records if r.name == "recal.drift"] == [False]


def map_field_of(m: CalibrationMap) -> str:
    return f"{m.model}:{'|'.join(f'{k}={v}' for k, v in m.segment) or '*'}"


def test_rows_sort_worst_first_and_pages_render():
    agg = aggregator_with(
        {
            "ctr:v1:placement=search": calibrator(50_000, 1.0),
            "ctr:v1:*": calibrator(50_000, 1.0, seed=3),
            "cvr:v1:placement=<b>": calibrator(30_000, 1.5, seed=4),
        }
    )
    maps = {map_field(m): m for m in agg.take_dirty(T0)}
    bad = maps["ctr:v1:*"].with_meta(metrics={**maps["ctr:v1:*"].metrics_dict, "ratio_cal": 1.6})
    listed = {**maps, "ctr:v1:*": bad, "ctr:v1:broken": None}
    table = rows(listed, now_s=T0 / 1000 + 30)
    assert [r.field for r in table][:2] == ["ctr:v1:broken", "ctr:v1:*"]  # grouped by model, version
    assert [r.model for r in table][-1] == "cvr"
    page = render_index(table)
    assert page.count("<tr>") == 1 + len(listed)
    assert "placement=&lt;b&gt;" in page and "placement=<b>" not in page  # segment values are escaped
    assert "/dashboard/map?model=ctr&amp;model_version=v1&amp;segment=placement%3Dsearch" in page

    m = maps["ctr:v1:placement=search"]
    history = [
        m.with_meta(map_version=m.map_version - i, metrics={**m.metrics_dict, "ratio_cal": 1 + i / 100})
        for i in range(5)
    ]
    page = render_map(m, history, now_s=T0 / 1000 + 5)
    assert page.count("<svg") == 3  # reliability, history, map
    assert len(re.findall(r'<circle class="raw"', page)) == len(parse_reliability(m.metrics_dict))
    assert "<polyline" in history_svg([(T0, 1.2, 1.0), (T0 + 1, 1.1, None)])
    assert "no reliability data" in reliability_svg([])


def test_collector_exposes_prometheus_text():
    stats = Stats()
    stats.events_in.update({"imps": 10, "clicks": 2})
    stats.dead_letters["invalid_json"] = 1
    stats.join.update({"late_click": 3, "duplicate_click": 1})
    stats.batches, stats.batch_seconds = 4, 0.25
    pending = SimpleNamespace(join=SimpleNamespace(pending={"a": b"", "b": b""}), offsets={"imps": 5})
    join = SimpleNamespace(stats=stats, parts={0: pending}, consumer=None, topics=None)
    publisher = SimpleNamespace(published=7, refused=1, failures=2, pending={})
    agg = aggregator_with({"ctr:v1:*": calibrator(50_000, 2.0)}, drift_min_weight=10)
    m = agg.take_dirty(T0)[0]
    tracker = MapTracker()
    tracker.record({"ctr:v1:*": m}, [PublishResult("ctr:v1:*", "published", m.map_version)])
    text = exposition(registry(RecalCollector(join, publisher, agg, tracker, clock=lambda: T0 / 1000 + 12))).decode()
    for line in (
        'recal_events_in_total{topic="imps"} 10.0',
        'recal_dead_letters_total{reason="invalid_json"} 1.0',
        'recal_join_events_total{kind="late_click"} 3.0',
        "recal_batch_seconds_total 0.25",
        "recal_batches_total 4.0",
        'recal_join_pending{partition="0"} 2.0',
        'recal_join_pending_bytes{partition="0"} 386.0',
        "recal_maps_published_total 7.0",
        "recal_maps_refused_stale_total 1.0",
        "recal_redis_publish_errors_total 2.0",
        'recal_map_age_seconds{model="ctr",model_version="v1",segment="*"} 12.0',
        'recal_drift_alert{model="ctr",model_version="v1",segment="*"} 1.0',
    ):
        assert line in text, line
    assert re.search(
        r'recal_map_calibration_ratio\{model="ctr",model_version="v1",scores="raw",segment="\*"\} [12]\.', text
    )


def test_readiness_caches_and_reports_failures():
    import asyncio

    calls = Counter()
    now = [0.0]

    async def ok():
        calls["ok"] += 1

    async def down():
        calls["down"] += 1
        raise ConnectionError("refused")

    async def main():
        r = Readiness({"broker": ok, "redis": down}, ttl=2.0, clock=lambda: now[0])
        ready, body = await r.report(True)
        assert not ready and body["broker"] and not body["redis"] and body["errors"]["redis"] == "unreachable"
        assert "refused" not in str(body)  # exception text (hostnames, addresses) only goes to the log
        await r.report(True)
        assert calls == {"ok": 1, "down": 1}  # cached
        now[0] = 3.0
        ready, body = await r.report(False)
        assert calls == {"ok": 2, "down": 2} and not body["partitions_assigned"]

    asyncio.run(main())
