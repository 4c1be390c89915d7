"""Partial calibrators of all partitions -> one calibration map per (model, segment key).

The aggregator keeps, per map key, the latest partial state of every partition for the newest
model versions, merges them (exact: sums add), runs the quality gate against the map it published
last, and hands accepted maps to the publisher. Pure state and logic; `streams.pipeline.app` wires it to a
Faust agent, a table and a timer.

Map version (fencing): the number of labeled examples ever folded into the key, over all model
versions (`n_seen` of every partition's partial, plus those of retired model versions). It grows
with every label, late ones included, so a worker that lost its partitions, or a replay running
behind, holds fewer and cannot overwrite a newer map; the same events give the same version.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np

from recalibrators.calibration_map import CalibrationMap
from recalibrators.calibrator import Calibrator, CalibratorConfig
from recalibrators.gate import QualityGate
from recalibrators.histogram import Histogram
from recalibrators.segments import parse_segment_key
from streams.pipeline.config import ModelConfig
from streams.pipeline.drift import SilentDrift
from streams.pipeline.partials import calibrator_config
from streams.pipeline.records import pack, unpack
from streams.pipeline.shrinkage import Shrinkage

log = logging.getLogger("recal.aggregate")
drift_log = logging.getLogger("recal.drift")

MapKey = str  # "{model}:{segment_key}"
KEEP_VERSIONS = 2  # the newest model version, and the one before it for warm starts
RELIABILITY_BINS = 15  # equal-mass groups of the evaluation histogram's bins (ECE and the diagram)
MIN_EVAL_WEIGHT = 100.0  # below this much holdout weight, metrics are computed on the fitting histogram


def encode_partial(partition: int, model: str, version: str, segment: str, calibrator: Calibrator) -> bytes:
    return pack(
        {"partition": partition, "model": model, "version": version, "segment": segment}, [calibrator.to_bytes()]
    )


class MapState:
    """What the aggregator holds for one map key: partial states per model version and partition."""

    def __init__(self) -> None:
        self.versions: dict[str, dict[int, bytes]] = {}  # model version -> partition -> calibrator bytes
        self.first_seen: dict[str, int] = {}  # model version -> order of arrival, newest = highest
        self.retired: dict[str, int] = {}  # model versions dropped -> examples they had (for the version)

    def add(self, version: str, partition: int, calibrator: bytes) -> None:
        if version in self.retired:
            return  # late labels of a model version two releases back: not published any more
        if version not in self.versions:
            self.first_seen[version] = max(self.first_seen.values(), default=-1) + 1
            self.versions[version] = {}
            for stale in sorted(self.versions, key=self.first_seen.get)[:-KEEP_VERSIONS]:
                self.retired[stale] = _examples(self.versions.pop(stale))
                del self.first_seen[stale]
        self.versions[version][partition] = calibrator

    def examples(self, but: str, merged_examples: int) -> int:
        """Labeled examples ever folded into this key, the map's version; the model version `but` is
        counted by the caller, who merged its partials already."""
        others = sum(_examples(p) for v, p in self.versions.items() if v != but)
        return sum(self.retired.values()) + others + merged_examples

    def ordered_versions(self) -> list[str]:
        return sorted(self.versions, key=self.first_seen.get)

    def encode(self) -> bytes:
        entries, blobs = [], []
        for version in self.ordered_versions():
            for partition, blob in sorted(self.versions[version].items()):
                entries.append([version, partition])
                blobs.append(blob)
        return pack({"entries": entries, "retired": self.retired}, blobs)

    @classmethod
    def decode(cls, data: bytes) -> MapState:
        header, blobs = unpack(data)
        state = cls()
        state.retired = header.get("retired", {})
        for (version, partition), blob in zip(header["entries"], blobs, strict=True):
            state.add(version, partition, bytes(blob))
        return state


def _examples(partials: dict[int, bytes]) -> int:
    return sum(Calibrator.from_bytes(blob).n_seen for blob in partials.values())


def merged(
    partials: dict[int, bytes], prior: CalibrationMap | None, config: CalibratorConfig | None = None
) -> Calibrator:
    """Merge partition partials in partition order (deterministic float summation). Partials saved under
    other settings (a config change, a rolling restart) are carried over to `config` first."""
    calibrators = [Calibrator.from_bytes(partials[p]) for p in sorted(partials)]
    config = config or calibrators[0].config
    calibrators = [c if c.config == config else c.with_config(config) for c in calibrators]
    total = Calibrator(config, prior)
    for calibrator in calibrators:
        total = total.merge(calibrator)
    return total


def _group_ids(weight: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """(non-empty bin indices, their group 0..k-1): consecutive bins in about equal-weight groups."""
    idx = np.flatnonzero(weight > 1e-12 * max(float(weight.sum()), 1e-300))
    if idx.size == 0:
        return idx, idx
    cum = np.cumsum(weight[idx])
    group = np.minimum((cum - weight[idx] / 2) / cum[-1] * n_groups, n_groups - 1).astype(np.intp)
    # group is non-decreasing: renumber the groups that occur as 0..k-1
    return idx, np.concatenate(([0], np.cumsum(np.diff(group) > 0)))


def map_metrics(
    candidate: CalibrationMap, calibrator: Calibrator, n_groups: int = RELIABILITY_BINS
) -> dict[str, float | str]:
    """Calibration of the raw scores and of `candidate` on the calibrator's most recent data.

    Evaluated on the holdout histogram (held-back examples, short half-life) when it holds at least
    MIN_EVAL_WEIGHT, else on the fitting histogram (in-sample; `eval` says which). Each histogram bin
    is evaluated at its mean score; bins are grouped into `n_groups` equal-mass groups for the ECE and
    for the reliability diagram, stored compactly as `rel` = "raw,calibrated,observed,weight;..." (one
    group per `;`, 4 significant digits). ratio = sum(prediction) / sum(positives), > 1 over-predicts.
    """
    hist: Histogram = calibrator.holdout
    source = "holdout"
    if hist.total_weight < MIN_EVAL_WEIGHT:
        hist, source = calibrator.histogram, "fit"
    total_w, total_pos = hist.total_weight, hist.total_positives
    out: dict[str, float | str] = {
        "eval": source,
        "eval_weight": round(total_w, 3),
        "eval_positives": round(total_pos, 3),
    }
    idx, group = _group_ids(hist.weight, n_groups)
    if idx.size == 0:
        return out
    w, pos = hist.weight[idx], hist.positives[idx]
    raw = hist.sums[2][idx] / w  # per-bin mean score (WS / W)
    cal = candidate.apply(raw)
    gw = np.bincount(group, weights=w)
    g_raw = np.bincount(group, weights=w * raw) / gw
    g_cal = np.bincount(group, weights=w * cal) / gw
    g_obs = np.bincount(group, weights=pos) / gw
    out["ece_raw"] = float(np.dot(gw, np.abs(g_raw - g_obs)) / total_w)
    out["ece_cal"] = float(np.dot(gw, np.abs(g_cal - g_obs)) / total_w)
    if total_pos > 0:  # no positives: the ratio is undefined (and not stored: metrics must be finite)
        out["ratio_raw"] = float(np.dot(w, raw)) / total_pos
        out["ratio_cal"] = float(np.dot(w, cal)) / total_pos
    out["rel"] = ";".join(
        f"{a:.4g},{b:.4g},{c:.4g},{d:.4g}"
        for a, b, c, d in zip(g_raw.tolist(), g_cal.tolist(), g_obs.tolist(), gw.tolist(), strict=True)
    )
    return out


class Aggregator:
    """Merges partials into maps. Drift alerting: a key is in alert while the raw scores' calibration
    ratio on the recent window leaves [drift_ratio_low, drift_ratio_high] or their ECE exceeds
    drift_max_ece (evaluated only with at least drift_min_weight of evaluation weight); each
    transition is logged once on the `recal.drift` logger with extra fields model, segment, ratio, ece."""

    def __init__(self, model_config: Callable[[str], ModelConfig], *, with_metrics: bool = True) -> None:
        self._model_config = model_config
        self.states: dict[MapKey, MapState] = {}
        self.dirty: set[MapKey] = set()
        self.published: dict[MapKey, CalibrationMap] = {}  # what this process last handed out
        self.refused: dict[MapKey, str] = {}  # last gate refusal reason per key
        self.gate_refusals = 0
        self.with_metrics = with_metrics
        self.metrics: dict[MapKey, dict[str, float | str]] = {}  # latest evaluation per key (gate or not)
        self.drift: dict[MapKey, bool] = {}  # current alert state per evaluated key
        self.build_errors = 0  # keys whose map build raised (skipped, see take_dirty)
        self.metrics_seconds = 0.0  # time spent computing map metrics (cost of the dashboard numbers)
        self.shrinkage = Shrinkage(model_config)  # models with shrink_to_parent: children toward parents
        self.silent_drift = SilentDrift()  # models with a drift_detector: forget faster on a detected change

    def _check_drift(self, key: MapKey, metrics: dict[str, float | str]) -> None:
        model, segment = key.split(":", 1)
        cfg = self._model_config(model)
        if float(metrics.get("eval_weight", 0.0)) < cfg.drift_min_weight or "ece_raw" not in metrics:
            return  # too little recent data to judge: keep the previous state
        ratio = float(metrics.get("ratio_raw", math.inf))
        ece = float(metrics["ece_raw"])
        alert = not (cfg.drift_ratio_low <= ratio <= cfg.drift_ratio_high) or ece > cfg.drift_max_ece
        if alert == self.drift.get(key, False):
            self.drift[key] = alert
            return
        self.drift[key] = alert
        extra = {"model": model, "segment": segment, "ratio": ratio, "ece": ece, "alert": alert}
        if alert:
            drift_log.warning(
                "calibration drift on %s: raw ratio %.3f (allowed %.2f..%.2f), raw ECE %.4f (max %.4f)",
                key,
                ratio,
                cfg.drift_ratio_low,
                cfg.drift_ratio_high,
                ece,
                cfg.drift_max_ece,
                extra=extra,
            )
        else:
            drift_log.warning(
                "calibration drift cleared on %s: raw ratio %.3f, raw ECE %.4f", key, ratio, ece, extra=extra
            )

    def add(self, key: MapKey, record: bytes, state: MapState | None = None) -> MapState:
        """Fold one partial record in; `state` is the stored state when this process has none."""
        header, blobs = unpack(record)
        if key != f"{header['model']}:{header['segment']}":
            raise ValueError(f"partial for {header['model']}:{header['segment']} under key {key}")
        current = self.states.get(key) or state or MapState()
        current.add(header["version"], header["partition"], bytes(blobs[0]))
        self.states[key] = current
        self.dirty.add(key)
        return current

    def restore(self, key: MapKey, state: MapState) -> None:
        """Adopt a stored state (when this process has none) and mark the key for a rebuild."""
        self.states.setdefault(key, state)
        self.dirty.add(key)
        self.published.pop(key, None)  # the map is gone from Redis: publish without a change bound

    def build(self, key: MapKey, now_ms: int | None = None) -> CalibrationMap | None:
        """The map to publish for `key`, or None when the quality gate holds it back."""
        state = self.states[key]
        model, segment = key.split(":", 1)
        cfg = self._model_config(model)
        versions = state.ordered_versions()
        newest = versions[-1]
        prior = None
        if len(versions) > 1 and cfg.on_new_version == "warm_start":
            previous = self.published.get(key)
            if previous is not None and previous.model_version != newest:
                prior = previous
        calibrator = merged(state.versions[newest], prior, calibrator_config(cfg))
        if cfg.drift_detector:
            calibrator = self.silent_drift.observe(cfg.drift_detector, key, newest, calibrator, self.published.get(key))
        meta = {
            "model": model,
            "model_version": newest,
            "segment": parse_segment_key(segment),
            "version": state.examples(but=newest, merged_examples=calibrator.n_seen),
            "updated_at": now_ms if now_ms is not None else int(time.time() * 1000),
        }
        candidate = self.shrinkage.fit(key, calibrator, meta) or calibrator.to_map(**meta)
        self.shrinkage.fitted[key] = candidate
        if self.with_metrics:
            started = time.perf_counter()
            metrics = map_metrics(candidate, calibrator)
            if cfg.drift_detector:
                metrics["drift_detections"] = self.silent_drift.detections(key)
            candidate = candidate.with_meta(metrics=metrics)
            self.metrics[key] = metrics
            self._check_drift(key, metrics)
            self.metrics_seconds += time.perf_counter() - started
        current = self.published.get(key)
        gate = QualityGate(  # a shrunk map stands on its parent's data: no min_samples cliff
            min_effective_samples=0.0 if candidate.method == "hierarchical" else cfg.min_samples,
            max_abs_change=cfg.max_change or None,
            max_rel_change=None,
            max_loss_increase=cfg.max_loss_increase,
        )
        decision = gate.check(
            candidate, current if current and current.model_version == newest else None, calibrator.holdout
        )
        if not decision.accepted:
            self.refused[key] = decision.reason
            self.gate_refusals += 1
            return None
        self.refused.pop(key, None)
        self.published[key] = candidate
        return candidate

    def _merge_newest(self, key: MapKey) -> tuple[str, Calibrator]:
        """(newest model version, its merged state) of `key`, without a prior: for pooling siblings."""
        state = self.states[key]
        newest = state.ordered_versions()[-1]
        return newest, merged(state.versions[newest], None, calibrator_config(self._model_config(key.split(":")[0])))

    def take_dirty(self, now_ms: int | None = None) -> list[CalibrationMap]:
        """The maps of the changed keys. A key whose build raises is logged, counted and skipped (its
        previous map stays live; the next partial retries it): one key never stops the refresh timer."""
        dirty, self.dirty = self.shrinkage.order(self.dirty), set()
        self.shrinkage.prepare(dirty, self._merge_newest)
        maps = []
        for key in dirty:
            try:
                candidate = self.build(key, now_ms)
            except Exception:
                self.build_errors += 1
                log.exception("map %s not built (skipped until its next partial)", key)
                continue
            if candidate is not None:
                maps.append(candidate)
        return maps
