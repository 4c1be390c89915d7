"""The event-time join of one partition: impressions x clicks x conversions -> labeled examples.

Pure logic, no I/O. The stream shell feeds it validated events of one co-partitioned partition
(all keyed by impression_id) and collects the labeled examples it emits.

Semantics, per prediction ("slot") of an impression, with the model's window measured from the
impression's event time:
- population=impression: positive iff a label event (click or conversion, per the model) with
  ``imp.ts <= ts <= imp.ts + window`` was seen, else negative.
- population=click (post-click models): only impressions clicked within ``click_window`` are
  examples; positive iff an in-window conversion was seen too (in either order); no example when
  never clicked.
Every label is emitted when the slot's window closes: when the partition's event-time high mark
(the newest impression's ts: clicks and conversions do not move it, so a label topic read ahead of
the impressions cannot expire windows early), minus the model's allowed lateness, passes
``imp.ts + window``. Positives wait too, so that the
calibrators never see the newest window's positives without its negatives (which over-predicts).
Duplicate clicks/conversions count once. An action that beats its impression waits up to
``grace`` (event time) for it; then it is an orphan. Events whose windows closed are late.

State per pending impression: one dict slot keyed by the id string, holding one packed `bytes`
(ts, segment index and the predictions); the rare clicked/converted/resolved impressions have
small side dicts. ~170-200 bytes per pending impression, measured by `bench/bench_join.py`.
"""

from __future__ import annotations

import heapq
import struct
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import orjson

from streams.pipeline.config import ModelConfig
from streams.pipeline.events import CLICK, Action, Impression

_HEAD = struct.Struct("<qI")  # impression ts, segment index
_SLOT = struct.Struct("<HHd")  # model index, version index, score
_BUCKET_MS = 1_000


@dataclass
class Examples:
    """Columnar labeled examples; one row per (impression, model) label decision."""

    model: list[int] = field(default_factory=list)
    version: list[int] = field(default_factory=list)
    segment: list[int] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    label: list[int] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    holdout: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.label)

    def append(self, model: int, version: int, segment: int, score: float, label: int, ts: int, holdout: bool) -> None:
        self.model.append(model)
        self.version.append(version)
        self.segment.append(segment)
        self.score.append(score)
        self.label.append(label)
        self.ts.append(ts)
        self.holdout.append(holdout)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "model": np.asarray(self.model, dtype=np.uint16),
            "version": np.asarray(self.version, dtype=np.uint16),
            "segment": np.asarray(self.segment, dtype=np.uint32),
            "score": np.asarray(self.score, dtype=np.float64),
            "label": np.asarray(self.label, dtype=np.uint8),
            "ts": np.asarray(self.ts, dtype=np.int64),
            "holdout": np.asarray(self.holdout, dtype=bool),
        }


class Interner:
    """Strings (or segment dicts) <-> small integers, so state and records carry indices."""

    def __init__(self, items: list | None = None) -> None:
        self.items: list = []
        self._index: dict = {}
        for item in items or []:
            self.index(item)

    def index(self, item) -> int:
        key = tuple(sorted(item.items())) if isinstance(item, dict) else item
        idx = self._index.get(key)
        if idx is None:
            idx = self._index[key] = len(self.items)
            self.items.append(item)
        return idx

    def __len__(self) -> int:
        return len(self.items)


def is_holdout(impression_id: str, percent: int) -> bool:
    """Deterministic hold-back by id, so a replay holds back the same examples."""
    return zlib.crc32(impression_id.encode()) % 100 < percent


class PartitionJoin:
    """Join state and logic for one partition. Feed events; drain `examples` and `counters`."""

    def __init__(self, model_config: Callable[[str], ModelConfig], grace_ms: int, holdout_percent: int) -> None:
        self._model_config = model_config
        self.grace_ms = grace_ms
        self.holdout_percent = holdout_percent
        self.models = Interner()
        self.versions = Interner()
        self.segments = Interner()
        self._configs: list[ModelConfig] = []
        self.pending: dict[str, bytes] = {}
        self.clicked: dict[str, int] = {}
        self.converted: dict[str, int] = {}
        self.resolved: dict[str, int] = {}  # bitmask of slots already decided (emitted or late)
        self.early: dict[str, list[Action]] = {}
        # Ids decided and forgotten within the last one or two grace periods: a click for one of
        # them is late, not an orphan. Two rotating generations bound this to ~grace x rate ids.
        self.decided: set[str] = set()
        self.decided_prev: set[str] = set()
        self._decided_gen = 0
        self._buckets: dict[int, list[str]] = {}
        self._bucket_heap: list[int] = []
        self._early_buckets: dict[int, list[str]] = {}
        self._early_heap: list[int] = []
        self.high_mark = 0  # max impression event time seen on this partition: the join's clock
        self.examples = Examples()
        self.counters: Counter[str] = Counter()
        self.orphans: list[Action] = []

    # -- model configuration -------------------------------------------------------------------
    def model_index(self, name: str) -> int:
        idx = self.models.index(name)
        if idx == len(self._configs):
            self._configs.append(self._model_config(name))
        return idx

    def config_of(self, model_idx: int) -> ModelConfig:
        return self._configs[model_idx]

    # -- scheduling ----------------------------------------------------------------------------
    @staticmethod
    def _schedule(buckets: dict[int, list[str]], heap: list[int], due_ms: int, impression_id: str) -> None:
        bucket = due_ms // _BUCKET_MS
        ids = buckets.get(bucket)
        if ids is None:
            buckets[bucket] = [impression_id]
            heapq.heappush(heap, bucket)
        else:
            ids.append(impression_id)

    def _slot_due(self, ts: int, model_idx: int, impression_id: str) -> int:
        """When this slot's label is final: window end (+ lateness) in event time."""
        cfg = self._configs[model_idx]
        if cfg.population == "click" and not self._clicked_in_window(cfg, ts, impression_id):
            return ts + cfg.click_window_ms + cfg.allowed_lateness_ms
        return ts + cfg.window_ms + cfg.allowed_lateness_ms

    def _clicked_in_window(self, cfg: ModelConfig, ts: int, impression_id: str) -> bool:
        click_ts = self.clicked.get(impression_id)
        window = cfg.window_ms if cfg.label == "click" else cfg.click_window_ms
        return click_ts is not None and click_ts <= ts + window

    def _next_due(self, impression_id: str, entry: bytes, done: int) -> int | None:
        ts, _ = _HEAD.unpack_from(entry)
        dues = [
            self._slot_due(ts, model_idx, impression_id)
            for i, (model_idx, _, _) in enumerate(_SLOT.iter_unpack(entry[_HEAD.size :]))
            if not done >> i & 1
        ]
        return min(dues) if dues else None

    # -- events --------------------------------------------------------------------------------
    def _advance(self, ts: int) -> None:
        if ts > self.high_mark:
            self.high_mark = ts

    def add_impression(self, event: Impression) -> None:
        self._advance(event.ts)
        impression_id = event.impression_id
        if impression_id in self.pending:
            self.counters["duplicate_impression"] += 1
            return
        seg_idx = self.segments.index(event.segment)
        parts = [_HEAD.pack(event.ts, seg_idx)]
        late = 0
        for i, (model, version, score) in enumerate(event.predictions):
            model_idx = self.model_index(model)
            parts.append(_SLOT.pack(model_idx, self.versions.index(version), score))
            cfg = self._configs[model_idx]
            if event.ts + cfg.horizon_ms + cfg.allowed_lateness_ms <= self.high_mark:
                late |= 1 << i
        entry = b"".join(parts)
        if late == (1 << len(event.predictions)) - 1:
            self.counters["late_impression"] += 1
            self.decided.add(impression_id)
            return
        self.pending[impression_id] = entry
        if late:
            self.resolved[impression_id] = late
            self.counters["late_prediction"] += late.bit_count()
        for action in self.early.pop(impression_id, ()):
            self._apply(action, impression_id, entry)
        due = self._next_due(impression_id, entry, self.resolved.get(impression_id, 0))
        if due is None:
            self._forget(impression_id)
        else:
            self._schedule(self._buckets, self._bucket_heap, due, impression_id)

    def add_action(self, action: Action) -> None:
        entry = self.pending.get(action.impression_id)
        if entry is not None:
            self._apply(action, action.impression_id, entry)
        elif (
            action.ts + self.grace_ms <= self.high_mark
            or action.impression_id in self.decided
            or action.impression_id in self.decided_prev
        ):
            self.counters[f"late_{_kind(action)}"] += 1
        else:
            waiting = self.early.setdefault(action.impression_id, [])
            if any(a.kind == action.kind and a.action_id == action.action_id for a in waiting):
                self.counters[f"duplicate_{_kind(action)}"] += 1  # a resent click: the list stays bounded
                return
            if not waiting:
                self._schedule(self._early_buckets, self._early_heap, action.ts + self.grace_ms, action.impression_id)
            waiting.append(action)
            self.counters[f"early_{_kind(action)}"] += 1

    def _apply(self, action: Action, impression_id: str, entry: bytes) -> None:
        """Record a click/conversion against its impression. Labels are emitted only when the window
        closes, positives included: a calibrator fed positives early would see, at any moment, the
        last window's positives without their negatives, and over-predict."""
        is_click = action.kind == CLICK
        seen = self.clicked if is_click else self.converted
        if impression_id in seen:
            self.counters[f"duplicate_{_kind(action)}"] += 1
            return
        ts, _ = _HEAD.unpack_from(entry)
        relevant = False
        for model_idx, _, _ in _SLOT.iter_unpack(entry[_HEAD.size :]):
            cfg = self._configs[model_idx]
            if is_click:
                if cfg.label == "conversion" and cfg.population == "impression":
                    continue
                window = cfg.window_ms if cfg.label == "click" else cfg.click_window_ms
            elif cfg.label == "conversion":
                window = cfg.window_ms
            else:
                continue
            if ts <= action.ts <= ts + window:
                relevant = True
                break
        if relevant:
            seen[impression_id] = action.ts
        else:
            self.counters[f"late_{_kind(action)}"] += 1

    def _label(self, cfg: ModelConfig, ts: int, impression_id: str) -> int | None:
        """The final label of a slot whose window closed; None when not in the model's population."""
        if cfg.label == "click":
            return int(self._clicked_in_window(cfg, ts, impression_id))
        if cfg.population == "click" and not self._clicked_in_window(cfg, ts, impression_id):
            return None
        conversion_ts = self.converted.get(impression_id)
        return int(conversion_ts is not None and conversion_ts <= ts + cfg.window_ms)

    # -- event-time progress -------------------------------------------------------------------
    def expire(self) -> None:
        """Emit negatives (and drop unclicked post-click slots) whose windows have closed."""
        generation = self.high_mark // max(self.grace_ms, 1)
        if generation != self._decided_gen:
            self.decided_prev = self.decided if generation == self._decided_gen + 1 else set()
            self.decided, self._decided_gen = set(), generation
        limit = self.high_mark // _BUCKET_MS  # buckets strictly below hold only due entries
        heap, buckets = self._bucket_heap, self._buckets
        while heap and heap[0] < limit:
            for impression_id in buckets.pop(heapq.heappop(heap)):
                self._expire_one(impression_id)
        heap, buckets = self._early_heap, self._early_buckets
        while heap and heap[0] < limit:
            for impression_id in buckets.pop(heapq.heappop(heap)):
                for action in self.early.pop(impression_id, ()):
                    self.counters[f"orphan_{_kind(action)}"] += 1
                    self.orphans.append(action)

    def _expire_one(self, impression_id: str) -> None:
        entry = self.pending.get(impression_id)
        if entry is None:
            return
        ts, seg_idx = _HEAD.unpack_from(entry)
        done = self.resolved.get(impression_id, 0)
        holdout = None
        for i, (model_idx, version_idx, score) in enumerate(_SLOT.iter_unpack(entry[_HEAD.size :])):
            if done >> i & 1 or self._slot_due(ts, model_idx, impression_id) > self.high_mark:
                continue
            done |= 1 << i
            label = self._label(self._configs[model_idx], ts, impression_id)
            if label is None:
                continue  # a post-click model's slot on an impression never clicked
            if holdout is None:
                holdout = is_holdout(impression_id, self.holdout_percent)
            self.examples.append(model_idx, version_idx, seg_idx, score, label, ts, holdout)
        due = self._next_due(impression_id, entry, done)
        if due is None:
            self._forget(impression_id)
        else:
            self.resolved[impression_id] = done
            self._schedule(self._buckets, self._bucket_heap, due, impression_id)

    def _forget(self, impression_id: str) -> None:
        del self.pending[impression_id]
        self.decided.add(impression_id)
        self.clicked.pop(impression_id, None)
        self.converted.pop(impression_id, None)
        self.resolved.pop(impression_id, None)

    def drain(self) -> tuple[Examples, list[Action]]:
        """Hand over the examples and orphans produced since the last drain."""
        examples, orphans = self.examples, self.orphans
        self.examples, self.orphans = Examples(), []
        return examples, orphans

    # -- snapshots -----------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """The whole join state as bytes (orjson header + packed entries); no pickle."""
        ids = list(self.pending)
        entries = [self.pending[i] for i in ids]
        header = {
            "high_mark": self.high_mark,
            "models": self.models.items,
            "versions": self.versions.items,
            "segments": self.segments.items,
            "ids": ids,
            "lengths": [len(e) for e in entries],
            "clicked": self.clicked,
            "converted": self.converted,
            "resolved": self.resolved,
            "early": {k: [list(a) for a in v] for k, v in self.early.items()},
            "decided": sorted(self.decided),
            "decided_prev": sorted(self.decided_prev),
            "decided_gen": self._decided_gen,
        }
        head = orjson.dumps(header)
        return struct.pack("<I", len(head)) + head + b"".join(entries)

    @classmethod
    def restore(
        cls, data: bytes, model_config: Callable[[str], ModelConfig], grace_ms: int, holdout_percent: int
    ) -> PartitionJoin:
        join = cls(model_config, grace_ms, holdout_percent)
        (head_len,) = struct.unpack_from("<I", data)
        header = orjson.loads(data[4 : 4 + head_len])
        join.high_mark = header["high_mark"]
        for name in header["models"]:
            join.model_index(name)
        join.versions = Interner(header["versions"])
        join.segments = Interner(header["segments"])
        join.clicked, join.converted = header["clicked"], header["converted"]
        join.resolved = header["resolved"]
        join.decided, join.decided_prev = set(header["decided"]), set(header["decided_prev"])
        join._decided_gen = header["decided_gen"]
        pos = 4 + head_len
        for impression_id, length in zip(header["ids"], header["lengths"], strict=True):
            entry = data[pos : pos + length]
            pos += length
            join.pending[impression_id] = entry
            due = join._next_due(impression_id, entry, join.resolved.get(impression_id, 0))
            join._schedule(join._buckets, join._bucket_heap, due, impression_id)
        for impression_id, actions in header["early"].items():
            join.early[impression_id] = [Action(*a) for a in actions]
            first = min(a.ts for a in join.early[impression_id])
            join._schedule(join._early_buckets, join._early_heap, first + grace_ms, impression_id)
        return join


def _kind(action: Action) -> str:
    return "click" if action.kind == CLICK else "conversion"
