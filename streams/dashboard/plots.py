"""Reliability diagrams as image files (matplotlib), the one place they are drawn.

Two sources of the same picture: a published map's own holdout bins (`map_png`, for `recal maps plot`) and
the simulator's true probabilities (`truth_png`, for the demo report). Both draw predicted against observed
per bin with `reliability_axes`, in the dashboard's colours (`charts`). matplotlib is imported on first use
(the production image has none) and draws off-screen (Agg): files only, no display on servers or in CI.
Depends on `recalibrators` (and `charts`) only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recalibrators.calibration_map import CalibrationMap
from recalibrators.metrics import parse_reliability, reliability
from recalibrators.segments import segment_key
from streams.dashboard.charts import CAL_COLOR, RAW_COLOR


@dataclass(frozen=True)
class Curve:
    """One series of a reliability diagram: per bin, mean prediction, observed rate and (optional) weight."""

    label: str
    color: str
    predicted: np.ndarray
    observed: np.ndarray
    weight: np.ndarray | None = None  # marker areas grow with it; None: equal markers


@dataclass(frozen=True)
class TruthPanel:
    """One segment's column of `truth_png`: raw scores, their true probabilities and the served scores."""

    title: str
    scores: np.ndarray
    p_true: np.ndarray
    served: np.ndarray | None  # the scores after the map serving uses; None without a map
    map_label: str = "map"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return Path(path)


def reliability_axes(ax, curves: Sequence[Curve], *, log: bool, title: str, ylabel: str = "observed") -> None:
    """The diagonal (perfect calibration) and each curve as a line with markers, on shared limits."""
    values = np.concatenate([np.concatenate([c.predicted, c.observed]) for c in curves])
    hi = min(1.0, float(values.max()) * 1.08)
    lo = max(1e-4, float(values.min()) / 1.08) if log else 0.0
    ax.plot([lo, hi], [lo, hi], ls="--", color="#999", lw=1, label="perfect")
    for c in curves:
        sizes = 12.0 if c.weight is None else 15 + 150 * c.weight / (c.weight.max() or 1.0)
        ax.plot(c.predicted, c.observed, color=c.color, lw=1, alpha=0.6)
        ax.scatter(c.predicted, c.observed, s=sizes, color=c.color, alpha=0.8, label=c.label)
    scale = "log" if log else "linear"
    ax.set(xscale=scale, yscale=scale, xlim=(lo, hi), ylim=(lo, hi), title=title, xlabel="predicted", ylabel=ylabel)
    ax.legend(loc="upper left", fontsize=8)


def _metric_label(name: str, ece: object, ratio: object) -> str:
    label = name + (f"  ECE {ece:.4f}" if isinstance(ece, float) else "")
    return label + (f"  ratio {ratio:.3f}" if isinstance(ratio, float) else "")


def map_png(m: CalibrationMap, path: str | Path) -> Path:
    """A map's reliability diagram (raw and calibrated vs observed, from its `rel` metric) beside the map."""
    plt = _pyplot()
    metrics = m.metrics_dict or {}
    rel = np.array(parse_reliability(metrics)).reshape(-1, 4)  # raw, calibrated, observed, weight
    fig, (ax, ax_map) = plt.subplots(1, 2, figsize=(11, 5))
    title = f"reliability, {metrics.get('eval', '?')} (weight {metrics.get('eval_weight', 0):,.0f})"
    if len(rel):
        curves = [
            Curve(
                _metric_label(name, metrics.get(f"ece_{key}"), metrics.get(f"ratio_{key}")),
                color,
                rel[:, i],
                rel[:, 2],
                rel[:, 3],
            )
            for i, (name, key, color) in enumerate((("raw", "raw", RAW_COLOR), ("calibrated", "cal", CAL_COLOR)))
        ]
        reliability_axes(ax, curves, log=False, title=title)
    else:
        ax.text(0.5, 0.5, "no reliability data in this map's metrics", ha="center", va="center")
        ax.set(title=title, xlabel="predicted", ylabel="observed")
    ax_map.plot(m.x, m.y, color=CAL_COLOR, lw=1.5, label=m.method)
    ax_map.plot([0, 1], [0, 1], ls="--", color="#999", lw=1)
    ax_map.set(xscale="log", yscale="log", xlabel="raw score", ylabel="calibrated", title="the map")
    ax_map.set_xlim(max(1e-4, float(m.x[1]) if m.x.size > 2 else 1e-4), 1)
    ax_map.set_ylim(1e-4, 1)
    fig.suptitle(
        f"{m.model} {m.model_version} · {segment_key(m.segment_dict)} · map version {m.map_version} · n {m.n:,.0f}"
    )
    return _save(fig, path)


def truth_png(path: str | Path, panels: Sequence[TruthPanel], bins: int = 15) -> Path:
    """One column per segment. Top: mean true probability per equal-mass bin of the prediction, raw and
    served. Bottom: the true curve p_true(score) against the served scores and the raw identity; log scales."""
    if not panels:
        raise ValueError("no segment with truth samples to plot")
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 8.0), squeeze=False)
    for col, panel in enumerate(panels):
        curves = [("raw", RAW_COLOR, panel.scores)]
        if panel.served is not None:
            curves.append((f"map {panel.map_label}", CAL_COLOR, panel.served))
        binned = [(label, color, reliability(pred, panel.p_true, n_bins=bins)) for label, color, pred in curves]
        top, bottom = axes[0][col], axes[1][col]
        reliability_axes(
            top,
            [Curve(label, color, r.mean_pred, r.observed) for label, color, r in binned],
            log=True,
            title=panel.title,
            ylabel="mean true probability",
        )
        order = np.argsort(panel.scores)
        bottom.plot(panel.scores[order], panel.p_true[order], color="black", lw=1.5, label="p_true(score)")
        bottom.plot(panel.scores[order], panel.scores[order], color=RAW_COLOR, lw=1, ls=":", label="raw")
        if panel.served is not None:
            bottom.plot(panel.scores[order], panel.served[order], color=CAL_COLOR, lw=1, label="map")
        bottom.set(xscale="log", yscale="log", xlabel="raw score", ylabel="probability")
        bottom.legend(fontsize=7)
    return _save(fig, path)
