"""The demo's end report: how close published calibration maps get to the TRUE probabilities.

Pure functions: callers pass the simulator's truth reservoirs ((model, segment_key) -> (raw scores, p_true))
and the maps read from Redis ((model, segment_key) -> CalibrationMap). Scoring against p_true instead of
0/1 labels removes label noise, so a few thousand samples per segment already tell good maps from bad.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recalibrators.calibration_map import CalibrationMap
from recalibrators.segments import MODEL_WIDE, segment_key

Truth = Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]]
Maps = Mapping[tuple[str, str], CalibrationMap]
ALL_SEGMENTS = "(all)"


def ece(pred: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-mass bins of `pred`: the count-weighted mean over bins of
    |mean(pred) - mean(truth)|. NaN when empty."""
    if pred.size == 0:
        return math.nan
    groups = np.array_split(np.argsort(pred, kind="stable"), min(bins, pred.size))
    return float(sum(abs(pred[g].mean() - truth[g].mean()) * g.size for g in groups) / pred.size)


def calibration_ratio(pred: np.ndarray, truth: np.ndarray) -> float:
    """sum(pred) / sum(truth): 1 is calibrated on average, >1 over-predicts."""
    total = float(truth.sum())
    return float(pred.sum()) / total if total > 0 else math.nan


def mean_abs_error(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.abs(pred - truth).mean()) if pred.size else math.nan


@dataclass(frozen=True)
class Metrics:
    ece: float
    ratio: float
    mae: float

    @classmethod
    def of(cls, pred: np.ndarray, truth: np.ndarray, bins: int = 10) -> Metrics:
        return cls(ece(pred, truth, bins), calibration_ratio(pred, truth), mean_abs_error(pred, truth))


@dataclass(frozen=True)
class Row:
    model: str
    segment: str  # a segment key, or ALL_SEGMENTS for the model's pooled row
    n: int
    map_label: str  # the map's own "<segment key>@v<version>", "mixed", or "none" (raw scores kept)
    before: Metrics
    after: Metrics


def find_map(maps: Maps, model: str, segment: str) -> tuple[str, CalibrationMap] | None:
    """The segment's own map, else the model-wide one (the serving fallback's last step), else None."""
    for key in (segment, MODEL_WIDE):
        if (found := maps.get((model, key))) is not None:
            return key, found
    return None


def calibrated(maps: Maps, model: str, segment: str, scores: np.ndarray) -> tuple[np.ndarray, str]:
    """The scores as serving would return them, and a label of the map used; raw scores without a map."""
    found = find_map(maps, model, segment)
    if found is None:
        return scores, "none"
    _, cmap = found
    return cmap.apply(scores), f"{segment_key(cmap.segment_dict)}@v{cmap.map_version}"


def evaluate(truth: Truth, maps: Maps, bins: int = 10) -> list[Row]:
    """One row per (model, segment) with samples, then a pooled row per model."""
    rows: list[Row] = []
    pooled: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray, str]]] = {}
    for (model, segment), (scores, p_true) in sorted(truth.items()):
        if scores.size == 0:
            continue
        after, label = calibrated(maps, model, segment, scores)
        rows.append(
            Row(
                model,
                segment,
                scores.size,
                label,
                Metrics.of(scores, p_true, bins),
                Metrics.of(after, p_true, bins),
            )
        )
        pooled.setdefault(model, []).append((scores, after, p_true, label))
    for model, parts in pooled.items():
        raw, after, p_true = (np.concatenate(col) for col in list(zip(*parts, strict=True))[:3])
        labels = {part[3] for part in parts}
        label = labels.pop() if len(labels) == 1 else "mixed"
        rows.append(
            Row(
                model,
                ALL_SEGMENTS,
                raw.size,
                label,
                Metrics.of(raw, p_true, bins),
                Metrics.of(after, p_true, bins),
            )
        )
    return rows


_HEADER = (
    "model",
    "segment",
    "n",
    "map",
    "ECE raw",
    "ECE cal",
    "ratio raw",
    "ratio cal",
    "MAE raw",
    "MAE cal",
)
_TEXT_COLUMNS = {0, 1, 3}  # left-aligned; numbers right-aligned


def render_table(rows: Sequence[Row]) -> str:
    """Plain-text table, columns aligned; ECE and MAE in probability units, ratio = sum(pred)/sum(p_true)."""
    cells = [_HEADER] + [
        (
            r.model,
            r.segment,
            str(r.n),
            r.map_label,
            f"{r.before.ece:.4f}",
            f"{r.after.ece:.4f}",
            f"{r.before.ratio:.3f}",
            f"{r.after.ratio:.3f}",
            f"{r.before.mae:.4f}",
            f"{r.after.mae:.4f}",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(_HEADER))]
    lines = [
        "  ".join(
            c.ljust(w) if i in _TEXT_COLUMNS else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _reliability(pred: np.ndarray, truth: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    groups = np.array_split(np.argsort(pred, kind="stable"), min(bins, pred.size))
    return np.array([pred[g].mean() for g in groups]), np.array([truth[g].mean() for g in groups])


def _largest_per_model(truth: Truth, per_model: int) -> list[tuple[str, str]]:
    chosen: dict[str, list[tuple[str, str]]] = {}
    for key in sorted(truth, key=lambda k: (-truth[k][0].size, k)):
        if truth[key][0].size and len(picked := chosen.setdefault(key[0], [])) < per_model:
            picked.append(key)
    return [key for keys in chosen.values() for key in keys]


def reliability_png(
    path: str | Path, truth: Truth, maps: Maps, keys: Sequence[tuple[str, str]] | None = None, bins: int = 15
) -> Path:
    """Reliability diagrams for a few segments (default: each model's 2 largest), raw vs calibrated vs truth.

    Top row: mean true probability per equal-mass bin of the prediction (the diagonal is perfect). Bottom
    row: the true curve p_true(score) against the published map and the raw identity, log scales.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers or in CI
    import matplotlib.pyplot as plt

    if keys is None:
        keys = _largest_per_model(truth, 2)
    keys = [k for k in keys if k in truth and truth[k][0].size]
    if not keys:
        raise ValueError("no segment with truth samples to plot")
    fig, axes = plt.subplots(2, len(keys), figsize=(4.2 * len(keys), 8.0), squeeze=False)
    for col, (model, segment) in enumerate(keys):
        scores, p_true = truth[(model, segment)]
        after, label = calibrated(maps, model, segment, scores)
        lo = max(1e-4, float(min(scores.min(), p_true.min())))
        hi = min(1.0, float(max(scores.max(), p_true.max(), after.max())))
        top, bottom = axes[0][col], axes[1][col]
        top.plot([lo, hi], [lo, hi], color="black", lw=1, ls="--", label="truth (perfect)")
        top.plot(*_reliability(scores, p_true, bins), "o-", color="tab:red", ms=3, label="raw")
        if label != "none":
            top.plot(*_reliability(after, p_true, bins), "o-", color="tab:blue", ms=3, label=f"map {label}")
        top.set(
            xscale="log",
            yscale="log",
            title=f"{model} {segment}",
            xlabel="predicted",
            ylabel="mean true probability",
        )
        top.legend(fontsize=7)
        order = np.argsort(scores)
        bottom.plot(scores[order], p_true[order], color="black", lw=1.5, label="p_true(score)")
        bottom.plot(scores[order], scores[order], color="tab:red", lw=1, ls=":", label="raw")
        if label != "none":
            bottom.plot(scores[order], after[order], color="tab:blue", lw=1, label="map")
        bottom.set(xscale="log", yscale="log", xlabel="raw score", ylabel="probability")
        bottom.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
