"""The dashboard's inline SVG charts: a reliability diagram, the calibration ratio over refreshes, and a
map's curve (with its band). Pure functions of the data, no I/O; `pages` embeds them."""

from __future__ import annotations

import math

from recalibrators.calibration_map import CalibrationMap

__all__ = ["CAL_COLOR", "RAW_COLOR", "history_svg", "map_svg", "reliability_svg"]

RAW_COLOR, CAL_COLOR = "#e8710a", "#1a73e8"


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
