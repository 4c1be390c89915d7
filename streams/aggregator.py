"""Partial calibrators of all partitions -> one calibration map per (model, segment key).

The aggregator keeps, per map key, the latest partial state of every partition for the newest
model versions, merges them (exact: sums add), runs the quality gate against the map it published
last, and hands accepted maps to the publisher. Pure state and logic; `streams.app` wires it to a
Faust agent, a table and a timer.

Map version (fencing): ``last_event_ms * 1000 + n_seen % 1000``. It grows with event time, so a
worker that lost its partitions, or a replay running behind, cannot overwrite a newer map; the
low digits separate refreshes that only added late labels.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from recalibrators.calibration_map import CalibrationMap
from recalibrators.calibrator import Calibrator
from recalibrators.gate import QualityGate
from recalibrators.segments import parse_segment_key
from streams.config import ModelConfig
from streams.records import pack, unpack

log = logging.getLogger("recal.aggregate")

MapKey = str  # "{model}:{segment_key}"
KEEP_VERSIONS = 2  # the newest model version, and the one before it for warm starts


def encode_partial(partition: int, model: str, version: str, segment: str, calibrator: Calibrator) -> bytes:
    return pack({"partition": partition, "model": model, "version": version, "segment": segment},
                [calibrator.to_bytes()])


class MapState:
    """What the aggregator holds for one map key: partial states per model version and partition."""

    def __init__(self) -> None:
        self.versions: dict[str, dict[int, bytes]] = {}  # model version -> partition -> calibrator bytes
        self.first_seen: dict[str, int] = {}  # model version -> order of arrival, newest = highest

    def add(self, version: str, partition: int, calibrator: bytes) -> None:
        if version not in self.versions:
            self.first_seen[version] = max(self.first_seen.values(), default=-1) + 1
            self.versions[version] = {}
            for stale in sorted(self.versions, key=self.first_seen.get)[:-KEEP_VERSIONS]:
                del self.versions[stale], self.first_seen[stale]
        self.versions[version][partition] = calibrator

    def ordered_versions(self) -> list[str]:
        return sorted(self.versions, key=self.first_seen.get)

    def encode(self) -> bytes:
        entries, blobs = [], []
        for version in self.ordered_versions():
            for partition, blob in sorted(self.versions[version].items()):
                entries.append([version, partition])
                blobs.append(blob)
        return pack({"entries": entries}, blobs)

    @classmethod
    def decode(cls, data: bytes) -> MapState:
        header, blobs = unpack(data)
        state = cls()
        for (version, partition), blob in zip(header["entries"], blobs, strict=True):
            state.add(version, partition, bytes(blob))
        return state


def merged(partials: dict[int, bytes], prior: CalibrationMap | None) -> Calibrator:
    """Merge partition partials in partition order (deterministic float summation)."""
    calibrators = [Calibrator.from_bytes(partials[p]) for p in sorted(partials)]
    total = Calibrator(calibrators[0].config, prior)
    for calibrator in calibrators:
        total = total.merge(calibrator)
    return total


class Aggregator:
    def __init__(self, model_config: Callable[[str], ModelConfig]) -> None:
        self._model_config = model_config
        self.states: dict[MapKey, MapState] = {}
        self.dirty: set[MapKey] = set()
        self.published: dict[MapKey, CalibrationMap] = {}  # what this process last handed out
        self.refused: dict[MapKey, str] = {}  # last gate refusal reason per key
        self.gate_refusals = 0

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
        calibrator = merged(state.versions[newest], prior)
        candidate = calibrator.to_map(
            model=model, model_version=newest, segment=parse_segment_key(segment),
            version=calibrator.last_event_ms * 1000 + calibrator.n_seen % 1000,
            updated_at=now_ms if now_ms is not None else int(time.time() * 1000),
        )
        current = self.published.get(key)
        gate = QualityGate(min_effective_samples=cfg.min_samples, max_abs_change=cfg.max_change or None,
                           max_rel_change=None)
        decision = gate.check(candidate, current if current and current.model_version == newest else None,
                              calibrator.holdout)
        if not decision.accepted:
            self.refused[key] = decision.reason
            self.gate_refusals += 1
            return None
        self.refused.pop(key, None)
        self.published[key] = candidate
        return candidate

    def take_dirty(self, now_ms: int | None = None) -> list[CalibrationMap]:
        dirty, self.dirty = sorted(self.dirty), set()
        return [m for key in dirty if (m := self.build(key, now_ms)) is not None]
