"""A deliberately plain reference of the join's batch semantics (dicts and loops, straight from the
spec in `streams.pipeline.join.partition`), which the columnar `PartitionJoin` must match exactly."""

from __future__ import annotations

import math
import zlib
from collections import Counter

from streams.pipeline.config import ModelConfig
from streams.pipeline.events import CLICK, Action, Impression


def _kind(action: Action) -> str:
    return "click" if action.kind == CLICK else "conversion"


class ReferenceJoin:
    def __init__(self, configs: dict[str, ModelConfig], grace_ms: int, holdout_percent: int, clock_skew_ms: int):
        self.configs, self.grace, self.holdout, self.skew = configs, grace_ms, holdout_percent, clock_skew_ms
        self.pending: dict[str, dict] = {}
        self.clicked: dict[str, int] = {}
        self.converted: dict[str, int] = {}
        self.early: dict[str, list[Action]] = {}
        self.decided: dict[str, int] = {}  # id -> generation it was decided in
        self.generation = 0
        self.clock = 0
        self.recent_ts: list[int] = []
        self.counters: Counter[str] = Counter()
        self.examples: list[tuple] = []
        self.orphans: list[Action] = []

    def _recent(self, impression_id: str) -> bool:
        return impression_id in self.decided and 0 <= self.generation - self.decided[impression_id] <= 1

    def _window(self, cfg: ModelConfig, kind: int) -> int | None:
        if kind == CLICK:
            if cfg.label == "click":
                return cfg.window_ms
            return cfg.click_window_ms if cfg.population == "click" else None
        return cfg.window_ms if cfg.label == "conversion" else None

    def _clicked_in_window(self, cfg: ModelConfig, imp_ts: int, impression_id: str) -> bool:
        click = self.clicked.get(impression_id)
        window = cfg.window_ms if cfg.label == "click" else cfg.click_window_ms
        return click is not None and click <= imp_ts + window

    def process(self, impressions: list[Impression], actions: list[Action], now_ms: int | None) -> None:
        before = self.clock
        seen: set[str] = set()
        for e in impressions:
            if e.impression_id in self.pending or e.impression_id in seen or self._recent(e.impression_id):
                self.counters["duplicate_impression"] += 1
                continue
            seen.add(e.impression_id)
            late = {
                i
                for i, (m, _, _) in enumerate(e.predictions)
                if e.ts + self.configs[m].horizon_ms + self.configs[m].allowed_lateness_ms <= before
            }
            if len(late) == len(e.predictions):
                self.counters["late_impression"] += 1
                self.decided[e.impression_id] = self.generation
                continue
            self.counters["late_prediction"] += len(late)
            self.pending[e.impression_id] = {"imp": e, "done": late}
            for action in self.early.pop(e.impression_id, []):
                self._apply(action)
        for action in actions:
            if action.impression_id in self.pending:
                self._apply(action)
            elif self._recent(action.impression_id) or action.ts + self.grace <= before:
                self.counters[f"late_{_kind(action)}"] += 1
            elif any(
                a.kind == action.kind and a.action_id == action.action_id
                for a in self.early.get(action.impression_id, [])
            ):
                self.counters[f"duplicate_{_kind(action)}"] += 1  # the same early action resent
            else:
                self.early.setdefault(action.impression_id, []).append(action)
                self.counters[f"early_{_kind(action)}"] += 1
        if impressions:  # the newest; with a wall clock, one beyond wall + skew at most the p99 of the last 4,096
            self.recent_ts = (self.recent_ts + [e.ts for e in impressions])[-4096:]
            candidate = max(e.ts for e in impressions)
            if now_ms is not None and candidate > now_ms + self.skew:
                ranked = sorted(self.recent_ts)
                in_bound = [e.ts for e in impressions if e.ts <= now_ms + self.skew]
                quantile = min(candidate, ranked[math.ceil(0.99 * (len(ranked) - 1))])
                candidate = max(max(in_bound, default=self.clock), quantile)
            self.clock = max(self.clock, candidate)

    def _apply(self, action: Action) -> None:
        seen = self.clicked if action.kind == CLICK else self.converted
        if action.impression_id in seen:
            self.counters[f"duplicate_{_kind(action)}"] += 1
            return
        imp = self.pending[action.impression_id]["imp"]
        for m, _, _ in imp.predictions:
            window = self._window(self.configs[m], action.kind)
            if window is not None and imp.ts <= action.ts <= imp.ts + window:
                seen[action.impression_id] = action.ts
                return
        self.counters[f"late_{_kind(action)}"] += 1

    def expire(self) -> None:
        self.generation = self.clock // self.grace
        for impression_id, entry in list(self.pending.items()):
            imp, done = entry["imp"], entry["done"]
            for i, (m, version, score) in enumerate(imp.predictions):
                cfg = self.configs[m]
                clicked = self._clicked_in_window(cfg, imp.ts, impression_id)
                if cfg.population == "click" and not clicked:
                    due = imp.ts + cfg.click_window_ms + cfg.allowed_lateness_ms
                else:
                    due = imp.ts + cfg.window_ms + cfg.allowed_lateness_ms
                if i in done or due > self.clock:
                    continue
                done.add(i)
                if cfg.label == "click":
                    label = int(clicked)
                elif cfg.population == "click" and not clicked:
                    continue
                else:
                    conversion = self.converted.get(impression_id)
                    label = int(conversion is not None and conversion <= imp.ts + cfg.window_ms)
                holdout = zlib.crc32(impression_id.encode()) % 100 < self.holdout
                segment = {d: v for d, v in imp.segment.items() if any(d in dims for dims in cfg.segment_by)}
                self.examples.append((m, version, segment, score, label, imp.ts, holdout))
            if len(done) == len(imp.predictions):
                del self.pending[impression_id]
                self.clicked.pop(impression_id, None)
                self.converted.pop(impression_id, None)
                self.decided[impression_id] = self.generation
        for impression_id in list(self.early):
            waiting = self.early[impression_id]
            if waiting[0].ts + self.grace <= self.clock:
                del self.early[impression_id]
                self.counters.update(f"orphan_{_kind(a)}" for a in waiting)
                self.orphans.extend(waiting)
