"""Partial calibrators of all partitions -> one calibration map per (model, model version, segment key).

Every live model version is calibrated at once and gets its own maps: the key (the partials topic's
record key, the table key and the Redis field) is `recalibrators.serving.keys.MapField`. The aggregator
keeps, per key, the latest partial state of every partition, merges them (exact: sums add), runs the
quality gate against the map of that key it published last, and hands accepted maps to the publisher.
Pure state and logic; `streams.pipeline.app` wires it to a Faust agent, a table and a timer.

Versions (`streams.pipeline.versions`): a partial of a version beyond the model's cap of live versions
is dropped and counted (the join dead-letters its impressions); versions retire after `version_idle` of
event time without labels. The cap is enforced per aggregator over the keys it owns: all partitions'
traffic of a live version reaches every aggregator owning one of its keys, so below the cap every
aggregator sees the same live set.

Warm start: the first build of a key of a new version takes as prior the map of the same segment (or
its first coarser level, the serving fallback) of `warm_start_from`, default the older live version
with the most recent traffic; the choice is stored with the key and named in the map's `prior` metadata.
Another version's map is a guess, not evidence about this one: the warm fit serves only while the key's
own data does not contradict the prior (`recalibrators.gate.prior_contradicted`, a chi-square goodness
of fit, `WARM_START_Z`); once it does, the key's own fit (no prior) serves. The prior is chosen when the
key's first partial arrives, so it is in the state the table stores (a restart or a move keeps it).

Refresh off the event loop, in slices (`streams.pipeline.app`'s timer): `take_slice` runs on the loop and
takes the oldest changed keys (at most `max_keys`) with a copy of their partials, so the agent's `add` never
races the build; `build_slice` runs in one refresh thread and builds them until its deadline; `carry` puts
the keys it did not reach back at the front (oldest first: no key starves). A refresh costs what the changed
keys cost, never all keys. Build-side state (`published`, `refused`, `metrics`, shrinkage, drift) is written
only by that one thread; the loop reads it with single `get`s or C-level copies (atomic under the GIL).

Map version (fencing): the number of labeled examples ever folded into the key (`n_seen` summed over
the partitions' partials). It grows with every label, late ones included, so a worker that lost its
partitions, or a replay running behind, holds fewer and cannot overwrite a newer map.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from recalibrators.calibration_map import CalibrationMap
from recalibrators.calibrator import Calibrator, CalibratorConfig
from recalibrators.gate import QualityGate, prior_contradicted
from recalibrators.segments import MODEL_WIDE, fallback_chain, parse_segment_key
from recalibrators.serving.keys import MapField
from streams.pipeline.config import ModelConfig
from streams.pipeline.delayed import corrected_candidate, delay_config, immature_refusal
from streams.pipeline.drift import SilentDrift
from streams.pipeline.map_metrics import DriftAlerts, map_metrics
from streams.pipeline.partials import calibrator_config
from streams.pipeline.records import pack, unpack
from streams.pipeline.shrinkage import Shrinkage
from streams.pipeline.versions import ModelVersions

log = logging.getLogger("recal.aggregate")

MapKey = str  # str(MapField): "{esc(model)}:{esc(model_version)}:{segment_key}"
# A warm start's prior serves only while the key's data departs from it by no more than chance (chi-square
# excess <= 0 z): keeping a wrong prior costs far more than dropping a right one, whose fallback is the key's
# own fit. Measured (bench_versions' v2, per finest segment of 500 / 2,000 / 100,000 examples, L1 x 1e-4):
# z = 2 gives 65.8 / 34.9 / 19.2, z = 0 gives 61.2 / 27.2 / 17.95, the own fit 54.3 / 27.2 / 17.95.
WARM_START_Z = 0.0


def encode_partial(
    partition: int, model: str, model_version: str, segment: str, calibrator: Calibrator, delayed: bytes | None = None
) -> bytes:
    """delayed: the key's `streams.pipeline.delayed.DelayedPartial` (label_delay = "corrected"), a second blob."""
    header = {"partition": partition, "model": model, "model_version": model_version, "segment": segment}
    return pack(header, [calibrator.to_bytes(), *([delayed] if delayed is not None else [])])


class MapState:
    """What the aggregator holds for one key: the latest partial per partition and the warm-start prior."""

    def __init__(self) -> None:
        self.partials: dict[int, bytes] = {}  # partition -> calibrator bytes
        self.delayed: dict[int, bytes] = {}  # partition -> DelayedPartial bytes (corrected models)
        self.prior: CalibrationMap | None = None
        self.prior_chosen = False  # chosen once, with the key's first partial: a prior that moved would move the map

    def examples(self) -> int:
        return sum(Calibrator.from_bytes(blob).n_seen for blob in self.partials.values())

    def encode(self) -> bytes:
        header = {
            "partitions": sorted(self.partials),
            "prior": None if self.prior is None else self.prior.to_json().decode(),
            "prior_chosen": self.prior_chosen,
            "delayed": sorted(self.delayed),
        }
        blobs = [self.partials[p] for p in sorted(self.partials)] + [self.delayed[p] for p in sorted(self.delayed)]
        return pack(header, blobs)

    @classmethod
    def decode(cls, data: bytes) -> MapState:
        """ValueError for anything else, e.g. a schema-1 state left in the table by an older worker."""
        try:
            header, blobs = unpack(data)
            state = cls()
            n = len(header["partitions"])
            state.partials = {int(p): bytes(b) for p, b in zip(header["partitions"], blobs[:n], strict=True)}
            state.delayed = {int(p): bytes(b) for p, b in zip(header.get("delayed", []), blobs[n:], strict=True)}
            if header["prior"] is not None:
                state.prior = CalibrationMap.from_json(header["prior"])
            state.prior_chosen = bool(header["prior_chosen"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an aggregator state: {exc!r}") from None
        return state


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


@dataclass
class VersionInfo:
    """One model version as `{prefix}:versions:{model}` shows it (from the keys of its model-wide map)."""

    first_event_ms: int
    last_event_ms: int
    examples: int
    state: str = "live"  # live | retired

    def as_json(self) -> dict[str, int | str]:
        return dict(vars(self))


class Aggregator:
    """Merges partials into maps, gates them, tracks model versions; see the module docstring."""

    def __init__(self, model_config: Callable[[str], ModelConfig], *, with_metrics: bool = True) -> None:
        self._model_config = model_config
        self.states: dict[MapKey, MapState] = {}
        self.dirty: dict[MapKey, None] = {}  # changed keys, oldest first (an ordered set)
        self.carried: set[MapKey] = set()  # keys the last refresh slice left unbuilt (see `carry`)
        self.published: dict[MapKey, CalibrationMap] = {}  # what this process last handed out
        self.refused: dict[MapKey, str] = {}  # keys the gate holds back -> its reason (with the numbers)
        self.gate_refusals = 0
        self.with_metrics = with_metrics
        self.metrics: dict[MapKey, dict[str, float | str]] = {}  # latest evaluation per key (gate or not)
        self.drift_alerts = DriftAlerts(model_config)
        self.build_errors = 0  # keys whose map build raised (skipped, see take_dirty)
        self.metrics_seconds = 0.0  # time spent computing map metrics (cost of the dashboard numbers)
        self.live = ModelVersions(model_config)
        self.versions: dict[str, dict[str, VersionInfo]] = {}  # model -> model_version -> info
        self.versions_changed: set[str] = set()  # models whose version infos changed since the last take
        self.dropped_partials = 0  # partials of a version beyond the cap (too_many_versions)
        self.shrinkage = Shrinkage(model_config)  # models with shrink_to_parent: children toward parents
        self.silent_drift = SilentDrift()  # models with a drift_detector: forget faster on a detected change

    @property
    def drift(self) -> dict[MapKey, bool]:
        return self.drift_alerts.alerts

    def add(self, key: MapKey, record: bytes, state: MapState | None = None) -> MapState | None:
        """Fold one partial record in; `state` is the stored (table) state of the key, which is never older
        than this process's copy (the key may have lived on another worker since). None: dropped, because
        the model already has its cap of live versions."""
        header, blobs = unpack(record)
        field = MapField(header["model"], header["model_version"], header["segment"])
        if key != str(field):
            raise ValueError(f"partial for {field} under key {key}")
        calibrator = Calibrator.from_bytes(bytes(blobs[0]))
        if not self.live.admit(field.model, field.model_version, calibrator.last_event_ms):
            self.dropped_partials += 1
            return None
        current = state if state is not None else self.states.get(key) or MapState()
        if not current.prior_chosen:
            current.prior, current.prior_chosen = self._prior(field, self._model_config(field.model)), True
        current.partials[header["partition"]] = bytes(blobs[0])
        if len(blobs) > 1:
            current.delayed[header["partition"]] = bytes(blobs[1])
        self.states[key] = current
        self.dirty.setdefault(key)  # an already changed key keeps its place in the queue
        if field.segment_key == MODEL_WIDE:
            self._track_version(field, current, calibrator.last_event_ms)
        return current

    def restore(self, key: MapKey, state: MapState) -> None:
        """Adopt the stored state (Redis lost its maps) and mark the key for a rebuild."""
        self.states[key] = state
        self.dirty.setdefault(key)
        self.published.pop(key, None)  # the map is gone from Redis: publish without a change bound

    def _track_version(self, field: MapField, state: MapState, event_ms: int) -> None:
        info = self.versions.setdefault(field.model, {}).get(field.model_version)
        examples = state.examples()
        if info is None:
            info = VersionInfo(event_ms, event_ms, examples)
            self.versions[field.model][field.model_version] = info
        info.last_event_ms, info.examples, info.state = max(info.last_event_ms, event_ms), examples, "live"
        self.versions_changed.add(field.model)

    def take_versions(self) -> dict[str, dict[str, VersionInfo]]:
        """Retire idle versions; the version infos of every model that changed, for the publisher."""
        for model, live in self.live.models.items():
            for model_version in live.retire_idle():
                log.info(
                    "model %s version %s retired: no labels for %d ms of event time", model, model_version, live.idle_ms
                )
                if (info := self.versions.get(model, {}).get(model_version)) is not None:
                    info.state = "retired"
                    self.versions_changed.add(model)
        changed, self.versions_changed = self.versions_changed, set()
        return {model: dict(self.versions[model]) for model in sorted(changed) if model in self.versions}

    def _prior(self, field: MapField, cfg: ModelConfig) -> CalibrationMap | None:
        """The warm-start prior of a new key: the source version's map along the segment's fallback chain."""
        if cfg.on_new_version != "warm_start":
            return None
        source = cfg.warm_start_from or self.live[field.model].most_recent(before=field.model_version)
        if not source or source == field.model_version:
            return None
        segment = parse_segment_key(field.segment_key)
        for seg in fallback_chain(segment, [list(segment), *cfg.segment_by]):
            key = str(MapField(field.model, source, seg))
            if (m := self.published.get(key)) is not None:
                return m
            if (state := self.states.get(key)) is not None and state.partials:
                calibrator = merged(state.partials, state.prior, calibrator_config(cfg))
                if calibrator.n_effective >= cfg.min_samples:
                    return calibrator.to_map(model=field.model, model_version=source, segment=parse_segment_key(seg))
        return None

    def _gate(self, cfg: ModelConfig, candidate: CalibrationMap) -> QualityGate:
        return QualityGate(  # a shrunk map stands on its parent's data: no min_samples cliff
            min_effective_samples=0.0 if candidate.method == "hierarchical" else cfg.min_samples,
            max_rel_change=cfg.max_change or None,  # documented as relative: |cand - live| / live
            max_loss_increase=cfg.max_loss_increase,
            min_z=cfg.gate_min_z,
            evidence_growth=cfg.gate_evidence_growth,
        )

    def build(self, key: MapKey, now_ms: int | None = None, state: MapState | None = None) -> CalibrationMap | None:
        """The map to publish for `key` (from `state`, default the key's current one), or None when the
        quality gate holds it back."""
        state = state if state is not None else self.states[key]
        field = MapField.parse(key)
        cfg = self._model_config(field.model)
        meta = {
            "model": field.model,
            "model_version": field.model_version,
            "segment": parse_segment_key(field.segment_key),
            "updated_at": now_ms if now_ms is not None else int(time.time() * 1000),
        }
        config = calibrator_config(cfg)
        calibrator = merged(state.partials, None, config)
        if state.prior is not None and not prior_contradicted(state.prior, calibrator.histogram, WARM_START_Z):
            calibrator = merged(state.partials, state.prior, config)
            meta["prior"] = {"model_version": state.prior.model_version, "map_version": state.prior.map_version}
        if cfg.drift_detector:
            published = self.published.get(key)
            calibrator = self.silent_drift.observe(cfg.drift_detector, key, field.model_version, calibrator, published)
        corrected = cfg.corrected
        if corrected:  # open windows folded in (streams.pipeline.delayed); map_version counts them too
            candidate = corrected_candidate(cfg, calibrator, state.delayed, **meta)
        else:
            candidate = self.shrinkage.fit(key, calibrator, meta) or calibrator.to_map(**meta)
        self.shrinkage.fitted[key] = candidate
        if self.with_metrics:
            started = time.perf_counter()
            metrics = map_metrics(candidate, calibrator)
            if cfg.drift_detector:
                metrics["drift_detections"] = self.silent_drift.detections(key)
            candidate = candidate.with_meta(metrics={**(candidate.metrics_dict or {}), **metrics})
            self.metrics[key] = metrics
            self.drift_alerts.check(key, metrics)
            self.metrics_seconds += time.perf_counter() - started
        decision = self._gate(cfg, candidate).check(candidate, self.published.get(key), calibrator.holdout)
        refusal = (
            immature_refusal(candidate, self.published.get(key), delay_config(cfg).min_events) if corrected else None
        )
        if refusal is not None:  # a thin or extrapolated correction does not replace a matured map
            decision = dataclasses.replace(decision, accepted=False, reason=refusal)
        if not decision.accepted:
            if key not in self.refused:
                log.warning("gate holds %s (map version %d): %s", key, candidate.map_version, decision.reason)
            self.refused[key] = decision.reason
            self.gate_refusals += 1
            return None
        if self.refused.pop(key, None) is not None:
            log.info("gate releases %s (map version %d): %s", key, candidate.map_version, decision.reason)
        self.published[key] = candidate
        return candidate

    def _merge_own(self, key: MapKey, state: MapState) -> tuple[str, Calibrator]:
        """(model version, merged state without a prior) of `key`: for pooling siblings."""
        field = MapField.parse(key)
        return field.model_version, merged(state.partials, None, calibrator_config(self._model_config(field.model)))

    def take_slice(self, max_keys: int | None = None) -> dict[MapKey, MapState]:
        """On the event loop: the oldest `max_keys` changed keys (all when None), each with a snapshot of its
        state (the partials dict copied; its bytes and the prior are never mutated), off the changed set."""
        keys = list(itertools.islice(self.dirty, max_keys))
        snapshot = {}
        for key in keys:
            del self.dirty[key]
            state = self.states[key]
            copy = MapState()
            copy.partials, copy.prior, copy.prior_chosen = dict(state.partials), state.prior, state.prior_chosen
            copy.delayed = dict(state.delayed)
            snapshot[key] = copy
        return snapshot

    def carry(self, keys: list[MapKey]) -> None:
        """On the event loop: keys a slice did not reach go back in front of the ones changed since."""
        if keys:
            self.dirty = dict.fromkeys(keys) | self.dirty
        self.carried = set(keys)

    def build_slice(
        self, snapshot: dict[MapKey, MapState], now_ms: int | None = None, deadline: float | None = None
    ) -> tuple[list[CalibrationMap], list[MapKey]]:
        """In the refresh thread: (the maps of the snapshot's keys built before `deadline`, a
        `time.perf_counter()` value; the keys left for `carry`). A key whose build raises is logged, counted
        and skipped (its previous map stays live; the next partial retries it): one key never stops the
        refresh. Order: the keys the last slice carried first, then the rest, each part parents before
        children (by depth) and oldest first: at least one key is built per slice, so every carried key
        is built before any newer one, however often a hot key changes."""
        keys = self.shrinkage.order(snapshot, first=self.carried)
        self.shrinkage.prepare(keys, lambda key: self._merge_own(key, snapshot[key]))
        maps = []
        for done, key in enumerate(keys):
            if deadline is not None and done and time.perf_counter() >= deadline:
                return maps, keys[done:]
            try:
                candidate = self.build(key, now_ms, snapshot[key])
            except Exception:
                self.build_errors += 1
                log.exception("map %s not built (skipped until its next partial)", key)
                continue
            if candidate is not None:
                maps.append(candidate)
        return maps, []

    def take_dirty(self, now_ms: int | None = None) -> list[CalibrationMap]:
        """The maps of all changed keys, in one call (replay, tests): `build_slice` of everything."""
        maps, _ = self.build_slice(self.take_slice(), now_ms)
        return maps
