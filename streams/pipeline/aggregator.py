"""Partial calibrators of all partitions -> one calibration map per (model, model version, segment key).

Every live model version is calibrated at once and gets its own maps: the key (of the partials topic's
records and the Redis field) is `recalibrators.serving.keys.MapField`. The aggregator
keeps, per key, the latest partial state of every partition, merges them (exact: sums add), runs the
quality gate against the map of that key it published last, and hands accepted maps to the publisher.
Pure state and logic; `streams.pipeline.partials_consumer` feeds it, `streams.pipeline.app`'s timer builds.

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
key's first partial arrives and stored in the partials topic (`streams.pipeline.partials_topic`): a restart or a
move keeps it.

Refresh off the event loop, in slices (`streams.pipeline.refresh`): `take_slice` runs on the loop and takes
the oldest changed keys (at most `max_keys`) with a copy of their partials; `build_slice` builds them until its
deadline and says what it changed (`Built`); `carry` puts the keys it did not reach back at the front (oldest
first: no key starves). A refresh costs what the changed keys cost, never all keys. In the worker the build
runs in a process of its own (`streams.pipeline.map_builder`), in an aggregator that only builds and owns the
build side (`published`, `judged`, `refused`, `metrics`, shrinkage, drift); `record` copies what the loop
reads of it (the published maps, refusals, drift alerts, counters) into the loop's aggregator.

Held-back examples (the join's `holdout_percent`) are what the gate judges a fit on, so the gate's candidate
is fitted without them; the map published once it passes is fitted with them too (`with_held_back`): holding
back 10% must not cost the served map 10% of its examples, which a young model version cannot spare. The next
gate compares the next held-out candidate with this held-out fit (`judged`), never with a map that saw them.

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

from recalibrators.calibration_map import CalibrationMap
from recalibrators.calibrator import Calibrator
from recalibrators.calibrator_codec import peek
from recalibrators.gate import QualityGate, prior_contradicted
from recalibrators.segments import MODEL_WIDE, parse_segment_key
from recalibrators.serving.keys import MapField
from streams.pipeline.config import ModelConfig
from streams.pipeline.delayed import corrected_candidate, delay_config, immature_refusal, merge_delayed
from streams.pipeline.drift import SilentDrift
from streams.pipeline.map_metrics import DriftAlerts, map_metrics
from streams.pipeline.map_state import (
    WARM_START_Z,
    MapState,
    encode_partial,
    merged,
    warm_start_prior,
    with_held_back,
)
from streams.pipeline.partials import calibrator_config
from streams.pipeline.records import unpack
from streams.pipeline.shrinkage import Shrinkage
from streams.pipeline.version_infos import VersionInfo, VersionInfos
from streams.pipeline.versions import ModelVersions

# MapState, encode_partial, merged, with_held_back, VersionInfo and WARM_START_Z moved; still importable here.
__all__ = [
    "WARM_START_Z",
    "Aggregator",
    "MapKey",
    "MapState",
    "VersionInfo",
    "encode_partial",
    "merged",
    "with_held_back",
]

log = logging.getLogger("recal.aggregate")

MapKey = str  # str(MapField): "{esc(model)}:{esc(model_version)}:{segment_key}"


@dataclasses.dataclass
class Built:
    """What building one slice changed: `maps`, the maps the gate passed (key -> map, in build order); `left`,
    the keys the deadline left for `carry`; for every key built, the gate's refusal (None: passed) and its drift
    alert; the counters' increments."""

    maps: dict[MapKey, CalibrationMap]
    left: list[MapKey]
    refused: dict[MapKey, str | None]
    drift: dict[MapKey, bool]
    gate_refusals: int = 0
    build_errors: int = 0
    metrics_seconds: float = 0.0


class Aggregator:
    """Merges partials into maps, gates them, tracks model versions; see the module docstring."""

    def __init__(self, model_config: Callable[[str], ModelConfig], *, with_metrics: bool = True) -> None:
        self._model_config = model_config
        self.states: dict[MapKey, MapState] = {}
        self.dirty: dict[MapKey, None] = {}  # changed keys, oldest first (an ordered set)
        self.carried: set[MapKey] = set()  # keys the last refresh slice left unbuilt (see `carry`)
        self.published: dict[MapKey, CalibrationMap] = {}  # what this process last handed out
        self.judged: dict[MapKey, CalibrationMap] = {}  # the held-out fit the gate passed for `published`
        self.refused: dict[MapKey, str] = {}  # keys the gate holds back -> its reason (with the numbers)
        self.gate_refusals = 0
        self.with_metrics = with_metrics
        self.metrics: dict[MapKey, dict[str, float | str]] = {}  # latest evaluation per key (gate or not)
        self.drift_alerts = DriftAlerts(model_config)
        self.build_errors = 0  # keys whose map build raised (skipped, see take_dirty)
        self.metrics_seconds = 0.0  # time spent computing map metrics (cost of the dashboard numbers)
        self.live = ModelVersions(model_config, report_retired=True)
        self.version_infos = VersionInfos()  # what `{prefix}:versions:{model}` shows (see take_versions)
        self.dropped_partials = 0  # partials of a version beyond the cap (too_many_versions)
        self.retired_keys: list[MapKey] = []  # keys retired or moved away whose build-side state is still held
        self.chosen_priors: list[MapKey] = []  # keys whose warm-start prior was chosen since `take_chosen_priors`
        self.retired_records: list[tuple[MapKey, list[int]]] = []  # (retired key, its partitions): see take_retired
        self.shrinkage = Shrinkage(model_config)  # models with shrink_to_parent: children toward parents
        self.silent_drift = SilentDrift()  # models with a drift_detector: forget faster on a detected change

    @property
    def drift(self) -> dict[MapKey, bool]:
        return self.drift_alerts.alerts

    def add(self, key: MapKey, record: bytes, *, choose_prior: bool = True) -> MapState | None:
        """Fold one partial record in. None: dropped, because the model already has its cap of live versions.
        `choose_prior`: a new key takes its warm-start prior now (`take_chosen_priors` then names it); False while
        a partition is read from its start, where the prior record the key's first owner wrote may still follow
        (`adopt_prior`) and the source version's partials may not all be in yet (`choose_priors` after)."""
        header, blobs = unpack(record)
        field = MapField(header["model"], header["model_version"], header["segment"])
        if key != str(field):
            raise ValueError(f"partial for {field} under key {key}")
        last_event_ms, _ = peek(blobs[0])
        if not self.live.admit(field.model, field.model_version, last_event_ms):
            self.dropped_partials += 1
            return None
        current = self.states.get(key) or MapState()
        if choose_prior and not current.prior_chosen:
            self._choose_prior(key, current)
        current.partials[header["partition"]] = bytes(blobs[0])
        if len(blobs) > 1:
            current.delayed[header["partition"]] = bytes(blobs[1])
        self.states[key] = current
        self.dirty.setdefault(key)  # an already changed key keeps its place in the queue
        if field.segment_key == MODEL_WIDE:
            self.version_infos.track(field, current.examples(), last_event_ms)
        return current

    def _choose_prior(self, key: MapKey, state: MapState) -> None:
        field = MapField.parse(key)
        state.prior = warm_start_prior(field, self._model_config(field.model), self.live, self.published, self.states)
        state.prior_chosen = True
        self.chosen_priors.append(key)

    def choose_priors(self, keys: list[MapKey]) -> None:
        """The warm-start prior of each of `keys` that has none chosen yet (a partition read from its start)."""
        for key in keys:
            state = self.states.get(key)
            if state is not None and not state.prior_chosen:
                self._choose_prior(key, state)

    def take_chosen_priors(self) -> list[tuple[MapKey, str | None]]:
        """(key, prior JSON or None) of every prior chosen since the last call: to be stored with the key."""
        chosen, self.chosen_priors = self.chosen_priors, []
        return [(key, self.states[key].prior_json()) for key in dict.fromkeys(chosen) if key in self.states]

    def adopt_prior(self, key: MapKey, prior_json: str | None) -> None:
        """The prior stored with the key (its record may come before the key's partials: compaction keeps only
        the latest record of each)."""
        state = self.states.setdefault(key, MapState())
        if state.prior_chosen and state.prior_json() == prior_json:
            return
        state.adopt_prior(prior_json)
        if state.partials:
            self.dirty.setdefault(key)

    def forget(self, keys: list[MapKey]) -> None:
        """On the event loop: drop the state of keys another aggregator owns now (a rebalance moved them)."""
        for key in keys:
            self.states.pop(key, None)
            self.dirty.pop(key, None)
        self.retired_keys.extend(keys)

    def republish_all(self) -> list[MapKey]:
        """Redis lost its maps: rebuild every key this aggregator owns, published without a change bound. Returns
        those keys, for `unpublish` in the aggregator that builds."""
        for key, state in self.states.items():
            if state.partials:
                self.dirty.setdefault(key)
        keys = list(self.states)
        self.unpublish(keys)
        return keys

    def unpublish(self, keys: list[MapKey]) -> None:
        """Forget what was published for `keys`: their next build is gated against nothing."""
        for key in keys:
            self.published.pop(key, None)
            self.judged.pop(key, None)

    def take_versions(self) -> dict[str, dict[str, VersionInfo]]:
        """Retire idle versions; the version infos of every model that changed, for the publisher."""
        for model, live in self.live.models.items():
            for model_version in live.take_retired():
                log.info(
                    "model %s version %s retired: no labels for %d ms of event time", model, model_version, live.idle_ms
                )
                self.version_infos.retire(model, model_version)
                self._forget_partials(model, model_version)
        return self.version_infos.take()

    def _forget_partials(self, model: str, model_version: str) -> None:
        """On the event loop: drop a retired version's partials (the bulk of its memory: partitions x calibrator
        state per key) and queue its keys for the build side, whose shrinkage holds their merged states.
        Its maps stay (published, and the gate's baseline should it come back: the join partitions' partials,
        absolute states, bring its state back)."""
        retired = [k for k in self.states if MapField.parse(k)[:2] == (model, model_version)]
        for key in retired:
            self.retired_records.append((key, sorted(self.states.pop(key).partials)))
            self.dirty.pop(key, None)
        self.retired_keys.extend(retired)

    def take_retired(self) -> list[tuple[MapKey, list[int]]]:
        """(key, join partitions) of every key retired since the last call: their partials topic records are to
        be deleted, or every take-over would read a retired version's state back, for good."""
        retired, self.retired_records = self.retired_records, []
        return retired

    def remove(self, key: MapKey, partition: int) -> None:
        """A deleted partial (a tombstone in the partials topic): a retired key read back from the topic."""
        state = self.states.get(key)
        if state is None:
            return
        state.partials.pop(partition, None)
        state.delayed.pop(partition, None)
        if not state.partials:
            del self.states[key]
            self.dirty.pop(key, None)

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
        full = with_held_back(calibrator)
        if corrected:  # open windows folded in (streams.pipeline.delayed); map_version counts them too
            delayed = merge_delayed(cfg, state.delayed)  # decoded and merged once for both fits
            candidate = corrected_candidate(cfg, full, delayed, **meta)
            judged = corrected_candidate(cfg, calibrator, delayed, **meta)  # for the gate
        else:
            candidate = self.shrinkage.fit(key, full, meta) or full.to_map(**meta)
            judged = self.shrinkage.fit(key, calibrator, meta, pool=False) or calibrator.to_map(**meta)  # for the gate
        self.shrinkage.fitted[key] = candidate
        if self.with_metrics:  # on the held-back examples: of the judged fit, which has not seen them
            started = time.perf_counter()
            metrics = map_metrics(judged, calibrator)
            if cfg.drift_detector:
                metrics["drift_detections"] = self.silent_drift.detections(key)
            candidate = candidate.with_meta(metrics={**(candidate.metrics_dict or {}), **metrics})
            self.metrics[key] = metrics
            self.drift_alerts.check(key, metrics)
            self.metrics_seconds += time.perf_counter() - started
        decision = self._gate(cfg, judged).check(judged, self.judged.get(key), calibrator.holdout)
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
        self.published[key], self.judged[key] = candidate, judged
        return candidate

    def _merge_own(self, key: MapKey, state: MapState) -> tuple[str, Calibrator]:
        """(model version, merged state without a prior, held-back examples included) of `key`: for pooling
        siblings, as the published fits see them."""
        field = MapField.parse(key)
        own = merged(state.partials, None, calibrator_config(self._model_config(field.model)))
        return field.model_version, with_held_back(own)

    def take_slice(self, max_keys: int | None = None) -> dict[MapKey, MapState]:
        """On the event loop: the oldest `max_keys` changed keys (all when None), each with a snapshot of its
        state (the partials dict copied; its bytes and the prior are never mutated), off the changed set."""
        keys = list(itertools.islice(self.dirty, max_keys))
        snapshot = {}
        for key in keys:
            del self.dirty[key]
            snapshot[key] = self.states[key].copy()
        return snapshot

    def carry(self, keys: list[MapKey]) -> None:
        """On the event loop: keys a slice did not reach go back in front of the ones changed since."""
        if keys:
            self.dirty = dict.fromkeys(keys) | self.dirty
        self.carried = set(keys)

    def build_slice(
        self, snapshot: dict[MapKey, MapState], now_ms: int | None = None, deadline: float | None = None
    ) -> Built:
        """The maps of the snapshot's keys built before `deadline` (a `time.perf_counter()` value) and the keys
        left for `carry`, with what the build changed (`Built`). A key whose build raises is logged, counted
        and skipped (its previous map stays live; the next partial retries it): one key never stops the
        refresh. Order: the keys the last slice carried first, then the rest, each part parents before
        children (by depth) and oldest first: at least one key is built per slice, so every carried key
        is built before any newer one, however often a hot key changes."""
        while self.retired_keys:  # pruned here: the shrinkage's states belong to the build side
            self.shrinkage.forget(self.retired_keys.pop())
        counters = (self.gate_refusals, self.build_errors, self.metrics_seconds)
        keys = self.shrinkage.order(snapshot, first=self.carried)
        self.shrinkage.prepare(keys, lambda key: self._merge_own(key, snapshot[key]))
        maps: dict[MapKey, CalibrationMap] = {}
        built: list[MapKey] = []
        for key in keys:
            if deadline is not None and built and time.perf_counter() >= deadline:
                break
            built.append(key)
            try:
                candidate = self.build(key, now_ms, snapshot[key])
            except Exception:
                self.build_errors += 1
                log.exception("map %s not built (skipped until its next partial)", key)
                continue
            if candidate is not None:
                maps[key] = candidate
        alerts = self.drift_alerts.alerts
        return Built(
            maps,
            keys[len(built) :],
            refused={key: self.refused.get(key) for key in built},
            drift={key: alerts[key] for key in built if key in alerts},
            gate_refusals=self.gate_refusals - counters[0],
            build_errors=self.build_errors - counters[1],
            metrics_seconds=self.metrics_seconds - counters[2],
        )

    def record(self, built: Built) -> None:
        """On the event loop: a slice another aggregator built, into this one's copy of the build side (the
        published maps warm starts and the Redis check read, the refusals and drift alerts `/stats` shows)."""
        self.published.update(built.maps)
        for key, reason in built.refused.items():
            if reason is None:
                self.refused.pop(key, None)
            else:
                self.refused[key] = reason
        self.drift_alerts.alerts.update(built.drift)
        self.gate_refusals += built.gate_refusals
        self.build_errors += built.build_errors
        self.metrics_seconds += built.metrics_seconds

    def take_dirty(self, now_ms: int | None = None) -> list[CalibrationMap]:
        """The maps of all changed keys, in one call (replay, tests): `build_slice` of everything."""
        return list(self.build_slice(self.take_slice(), now_ms).maps.values())
