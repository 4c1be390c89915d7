"""The replay's summary table: per map, samples, ECE, calibration ratio, the change against the live map and
the publish status; and the normalised JSON that determinism checks compare."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from recalibrators.calibration_map import CalibrationMap
from recalibrators.calibrator import Calibrator
from recalibrators.serving.keys import MapField, map_field
from streams.pipeline.aggregator import Aggregator, MapState, merged


def _merged_calibrator(state: MapState) -> Calibrator:
    return merged(state.partials, state.prior)


def _eval_points(calibrator: Calibrator) -> np.ndarray:
    hist = calibrator.holdout if calibrator.holdout.total_weight > 0 else calibrator.histogram
    return hist.mean_score()[hist.weight > 0]


@dataclass
class SummaryRow:
    model: str
    model_version: str
    segment: str
    samples: float
    ece: float | None
    ratio: float | None
    max_delta: float | None  # vs the live map on the holdout points; None without a live map
    status: str  # published | refused_stale | held: <gate reason>


def summarize(
    maps: list[CalibrationMap], aggregator: Aggregator, live: dict[str, CalibrationMap | None], results: dict[str, str]
) -> list[SummaryRow]:
    rows = []
    built = {map_field(m): m for m in maps}
    for key in sorted(aggregator.states):
        model, model_version, segment = MapField.parse(key)
        calibrator = _merged_calibrator(aggregator.states[key])
        m = built.get(key)
        metrics = aggregator.metrics.get(key, {})
        delta = None
        live_map = live.get(key)
        if m is not None and live_map is not None:
            points = _eval_points(calibrator)
            if points.size:
                delta = float(np.max(np.abs(m.apply(points) - live_map.apply(points))))
        status = results.get(key) or ("held: " + aggregator.refused.get(key, "?"))
        ece = metrics.get("ece_cal")
        ratio = metrics.get("ratio_cal")
        rows.append(
            SummaryRow(
                model,
                model_version,
                segment,
                calibrator.n_effective,
                None if ece is None else float(ece),
                None if ratio is None else float(ratio),
                delta,
                status,
            )
        )
    return rows


def format_summary(rows: Iterable[SummaryRow]) -> str:
    def f(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    head = f"{'model':<8} {'version':<10} {'segment':<40} {'samples':>12} {'ECE':>8} {'ratio':>7} {'max|Δ| live':>12}"
    lines = [head + "  status"]
    for r in rows:
        lines.append(
            f"{r.model:<8} {r.model_version:<10} {r.segment:<40} {r.samples:>12.1f} {f(r.ece, '.4f'):>8} "
            f"{f(r.ratio, '.3f'):>7} {f(r.max_delta, '.4f'):>12}  {r.status}"
        )
    return "\n".join(lines)


def normalized_json(m: CalibrationMap) -> bytes:
    """The map's JSON with `updated_at` zeroed: what determinism is checked on."""
    return m.with_meta(updated_at=0).to_json()
