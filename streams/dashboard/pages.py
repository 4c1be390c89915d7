"""The calibration dashboard: server-rendered HTML with inline SVG, no front-end build.

Two pages, served by the worker (`/dashboard`, `/dashboard/map?model=..&model_version=..&segment=..`) and by
`recal dashboard` against any Redis:

- the index: every model, model version and segment with its map version, age, effective samples n, and ECE and
  calibration ratio of the raw scores vs the calibrated ones on the most recent window (the map's
  `metrics`, computed by the aggregator on the calibrator's holdout), worst first;
- a map: its reliability diagram (raw and calibrated vs observed, point area ~ weight, counts in a
  table) and its calibration ratio over the recent refreshes kept in the Redis history list.

Rendering is pure (`render_index`, `render_map`); `DashboardSource` reads Redis synchronously (the
worker calls it in a thread).
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass
from urllib.parse import urlencode

import redis

from recalibrators.calibration_map import CalibrationMap
from recalibrators.metrics import parse_reliability
from recalibrators.serving.keys import MapField
from recalibrators.serving.store import MapStore

__all__ = [
    "DashboardSource",
    "Row",
    "history_svg",
    "map_svg",
    "reliability_svg",
    "render_index",
    "render_map",
    "rows",
]

HISTORY = 20  # history entries read for the ratio chart (the publisher keeps its own `history` many)

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:20px 0 6px}
.sub{color:#666;margin-bottom:14px}
table{border-collapse:collapse}th,td{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}
th{background:#f4f4f4;position:sticky;top:0}td.l,th.l{text-align:left}
.bad{color:#b00020;font-weight:600}.warn{color:#a15c00}.ok{color:#1b7a33}
a{color:#0b57d0;text-decoration:none}a:hover{text-decoration:underline}
.charts{display:flex;flex-wrap:wrap;gap:24px}svg{background:#fff;border:1px solid #ddd}
.legend span{margin-right:14px}.dot{display:inline-block;width:10px;height:10px;border-radius:5px}
"""
RAW_COLOR, CAL_COLOR = "#e8710a", "#1a73e8"


@dataclass(frozen=True)
class Row:
    field: str
    model: str
    model_version: str
    segment: str
    map_version: int | None
    age_s: float | None
    n: float | None
    ece_raw: float | None
    ece_cal: float | None
    ratio_raw: float | None
    ratio_cal: float | None
    eval: str = ""
    error: str = ""

    @property
    def badness(self) -> float:
        """Sort key, larger = worse: |ln(calibrated ratio)|, then calibrated ECE; unknown first."""
        if self.error or self.ratio_cal is None:
            return math.inf
        return abs(math.log(self.ratio_cal)) if self.ratio_cal > 0 else math.inf


def _num(metrics: dict, name: str) -> float | None:
    v = metrics.get(name)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def rows(maps: dict[str, CalibrationMap | None], now_s: float | None = None) -> list[Row]:
    """One row per map field, grouped by model and model version, worst calibrated first in a group."""
    now_s = time.time() if now_s is None else now_s
    out = []
    for fld, m in maps.items():
        model, model_version, segment = MapField.parse(fld)
        if m is None:
            out.append(
                Row(fld, model, model_version, segment, None, None, None, None, None, None, None, error="unreadable")
            )
            continue
        metrics = m.metrics_dict or {}
        age = max(0.0, now_s - m.updated_at / 1000) if m.updated_at > 0 else None
        out.append(
            Row(
                fld,
                model,
                model_version,
                segment,
                m.map_version,
                age,
                m.n,
                _num(metrics, "ece_raw"),
                _num(metrics, "ece_cal"),
                _num(metrics, "ratio_raw"),
                _num(metrics, "ratio_cal"),
                str(metrics.get("eval", "")),
            )
        )
    out.sort(key=lambda r: (r.model, r.model_version, -r.badness, -(r.ece_cal or 0.0), r.field))
    return out


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _ratio_cell(v: float | None) -> str:
    if v is None:
        return '<td class="warn">-</td>'
    cls = "ok" if 0.9 <= v <= 1.1 else ("warn" if 0.8 <= v <= 1.25 else "bad")
    return f'<td class="{cls}">{v:.3f}</td>'


def _f(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def map_href(model: str, model_version: str, segment: str) -> str:
    return "/dashboard/map?" + urlencode({"model": model, "model_version": model_version, "segment": segment})


def _page(title: str, body: str, refresh: int | None = None) -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>"
    )


def render_index(table: list[Row], source: str = "", refresh: int | None = 10) -> str:
    head = (
        "<tr><th class=l>model</th><th class=l>model version</th><th class=l>segment</th><th>map version</th>"
        "<th>age</th><th>n</th>"
        "<th>ECE raw</th><th>ECE calibrated</th><th>ratio raw</th><th>ratio calibrated</th>"
        "<th class=l>eval</th></tr>"
    )
    body_rows = []
    for r in table:
        link = f'<a href="{html.escape(map_href(r.model, r.model_version, r.segment))}">{html.escape(r.segment)}</a>'
        who = f"<td class=l>{html.escape(r.model)}</td><td class=l>{html.escape(r.model_version)}</td>"
        if r.error:
            body_rows.append(
                f'<tr>{who}<td class=l>{link}</td><td colspan=8 class="bad l">{html.escape(r.error)}</td></tr>'
            )
            continue
        body_rows.append(
            f"<tr>{who}<td class=l>{link}</td><td>{r.map_version}</td>"
            f"<td>{_age(r.age_s)}</td><td>{_f(r.n, ',.0f')}</td><td>{_f(r.ece_raw, '.4f')}</td>"
            f"<td>{_f(r.ece_cal, '.4f')}</td>{_ratio_cell(r.ratio_raw)}{_ratio_cell(r.ratio_cal)}"
            f"<td class=l>{html.escape(r.eval)}</td></tr>"
        )
    empty = "" if table else "<p>No maps published yet.</p>"
    sub = (
        f"{len(table)} maps{' from ' + html.escape(source) if source else ''}. Metrics on the most recent "
        "window (holdout; <i>fit</i> = in-sample when the holdout is too thin), worst calibrated first. "
        "ratio = predicted / observed positives (&gt; 1 over-predicts)."
    )
    return _page(
        "recal calibration",
        f'<h1>recal calibration maps</h1><div class="sub">{sub}</div>{empty}'
        f'<table id="maps"><thead>{head}</thead><tbody>{"".join(body_rows)}</tbody></table>',
        refresh,
    )


def _ticks(hi: float, n: int = 5) -> list[float]:
    step = 10 ** math.floor(math.log10(hi / n)) if hi > 0 else 0.1
    for mult in (1, 2, 2.5, 5, 10):
        if hi / (step * mult) <= n:
            step *= mult
            break
    return [i * step for i in range(int(hi / step) + 1)]


def reliability_svg(rel: list[tuple[float, float, float, float]], width: int = 420, height: int = 420) -> str:
    """Predicted (x) vs observed (y) per group, raw and calibrated, on a common linear scale."""
    pad = 48
    if not rel:
        return (
            f'<svg id="reliability" width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no reliability data</text></svg>'
        )
    hi = max(max(r[0], r[1], r[2]) for r in rel) * 1.08 or 1.0
    hi = min(hi, 1.0)
    sx = lambda v: pad + (width - 2 * pad) * min(v, hi) / hi  # noqa: E731
    sy = lambda v: height - pad - (height - 2 * pad) * min(v, hi) / hi  # noqa: E731
    w_max = max(r[3] for r in rel) or 1.0
    parts = [
        f'<svg id="reliability" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'xmlns="http://www.w3.org/2000/svg" font-size="11">'
    ]
    for t in _ticks(hi):
        parts.append(
            f'<line x1="{sx(t):.1f}" y1="{sy(0):.1f}" x2="{sx(t):.1f}" y2="{sy(hi):.1f}" stroke="#eee"/>'
            f'<line x1="{sx(0):.1f}" y1="{sy(t):.1f}" x2="{sx(hi):.1f}" y2="{sy(t):.1f}" stroke="#eee"/>'
            f'<text x="{sx(t):.1f}" y="{height - pad + 14}" text-anchor="middle">{t:.3g}</text>'
            f'<text x="{pad - 4}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:.3g}</text>'
        )
    parts.append(f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(hi)}" y2="{sy(hi)}" stroke="#999" stroke-dasharray="4 3"/>')
    parts.append(
        f'<text x="{width / 2}" y="{height - 10}" text-anchor="middle">predicted</text>'
        f'<text x="14" y="{height / 2}" text-anchor="middle" transform="rotate(-90 14 {height / 2})">'
        "observed</text>"
    )
    for idx, color in ((0, RAW_COLOR), (1, CAL_COLOR)):
        pts = " ".join(f"{sx(r[idx]):.1f},{sy(r[2]):.1f}" for r in rel)
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.5" opacity="0.7"/>')
        name = "raw" if idx == 0 else "calibrated"
        for r in rel:
            radius = 2.5 + 6.0 * math.sqrt(r[3] / w_max)
            parts.append(
                f'<circle class="{name}" cx="{sx(r[idx]):.1f}" cy="{sy(r[2]):.1f}" r="{radius:.1f}" '
                f'fill="{color}" fill-opacity="0.75"><title>{name}: predicted {r[idx]:.4g}, observed '
                f"{r[2]:.4g}, weight {r[3]:.4g}</title></circle>"
            )
    parts.append("</svg>")
    return "".join(parts)


def history_svg(points: list[tuple[int, float | None, float | None]], width: int = 420, height: int = 220) -> str:
    """Calibration ratio (raw, calibrated) per refresh: points are (updated_at ms, ratio_raw, ratio_cal),
    oldest first. The y axis always includes the 0.9..1.1 band."""
    pad = 44
    values = [v for _, a, b in points for v in (a, b) if v is not None]
    svg = (
        f'<svg id="history" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'xmlns="http://www.w3.org/2000/svg" font-size="11">'
    )
    if not values:
        return svg + f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no history</text></svg>'
    lo, hi = min([*values, 0.9]) * 0.97, max([*values, 1.1]) * 1.03
    n = len(points)
    sx = lambda i: pad + (width - 2 * pad) * (i / (n - 1) if n > 1 else 0.5)  # noqa: E731
    sy = lambda v: height - pad - (height - 2 * pad) * (v - lo) / (hi - lo)  # noqa: E731
    parts = [
        svg,
        f'<rect x="{pad}" y="{sy(1.1):.1f}" width="{width - 2 * pad}" height="{sy(0.9) - sy(1.1):.1f}" '
        'fill="#e6f4ea"/>',
        f'<line x1="{pad}" y1="{sy(1):.1f}" x2="{width - pad}" y2="{sy(1):.1f}" stroke="#999" stroke-dasharray="4 3"/>',
    ]
    for t in (lo, 1.0, hi):
        parts.append(f'<text x="{pad - 4}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:.3g}</text>')
    parts.append(
        f'<text x="{width / 2}" y="{height - 10}" text-anchor="middle">refreshes (oldest → newest, {n})</text>'
    )
    for idx, color, name in ((1, RAW_COLOR, "raw"), (2, CAL_COLOR, "calibrated")):
        pts = [(sx(i), sy(p[idx])) for i, p in enumerate(points) if p[idx] is not None]
        if not pts:
            continue
        parts.append(
            f'<polyline points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in pts)}" fill="none" '
            f'stroke="{color}" stroke-width="2"/>'
        )
        parts += [
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"><title>{name}</title></circle>' for x, y in pts
        ]
    parts.append("</svg>")
    return "".join(parts)


def map_svg(m: CalibrationMap, width: int = 420, height: int = 300) -> str:
    """The map over its interior knots (log score axis) and, when the map carries one, its 90% band."""
    pad = 48
    inner = slice(1, -1) if m.x.size > 3 else slice(None)
    x, y = m.x[inner], m.y[inner]
    keep = x > 0
    x, y = x[keep], y[keep]
    svg = (
        f'<svg id="map" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'xmlns="http://www.w3.org/2000/svg" font-size="11">'
    )
    if x.size < 2:
        return svg + f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no knots</text></svg>'
    band = m.y_lo is not None and m.y_hi is not None
    top = float(max(y.max(), m.y_hi[inner][keep].max() if band else 0.0)) * 1.08 or 1.0
    lo_x, hi_x = math.log10(x[0]), math.log10(x[-1])
    sx = lambda v: pad + (width - 2 * pad) * (math.log10(v) - lo_x) / ((hi_x - lo_x) or 1.0)  # noqa: E731
    sy = lambda v: height - pad - (height - 2 * pad) * v / top  # noqa: E731
    parts = [svg]
    for t in _ticks(top):
        parts.append(f'<text x="{pad - 4}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:.3g}</text>')
    parts.append(
        f'<text x="{pad}" y="{height - pad + 14}">{x[0]:.3g}</text>'
        f'<text x="{width - pad}" y="{height - pad + 14}" text-anchor="end">{x[-1]:.3g}</text>'
        f'<text x="{width / 2}" y="{height - 10}" text-anchor="middle">raw score (log)</text>'
    )
    if band:
        lo, hi = m.y_lo[inner][keep], m.y_hi[inner][keep]
        edge = [(sx(a), sy(b)) for a, b in zip(x, hi, strict=True)] + [
            (sx(a), sy(b)) for a, b in zip(x[::-1], lo[::-1], strict=True)
        ]
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in edge)
        parts.append(f'<polygon id="band" points="{pts}" fill="{CAL_COLOR}" fill-opacity="0.2" stroke="none"/>')
    pts = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(x, y, strict=True))
    parts.append(f'<polyline points="{pts}" fill="none" stroke="{CAL_COLOR}" stroke-width="2"/></svg>')
    return "".join(parts)


def render_map(m: CalibrationMap, history: list[CalibrationMap], now_s: float | None = None) -> str:
    """One map: summary, reliability diagram with its counts, calibration ratio over the history."""
    now_s = time.time() if now_s is None else now_s
    metrics = m.metrics_dict or {}
    seg = "|".join(f"{k}={v}" for k, v in m.segment) or "*"
    rel = parse_reliability(metrics)
    points = []
    for h in sorted(history, key=lambda h: h.map_version):
        hm = h.metrics_dict or {}
        points.append((h.updated_at, _num(hm, "ratio_raw"), _num(hm, "ratio_cal")))
    summary = (
        f"map version {m.map_version} · model version {html.escape(m.model_version)}{_prior(m)} · "
        f"{html.escape(m.method)} · "
        f"age {_age(max(0.0, now_s - m.updated_at / 1000) if m.updated_at else None)} · n {m.n:,.0f} · "
        f"positives {m.positives:,.0f} · eval {html.escape(str(metrics.get('eval', '-')))} "
        f"(weight {_f(_num(metrics, 'eval_weight'), ',.0f')})"
    )
    if "drift_detections" in metrics:  # models with a drift_detector (streams.pipeline.drift)
        summary += f" · silent-drift detections {_f(_num(metrics, 'drift_detections'), ',.0f')}"
    if "matured_fraction" in metrics:  # label_delay = "corrected" (streams.pipeline.delayed)
        median_ms = _num(metrics, "delay_median_ms")
        summary += (
            f" · matured {_f(_num(metrics, 'matured_fraction'), '.1%')} · delay median "
            f"{_age(None if median_ms is None else median_ms / 1000)} "
            f"({html.escape(str(metrics.get('delay_method', 'no curve')))}, "
            f"{_f(_num(metrics, 'delay_events'), ',.0f')} conversions)"
        )
    stats = (
        f"<table><tr><th></th><th>ECE</th><th>ratio</th></tr>"
        f"<tr><td class=l>raw</td><td>{_f(_num(metrics, 'ece_raw'), '.4f')}</td>"
        f"{_ratio_cell(_num(metrics, 'ratio_raw'))}</tr>"
        f"<tr><td class=l>calibrated</td><td>{_f(_num(metrics, 'ece_cal'), '.4f')}</td>"
        f"{_ratio_cell(_num(metrics, 'ratio_cal'))}</tr></table>"
    )
    counts = "".join(
        f"<tr><td>{r[0]:.4g}</td><td>{r[1]:.4g}</td><td>{r[2]:.4g}</td><td>{r[3]:,.0f}</td></tr>" for r in rel
    )
    legend = (
        f'<div class="legend"><span><i class="dot" style="background:{RAW_COLOR}"></i> raw</span>'
        f'<span><i class="dot" style="background:{CAL_COLOR}"></i> calibrated</span></div>'
    )
    body = (
        f'<p><a href="/dashboard">← all maps</a></p><h1>{html.escape(m.model)} · '
        f"{html.escape(m.model_version)} · {html.escape(seg)}</h1>"
        f'<div class="sub">{summary}</div>{stats}{legend}<div class="charts"><div><h2>Reliability '
        f"(recent window)</h2>{reliability_svg(rel)}</div><div><h2>Calibration ratio over the last "
        f"{len(points)} refreshes</h2>{history_svg(points)}</div><div><h2>Map"
        f"{' and its 90% band' if m.y_lo is not None else ''}</h2>{map_svg(m)}</div></div>"
        "<h2>Reliability groups</h2><table id=groups><tr><th>predicted raw</th><th>predicted calibrated</th>"
        f"<th>observed</th><th>weight</th></tr>{counts}</table>"
    )
    return _page(f"recal {m.model} {m.model_version} {seg}", body)


def _prior(m: CalibrationMap) -> str:
    prior = m.prior_dict
    if not prior:
        return ""
    return f" (warm start from {html.escape(str(prior.get('model_version')))} map version {prior.get('map_version')})"


def render_missing(model: str, model_version: str, segment: str) -> str:
    what = " · ".join(html.escape(part) for part in (model, model_version, segment))
    return _page("recal: no map", f'<p><a href="/dashboard">← all maps</a></p><h1>No map for {what}</h1>')


class DashboardSource:
    """Reads maps and their history from Redis and renders the pages (blocking; use a thread)."""

    def __init__(self, client: redis.Redis, prefix: str = "recal", history: int = HISTORY) -> None:
        self.client = client
        self.store = MapStore(client, prefix=prefix)
        self.prefix = prefix
        self.history = history

    def index_html(self) -> str:
        return render_index(rows(self.store.list_maps()), source=f"prefix {self.prefix!r}")

    def map_html(self, model: str, model_version: str, segment: str) -> tuple[int, str]:
        try:
            field = MapField(model, model_version, segment)
            str(field)  # validates: non-empty model and model version
            m = self.store.get_map(field)
        except ValueError:
            m = None
        if m is None:
            return 404, render_missing(model, model_version, segment)
        return 200, render_map(m, self.store.history(field, self.history))
