"""Delayed-feedback correction in the stream (`label_delay = "corrected"`, docs/calibration.md): the join's
facts about open attribution windows -> the core's `DelayModel` and `PendingExposure` -> corrected maps.

Partition side, `DelayedFeedback` (one per join partition, snapshotted with its partial calibrators, so a
crash replays its inputs onto exactly the state they had produced: exactly-once like the calibrators).
The join reports three facts for the slots of corrected models, as columns indexing its string tables:
- `opened` (model, version, segment, score, ts, holdout): a window opened, the example is in its model's
  population (impression time; for a post-click model, its click);
- `converted` (the same + `conversion_ts`): its first in-window conversion (post-click: once clicked too);
- `matured`: the labeled examples the join emits at window close, as today.
Per level of the segment fallback chain, `pending[(model, version, level)]` holds the open windows of that
calibrator (held-back examples excluded: they only ever enter the holdout histogram, at maturity) and
`delay[(model, level)]` the delay model, shared by the model's versions (delays belong to the traffic).
`close_through(clock)` drops the cohorts whose windows all closed.

Aggregator side: every partial record of a corrected key carries `DelayedPartial` (the partition's pending
exposure of the key, its delay models along the key's chain, the partition's clock); `corrected_candidate`
merges them in partition order and fits through `recalibrators.delay_pending.corrected_map`, with the newest
partition clock as the age of open windows; `immature_refusal` is the gate's extra rule.

>>> from streams.pipeline.config import ModelConfig
>>> cfg = ModelConfig(label="conversion", window_ms=7 * 86_400_000, segment_by=())
>>> feedback = DelayedFeedback({"cvr": cfg}.get)
>>> cols = {"model": np.zeros(2, np.uint16), "version": np.zeros(2, np.uint16), "segment": np.zeros(2, np.uint32),
...         "score": np.array([0.02, 0.05]), "ts": np.array([0, 1000]), "holdout": np.zeros(2, bool)}
>>> feedback.opened(cols, ["cvr"], ["v1"], [{}])
>>> feedback.converted({**cols, "conversion_ts": cols["ts"] + 60_000}, ["cvr"], ["v1"], [{}])
>>> pe = feedback.pending[("cvr", "v1", "*")]
>>> sorted(feedback.dirty), pe.n_open, pe.n_open_converted
([('cvr', 'v1', '*')], 2, 2)
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from recalibrators.calibration_map import CalibrationMap
from recalibrators.calibrator import Calibrator
from recalibrators.delay import DelayConfig, DelayModel
from recalibrators.delay_pending import PendingConfig, PendingExposure, corrected_map
from recalibrators.segments import fallback_chain, parse_segment_key
from streams.pipeline.config import ModelConfig
from streams.pipeline.partials import calibrator_config, row_groups
from streams.pipeline.records import pack, unpack

__all__ = [
    "DelayedFeedback",
    "DelayedPartial",
    "JoinFacts",
    "MergedDelayed",
    "corrected_candidate",
    "immature_refusal",
    "merge_delayed",
]

log = logging.getLogger("recal.join")

CalibratorKey = tuple[str, str, str]  # model, model version, segment key
DelayKey = tuple[str, str]  # model, segment key


@functools.lru_cache(maxsize=1024)
def delay_config(model: ModelConfig) -> DelayConfig:
    """The delay model of a corrected model: its window, its calibrators' half-life; the first delay bin ends
    at 1 min (or at 1% of a shorter window, as in tests)."""
    return DelayConfig(
        window_ms=model.window_ms,
        half_life_ms=float(model.half_life_ms),
        min_delay_ms=min(60_000.0, model.window_ms / 100),
    )


@functools.lru_cache(maxsize=1024)
def pending_config(model: ModelConfig) -> PendingConfig:
    """The pending exposure of a corrected model's calibrators: their bins and half-life, its window."""
    return PendingExposure.for_calibrator(calibrator_config(model), model.window_ms).config


def _changed(old, new) -> list[str]:
    return [f.name for f in dataclasses.fields(old) if getattr(old, f.name) != getattr(new, f.name)]


def chain_of(level: str, model: ModelConfig) -> list[str]:
    """A calibrator level's own fallback chain (itself first, `*` last): where its delay curve may come from."""
    return fallback_chain(parse_segment_key(level), model.segment_by)


class DelayedFeedback:
    """Pending exposure and delay models of one join partition; see the module docstring."""

    def __init__(self, model_config: Callable[[str], ModelConfig]) -> None:
        self.model_config = model_config
        self.pending: dict[CalibratorKey, PendingExposure] = {}
        self.delay: dict[DelayKey, DelayModel] = {}
        self.dirty: set[CalibratorKey] = set()
        self.clock_ms = 0  # the join's event time at the last close_through: the age of open windows
        self.opened_from: dict[str, int] = {}  # model -> earliest start of a window this state opened
        self._closed: dict[str, int] = {}  # model -> cohort index its last close_through cutoff fell in

    def _levels(self, columns, models, versions, segments):
        """Per (model, version, segment) group of a corrected model: its rows and fallback chain."""
        if not len(columns["score"]):
            return
        for m, v, s, rows in row_groups(columns):
            cfg = self.model_config(models[m])
            if cfg.corrected:
                yield cfg, models[m], versions[v], fallback_chain(segments[s], cfg.segment_by), rows

    def _pending(self, cfg: ModelConfig, key: CalibratorKey) -> PendingExposure:
        pe = self.pending.get(key)
        if pe is None:
            pe = self.pending[key] = PendingExposure(pending_config(cfg))
        self.dirty.add(key)
        return pe

    def _delay(self, cfg: ModelConfig, key: DelayKey) -> DelayModel:
        dm = self.delay.get(key)
        if dm is None:
            dm = self.delay[key] = DelayModel(delay_config(cfg))
        return dm

    def _opened_only(self, columns, models, versions, segments):
        """`_levels` restricted to windows that started no earlier than the first one this state opened for
        the model: the windows open when the state began (a switch from "wait", a snapshot from before
        label_delay) were never added, so their conversions and closes must not be taken out."""
        for cfg, model, version, chain, rows in self._levels(columns, models, versions, segments):
            since = self.opened_from.get(model)
            rows = rows[columns["ts"][rows] >= since] if since is not None else rows[:0]
            if len(rows):
                yield cfg, model, version, chain, rows

    def opened(self, columns: Mapping[str, np.ndarray], models, versions, segments) -> None:
        for cfg, model, version, chain, rows in self._levels(columns, models, versions, segments):
            ts, fit = columns["ts"][rows], ~columns["holdout"][rows]
            self.opened_from[model] = min(self.opened_from.get(model, int(ts.min())), int(ts.min()))
            for level in chain:
                self._pending(cfg, (model, version, level)).add(columns["score"][rows][fit], ts[fit])
                self._delay(cfg, (model, level)).learn_starts(ts)

    def converted(self, columns: Mapping[str, np.ndarray], models, versions, segments) -> None:
        for cfg, model, version, chain, rows in self._opened_only(columns, models, versions, segments):
            ts, fit = columns["ts"][rows], ~columns["holdout"][rows]
            for level in chain:
                self._pending(cfg, (model, version, level)).convert(columns["score"][rows][fit], ts[fit])
                self._delay(cfg, (model, level)).learn_conversions(ts, columns["conversion_ts"][rows])

    def matured(self, columns: Mapping[str, np.ndarray], models, versions, segments) -> None:
        """The join's labeled examples (the calibrators learn them as usual)."""
        for cfg, model, version, chain, rows in self._opened_only(columns, models, versions, segments):
            ts, label, fit = columns["ts"][rows], columns["label"][rows], ~columns["holdout"][rows]
            for level in chain:
                self._pending(cfg, (model, version, level)).mature(columns["score"][rows][fit], label[fit], ts[fit])
                self._delay(cfg, (model, level)).learn_matured(ts, label)

    def close_through(self, clock_ms: int) -> None:
        """The join's clock moved to `clock_ms` (after its expiry ran): windows that started before
        clock - window - lateness have all been emitted, so their cohorts go (a key that lost one is dirty).
        Cohorts are window / n_cohorts wide, so the keys of a model are visited only when its cutoff enters
        a new cohort, not on every batch."""
        self.clock_ms = max(self.clock_ms, clock_ms)
        cutoffs: dict[str, int | None] = {}
        for model in {key[0] for key in self.pending} | {key[0] for key in self.delay}:
            cfg = self.model_config(model)
            cutoff = self.clock_ms - cfg.window_ms - cfg.allowed_lateness_ms
            step = cutoff // delay_config(cfg).cohort_ms
            cutoffs[model] = cutoff if self._closed.get(model) != step else None
            self._closed[model] = step
        for key, pe in self.pending.items():
            if (cutoff := cutoffs[key[0]]) is not None and (before := pe.cohorts.ids.size):
                pe.close_through(cutoff)
                if pe.cohorts.ids.size != before:
                    self.dirty.add(key)
        for (model, _), dm in self.delay.items():
            if (cutoff := cutoffs[model]) is not None:
                dm.close_through(cutoff)

    def take_dirty(self) -> list[CalibratorKey]:
        dirty, self.dirty = self.dirty, set()
        return sorted(dirty)

    def partial(self, key: CalibratorKey) -> DelayedPartial:
        """What the partial record of calibrator `key` carries for the aggregator."""
        cfg = self.model_config(key[0])
        pe = self.pending.get(key) or PendingExposure(pending_config(cfg))
        chain = [self.delay.get((key[0], level)) for level in chain_of(key[2], cfg)]
        return DelayedPartial(self.clock_ms, pe, chain)

    # -- snapshots -------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        pending, delay = sorted(self.pending), sorted(self.delay)
        header = {
            "clock_ms": self.clock_ms,
            "opened_from": self.opened_from,
            "pending": [list(k) for k in pending],
            "delay": [list(k) for k in delay],
        }
        blobs = [self.pending[k].to_bytes() for k in pending] + [self.delay[k].to_bytes() for k in delay]
        return pack(header, blobs)

    @classmethod
    def from_bytes(cls, model_config: Callable[[str], ModelConfig], data: bytes) -> DelayedFeedback:
        """A snapshot's state, every key dirty (the partials sent after the snapshot may be lost).

        State saved under other settings than the model's current ones (n_bins, half_life or window changed
        between two runs, as `PartialCalibrators.from_blobs` carries calibrators over) is carried over too:
        pending exposure by `PendingExposure.with_config` (open windows keep their counts, so the map version
        never goes back, and enter at maturity: their exposure was summed in the old layout and cannot be taken
        out example by example in the new one), delay models by `DelayModel.with_config`. Logged per model
        with the number of open windows whose exposure was dropped."""
        header, blobs = unpack(data)
        out = cls(model_config)
        out.clock_ms = int(header["clock_ms"])
        out.opened_from = {m: int(t) for m, t in header["opened_from"].items()}
        n = len(header["pending"])
        changed: dict[str, tuple[set[str], list[int]]] = {}  # model -> (changed settings, [open windows])
        for key, blob in zip(header["pending"], blobs[:n], strict=True):
            pe, target = PendingExposure.from_bytes(bytes(blob)), pending_config(model_config(key[0]))
            if pe.config != target:
                names, dropped = changed.setdefault(key[0], (set(), [0]))
                names.update(_changed(pe.config, target))
                dropped[0] += pe.n_open if key[2] == "*" else 0  # every window is in its model-wide key
                pe = pe.with_config(target)
            out.pending[tuple(key)] = pe
        for key, blob in zip(header["delay"], blobs[n:], strict=True):
            dm, target = DelayModel.from_bytes(bytes(blob)), delay_config(model_config(key[0]))
            if dm.config != target:
                changed.setdefault(key[0], (set(), [0]))[0].update(_changed(dm.config, target))
                dm = dm.with_config(target)
            out.delay[tuple(key)] = dm
        for model, (names, dropped) in sorted(changed.items()):
            log.warning(
                "model %r: delayed-feedback settings changed since the snapshot (%s); state carried over, "
                "%d open windows' pending exposure dropped (they enter the maps at maturity)",
                model,
                ", ".join(sorted(names)),
                dropped[0],
            )
        out.dirty = set(out.pending)
        return out


@dataclass
class DelayedPartial:
    """One partition's share of a corrected key: pending exposure, delay models along the key's chain
    (None: that level has no data in this partition), and the partition's clock."""

    clock_ms: int
    pending: PendingExposure
    chain: list[DelayModel | None]

    def encode(self) -> bytes:
        present = [m is not None for m in self.chain]
        blobs = [self.pending.to_bytes(), *(m.to_bytes() for m in self.chain if m is not None)]
        return pack({"clock_ms": self.clock_ms, "chain": present}, blobs)

    @classmethod
    def decode(cls, data: bytes) -> DelayedPartial:
        parts = cls.decode_parts(data)
        chain = [None if blob is None else DelayModel.from_bytes(blob) for blob in parts.chain]
        return cls(parts.clock_ms, PendingExposure.from_bytes(parts.pending), chain)

    @staticmethod
    def decode_parts(data: bytes) -> EncodedPartial:
        """The record's parts still encoded: the aggregator decodes each distinct delay model once."""
        header, blobs = unpack(data)
        models = iter(blobs[1:])
        chain = [bytes(next(models)) if present else None for present in header["chain"]]
        return EncodedPartial(int(header["clock_ms"]), bytes(blobs[0]), chain)


class EncodedPartial(NamedTuple):
    clock_ms: int
    pending: bytes
    chain: list[bytes | None]


def _merge_all(items):
    items = [i for i in items if i is not None]
    return functools.reduce(lambda a, b: a.merge(b), items) if items else None


class MergedDelayed(NamedTuple):
    """A key's `DelayedPartial`s merged: its open windows, the delay models along its chain, the newest clock."""

    pending: PendingExposure
    chain: list[DelayModel | None]
    now_ms: int


def merge_delayed(cfg: ModelConfig, partials: Mapping[int, bytes]) -> MergedDelayed | None:
    """The partitions' `DelayedPartial`s (partition -> bytes) carried to the model's current settings (a partial
    saved under older ones: a rolling restart, the table) and merged in partition order (deterministic sums),
    open windows aged to the newest partition clock (a partition that lags over-ages its windows by its lag:
    negligible against windows of days). None without partials (a replay of matured labels)."""
    if not partials:
        return None
    parts = [DelayedPartial.decode_parts(partials[p]) for p in sorted(partials)]
    target = pending_config(cfg)
    pending = _merge_all(PendingExposure.from_bytes(p.pending).with_config(target) for p in parts)
    depth = max(len(p.chain) for p in parts)
    levels = [tuple(p.chain[i] for p in parts if i < len(p.chain) and p.chain[i] is not None) for i in range(depth)]
    chain = [_merged_delay_model(cfg, level) if level else None for level in levels]
    return MergedDelayed(pending, chain, max(p.clock_ms for p in parts))


@functools.lru_cache(maxsize=1024)
def _merged_delay_model(cfg: ModelConfig, blobs: tuple[bytes, ...]) -> DelayModel:
    """One chain level's delay models (the partitions' bytes, in partition order) merged under the model's
    settings. Shared by every key whose partials carry the same ones, with the curve fitted on it cached
    (`DelayModel.curve`): a model's coarse levels are the same for all its keys, and fitting their curve
    again for each key was more than half of a corrected key's build (19.7 -> 8.2 ms before this cache)."""
    target = delay_config(cfg)
    return _merge_all(DelayModel.from_bytes(blob).with_config(target) for blob in blobs)


def corrected_candidate(
    cfg: ModelConfig, calibrator: Calibrator, partials: Mapping[int, bytes] | MergedDelayed | None, /, **meta
) -> CalibrationMap:
    """The corrected map of a key of the model `cfg` configures, from its partitions' `DelayedPartial`s
    (partition -> bytes, or already `merge_delayed`: the aggregator merges once for its two fits). No partials
    (a replay of matured labels): the waited-for map, as `corrected_map` gives it for a fully matured state.
    `meta` as in `corrected_map`."""
    merged = partials if partials is None or isinstance(partials, MergedDelayed) else merge_delayed(cfg, partials)
    if merged is None:
        return corrected_map(calibrator, None, [], **meta)
    return corrected_map(calibrator, merged.pending, merged.chain, merged.now_ms, **meta)


def _matured(m: CalibrationMap) -> bool:
    return float((m.metrics_dict or {}).get("matured_fraction", 1.0)) >= 1.0


def immature_refusal(candidate: CalibrationMap, current: CalibrationMap | None, min_events: float) -> str | None:
    """Why a corrected `candidate` must not replace a matured `current` map, or None. Its correction must rest
    on a delay model with `min_events` conversions at its own fallback level and an observed life table (not
    the lognormal tail alone); a corrected map over a corrected one, or a first map, is the normal gate's."""
    if current is None or _matured(candidate) or not _matured(current):
        return None
    metrics = candidate.metrics_dict or {}
    if metrics.get("delay_method") == "lognormal":
        return "corrected map rests on the lognormal delay tail alone; keeping the matured map"
    events = float(metrics.get("delay_events", 0.0))
    if events < min_events:
        return f"corrected map's delay model has {events:.0f} < {min_events:.0f} conversions; keeping the matured map"
    return None


class JoinFacts:
    """The open-window facts of corrected models one join batch produced, in terms of the join's slot groups
    (drained with its examples, so they index the same tables): column chunks from the vectorised impression
    path, scalar rows from the per-action path (clicks and conversions)."""

    def __init__(self) -> None:
        self.opened: list[dict[str, np.ndarray]] = []
        self._one: tuple[list, list] = ([], [])  # (group, score, ts, holdout[, conversion_ts]) rows

    def __bool__(self) -> bool:
        return bool(self.opened or self._one[0] or self._one[1])

    def add(self, group: np.ndarray, score: np.ndarray, ts: np.ndarray, holdout: np.ndarray) -> None:
        """Windows opened."""
        self.opened.append({"group": group, "score": score, "ts": ts, "holdout": holdout})

    def add_one(self, group: int, score: float, ts: int, holdout: bool, conversion_ts: int | None = None) -> None:
        """One window opened (conversion_ts None) or one first in-window conversion of an open window."""
        if conversion_ts is None:
            self._one[0].append((group, score, ts, holdout))
        else:
            self._one[1].append((group, score, ts, holdout, conversion_ts))

    def take(self) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
        """(opened chunks, converted chunks) since the last take."""
        names = ("group", "score", "ts", "holdout", "conversion_ts")
        dtypes = (np.uint32, np.float64, np.int64, bool, np.int64)
        opened, converted = self.opened, []
        for out, rows in zip((opened, converted), self._one, strict=True):
            if rows:
                cols = list(zip(*rows, strict=True))
                out.append({n: np.asarray(c, dtype=d) for n, c, d in zip(names, cols, dtypes, strict=False)})
        self.opened, self._one = [], ([], [])
        return opened, converted
