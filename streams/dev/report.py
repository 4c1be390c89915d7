"""The demo's end report: how close published calibration maps get to the TRUE probabilities.

Pure functions: callers pass the simulator's truth samples ((model, segment_key) -> (raw scores, p_true)) and
the published maps; `resolve_maps` picks, per truth key, the map serving would use (the segment fallback chain
of `recalibrators.segments`). Scoring against p_true instead of 0/1 labels removes label noise, so a few
thousand samples per segment already tell good maps from bad. ECE and calibration ratio are
`recalibrators.metrics`' (p_true in place of the labels).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recalibrators import metrics
from recalibrators.calibration_map import CalibrationMap
from recalibrators.segments import fallback_chain, parse_segment_key, segment_key
from streams.dashboard.plots import TruthPanel, truth_png
from streams.dev.simulator.truth import TruthSamples

Maps = Mapping[tuple[str, str], CalibrationMap]  # (model, segment_key) -> the map serving uses for it
ALL_SEGMENTS = "(all)"


def mean_abs_error(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.abs(pred - truth).mean()) if pred.size else math.nan


@dataclass(frozen=True)
class Metrics:
    ece: float
    ratio: float  # sum(pred) / sum(p_true): 1 is calibrated on average, > 1 over-predicts
    mae: float

    @classmethod
    def of(cls, pred: np.ndarray, truth: np.ndarray, bins: int = 10) -> Metrics:
        return cls(
            metrics.ece(pred, truth, n_bins=bins),
            metrics.calibration_ratio(pred, truth),
            mean_abs_error(pred, truth),
        )


@dataclass(frozen=True)
class SegmentScore:
    """One report row: a (model, segment)'s samples scored before and after its map."""

    model: str
    segment: str  # a segment key, or ALL_SEGMENTS for the model's pooled row
    n: int
    map_label: str  # the map's own "<segment key>@v<version>", "mixed", or "none" (raw scores kept)
    before: Metrics
    after: Metrics

    @classmethod
    def of(
        cls,
        model: str,
        segment: str,
        map_label: str,
        raw: np.ndarray,
        served: np.ndarray,
        p_true: np.ndarray,
        bins: int,
    ) -> SegmentScore:
        return cls(model, segment, raw.size, map_label, Metrics.of(raw, p_true, bins), Metrics.of(served, p_true, bins))


def resolve_maps(
    published: Iterable[CalibrationMap],
    keys: Iterable[tuple[str, str]],
    segment_by: Callable[[str], Sequence[Sequence[str]]],
    model_version: Callable[[str], str],
) -> dict[tuple[str, str], CalibrationMap]:
    """Per (model, segment key), the map a ranker would use for scores of `model_version(model)`: the first
    published level of the segment's fallback chain (the segment itself, then the model's `segment_by`
    levels, then model-wide) within that model version."""
    by_key = {(m.model, segment_key(m.segment_dict)): m for m in published if m.model_version == model_version(m.model)}
    resolved = {}
    for model, key in keys:
        segment = parse_segment_key(key)
        for level in fallback_chain(segment, [list(segment), *segment_by(model)]):
            if (found := by_key.get((model, level))) is not None:
                resolved[(model, key)] = found
                break
    return resolved


def calibrated(maps: Maps, model: str, segment: str, scores: np.ndarray) -> tuple[np.ndarray, str]:
    """The scores as serving would return them, and a label of the map used; raw scores without a map."""
    cmap = maps.get((model, segment))
    if cmap is None:
        return scores, "none"
    return cmap.apply(scores), f"{segment_key(cmap.segment_dict)}@v{cmap.map_version}"


def evaluate(truth: TruthSamples, maps: Maps, bins: int = 10) -> list[SegmentScore]:
    """One row per (model, segment) with samples, then a pooled row per model."""
    rows: list[SegmentScore] = []
    pooled: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray, str]]] = {}
    for (model, segment), (scores, p_true) in sorted(truth.items()):
        if scores.size == 0:
            continue
        after, label = calibrated(maps, model, segment, scores)
        rows.append(SegmentScore.of(model, segment, label, scores, after, p_true, bins))
        pooled.setdefault(model, []).append((scores, after, p_true, label))
    for model, parts in pooled.items():
        raw, after, p_true = (np.concatenate(col) for col in list(zip(*parts, strict=True))[:3])
        labels = {part[3] for part in parts}
        label = labels.pop() if len(labels) == 1 else "mixed"
        rows.append(SegmentScore.of(model, ALL_SEGMENTS, label, raw, after, p_true, bins))
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


def render_table(rows: Sequence[SegmentScore]) -> str:
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


def _largest_per_model(truth: TruthSamples, per_model: int) -> list[tuple[str, str]]:
    chosen: dict[str, list[tuple[str, str]]] = {}
    for key in sorted(truth, key=lambda k: (-truth[k][0].size, k)):
        if truth[key][0].size and len(picked := chosen.setdefault(key[0], [])) < per_model:
            picked.append(key)
    return [key for keys in chosen.values() for key in keys]


def reliability_png(
    path: str | Path,
    truth: TruthSamples,
    maps: Maps,
    keys: Sequence[tuple[str, str]] | None = None,
    bins: int = 15,
) -> Path:
    """Reliability diagrams for a few segments (default: each model's 2 largest), raw vs served vs truth."""
    if keys is None:
        keys = _largest_per_model(truth, 2)
    panels = []
    for model, segment in (k for k in keys if k in truth and truth[k][0].size):
        scores, p_true = truth[(model, segment)]
        served, label = calibrated(maps, model, segment, scores)
        panels.append(TruthPanel(f"{model} {segment}", scores, p_true, None if label == "none" else served, label))
    return truth_png(path, panels, bins)
