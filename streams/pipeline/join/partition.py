"""The event-time join of one partition, one batch at a time: impressions x clicks x conversions ->
labeled examples. Pure logic, no I/O.

Per batch (`process`), in this order:
1. Impressions. Duplicates (of a pending impression, of one decided within the last grace periods, or
   earlier in the batch) count once. A prediction whose label can no longer change (its model's
   horizon plus lateness is behind the clock) is late; an impression all of whose predictions are late
   is dropped (`late_impression`). The rest are appended to the columnar store, their predictions
   ("slots") scheduled at the time their label is final were nobody to click: window (or, for a
   post-click model, click window) plus allowed lateness. Actions that waited for them are applied.
2. Clicks and conversions, in order (the rare path: per event). One for a pending impression is
   applied if some prediction's window covers it (else `late_*`), once (`duplicate_*`); one for an
   impression decided recently, or older than the grace period, is late; any other waits up to
   `grace` for its impression (`early_*`), then is an orphan (`orphan_*`, dead-lettered).
3. The clock moves to the batch's newest impression, but given wall time (`now_ms`) one ahead of wall
   time plus `clock_skew_ms` moves it no further than a high quantile of recent impression times
   (`JoinClock`): one impression an hour ahead cannot close every window at once (#13 item 1).
   Clicks never move it.

`expire()` then emits every slot due by the clock: columnar for untouched impressions (label 0, or no
example for a post-click model), through the model's `LabelRule` for the clicked or converted ones.
Positives wait for their window too: a calibrator fed positives early would see the newest window's
positives without its negatives, and over-predict.

>>> from streams.pipeline.config import ModelConfig
>>> from streams.pipeline.events import Impression, Action, CLICK
>>> join = PartitionJoin({"ctr": ModelConfig(window_ms=60_000, allowed_lateness_ms=0)}.get, 60_000, 0)
>>> join.add_impression(Impression("a", 1_700_000_000_000, {"placement": "feed"}, [("ctr", "v1", 0.2)]))
>>> join.add_impression(Impression("b", 1_700_000_000_000, {"placement": "feed"}, [("ctr", "v1", 0.1)]))
>>> join.add_action(Action(CLICK, "a", 1_700_000_001_000, "c-1"))
>>> join.add_impression(Impression("tick", 1_700_000_060_000, {}, [("ctr", "v1", 0.5)]))
>>> join.expire()
>>> examples, orphans = join.drain()
>>> sorted(zip(examples.arrays()["score"].tolist(), examples.arrays()["label"].tolist()))
[(0.1, 0), (0.2, 1)]
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable
from operator import attrgetter

import msgspec
import numpy as np
import orjson

from streams.pipeline.config import ModelConfig
from streams.pipeline.events import CLICK, Action, Impression, ImpressionEvent, Prediction
from streams.pipeline.join import snapshot as snapshot_format
from streams.pipeline.join.clock import JoinClock
from streams.pipeline.join.due import DueQueue
from streams.pipeline.join.early import EarlyActions
from streams.pipeline.join.facts import DelayFacts
from streams.pipeline.join.ids import IdTable, RecentIds, id_keys, unseen
from streams.pipeline.join.rules import RuleBook
from streams.pipeline.join.store import PendingStore
from streams.pipeline.join.tables import Labeled, Tables
from streams.pipeline.join.touches import Touches

_COMPACT_MIN = 4_096
_predictions, _score, _segment = attrgetter("predictions"), attrgetter("score"), attrgetter("segment")


def is_holdout(impression_id: str, percent: int) -> bool:
    """Deterministic hold-back by id, so a replay holds back the same examples."""
    return zlib.crc32(impression_id.encode()) % 100 < percent


def _kind(action: Action) -> str:
    return "click" if action.kind == CLICK else "conversion"


def impression_event(event: Impression) -> ImpressionEvent:
    """A decoded `Impression` as the batch path's `ImpressionEvent` (segment re-encoded as JSON text)."""
    predictions = [Prediction(m, v, s) for m, v, s in event.predictions]
    return ImpressionEvent(event.impression_id, event.ts, predictions, msgspec.Raw(orjson.dumps(event.segment)))


class PartitionJoin:
    """Join state and logic for one partition. Feed batches; drain examples, orphans and `counters`."""

    def __init__(
        self,
        model_config: Callable[[str], ModelConfig],
        grace_ms: int,
        holdout_percent: int,
        clock_skew_ms: int = 1_000,
    ) -> None:
        self.grace_ms = grace_ms
        self.holdout_percent = holdout_percent
        self._clock = JoinClock(clock_skew_ms)
        self.tables = Tables(RuleBook(model_config))
        self.pending = PendingStore()
        self.ids = IdTable()
        self.recent = RecentIds(grace_ms)
        self.due = DueQueue()
        self.early = EarlyActions(grace_ms)
        self.counters: Counter[str] = Counter()
        self.orphans: list[Action] = []
        self._out: list[dict[str, np.ndarray]] = []
        self.facts = DelayFacts(self.pending)  # open windows of label_delay = "corrected" models
        self.touches = Touches(self.pending, self.tables, self.due, self.facts)  # clicks, conversions, rules

    # the interned tables, for readers of drained examples
    models = property(lambda self: self.tables.models)
    versions = property(lambda self: self.tables.versions)
    segments = property(lambda self: self.tables.segments)
    clock = property(lambda self: self._clock.value)  # the join's event time (see join.clock)
    clicked = property(lambda self: self.touches.clicked)  # touched impressions only: id -> action time
    converted = property(lambda self: self.touches.converted)
    high_mark = clock

    # -- one batch -----------------------------------------------------------------------------
    def process(
        self,
        impressions: list[ImpressionEvent],
        actions: list[Action],
        now_ms: int | None = None,
        id_bytes: list[bytes] | None = None,
    ) -> None:
        """Join one batch (impressions first, then actions); `now_ms`: wall time (None: no bound)."""
        before = self.clock
        if impressions:
            ts = self._add_impressions(impressions, id_bytes or [e.impression_id.encode() for e in impressions])
        self._add_actions(actions, before)
        if impressions:
            self._clock.advance(ts, now_ms)

    def _add_impressions(self, impressions: list[ImpressionEvent], ids: list[bytes]) -> np.ndarray:
        n = len(impressions)
        keys = id_keys(ids)
        ts = np.fromiter(map(attrgetter("ts"), impressions), np.int64, n)
        n_slots = np.fromiter(map(len, map(_predictions, impressions)), np.int64, n)
        groups = self.tables.groups_of(impressions, n_slots)
        scores = np.fromiter((p.score for e in impressions for p in e.predictions), np.float64, int(n_slots.sum()))
        fresh = unseen(keys, ids, self.ids, self.pending.id_of, self.recent, self.counters)
        slot_imp = np.repeat(np.arange(n), n_slots)
        late_slot = ts[slot_imp] + self.tables.rules.late_after[self.tables.group_model[groups]] <= self.clock
        n_late = np.bincount(slot_imp, weights=late_slot, minlength=n).astype(np.int64)
        all_late = fresh & (n_late == n_slots)
        if all_late.any():
            self.counters["late_impression"] += int(all_late.sum())
            self.recent.add(keys[all_late])
        insert = fresh & ~all_late
        self.counters["late_prediction"] += int(n_late[insert].sum())
        chosen = np.flatnonzero(insert)
        if not len(chosen):
            return ts
        chosen_ids = [ids[i] for i in chosen.tolist()] if len(chosen) < n else ids
        crc = np.fromiter(map(zlib.crc32, chosen_ids), np.int64, len(chosen))
        in_slots = insert[slot_imp]
        open_slots = ~late_slot[in_slots]
        first_row, first_slot = self.pending.add(
            keys[chosen],
            chosen_ids,
            ts[chosen],
            crc % 100 < self.holdout_percent,
            n_slots[chosen],
            group=groups[in_slots],
            score=scores[in_slots],
            open=open_slots,
        )
        self.ids.insert(keys[chosen], np.arange(first_row, first_row + len(chosen)))
        slot_index = np.arange(first_slot, first_slot + len(open_slots))[open_slots]
        model = self.tables.group_model[groups[in_slots][open_slots]]
        due = ts[slot_imp[in_slots][open_slots]] + self.tables.rules.untouched_due[model]
        self.due.push(due, slot_index)
        self.facts.impressions(slot_index, model, self.tables.rules.rules)
        if self.early:
            for i, row in zip(chosen.tolist(), range(first_row, first_row + len(chosen)), strict=True):
                waiting = self.early.pop(impressions[i].impression_id, None)
                for action in waiting or ():
                    self._apply(action, row)
        return ts

    def _add_actions(self, actions: list[Action], clock: int) -> None:
        if not actions:
            return
        ids = [a.impression_id.encode() for a in actions]
        keys = id_keys(ids)
        rows = self.ids.lookup(keys).tolist()
        recent = self.recent.contains(keys).tolist()
        for action, row, id_, decided in zip(actions, rows, ids, recent, strict=True):
            if row >= 0 and self.pending.id_of(row) == id_:
                self._apply(action, row)
            elif decided or action.ts + self.grace_ms <= clock:
                self.counters[f"late_{_kind(action)}"] += 1
            else:
                waited = self.early.wait(action)
                self.counters[f"{'early' if waited else 'duplicate'}_{_kind(action)}"] += 1

    def _apply(self, action: Action, row: int) -> None:
        refused = self.touches.apply(action, row)
        if refused is not None:
            self.counters[f"{refused}_{_kind(action)}"] += 1

    # -- event-time progress -------------------------------------------------------------------
    def expire(self) -> None:
        """Emit the slots due by the clock; orphan the actions that waited past the grace period."""
        self.recent.advance(self.clock)
        if self.pending.dead > max(_COMPACT_MIN, len(self.pending)):
            self._compact()
        slots = self.due.pop(self.clock)
        if len(slots):
            self._emit(slots)
        for action in self.early.orphans(self.clock):
            self.counters[f"orphan_{_kind(action)}"] += 1
            self.orphans.append(action)

    def _emit(self, slots: np.ndarray) -> None:
        store = self.pending
        slots = slots[store.slots.open[slots]]
        _, first = np.unique(slots, return_index=True)  # a rescheduled slot may come twice
        slots = slots[np.sort(first)]
        rows = store.slots.row[slots]
        groups = store.slots.group[slots]
        model = self.tables.group_model[groups]
        label, example, final = self.touches.decide(rows, model, self.clock)
        closing = slots[final]
        keep = example & final
        if keep.any():
            self._out.append(store.columns(slots[keep], label[keep]))
        self._forget(store.close(closing))

    def _forget(self, rows: np.ndarray) -> None:
        if not len(rows):
            return
        keys = self.pending.rows.key[rows]
        self.ids.delete(keys)
        self.recent.add(keys)
        self.touches.forget(rows)

    def _compact(self) -> None:
        new_row, new_slot = self.pending.compact()
        self.ids.remap(new_row)
        self.due.remap(new_slot)
        if not self._out and not self.facts:  # drained examples and facts hold indices into the tables
            slots = self.pending.slots
            slots.group[:] = self.tables.prune(slots.group)

    def drain(self) -> tuple[Labeled, list[Action]]:
        """Hand over the examples and orphans produced since the last drain."""
        out, orphans = self._out, self.orphans
        self._out, self.orphans = [], []
        return self.tables.labeled(out), orphans

    def drain_facts(self) -> tuple[Labeled | None, Labeled | None]:
        """The windows opened and first conversions since the last drain (streams.pipeline.delayed)."""
        opened, converted = self.facts.take()
        return (self.tables.labeled(opened) if opened else None, self.tables.labeled(converted) if converted else None)

    # -- snapshots (format: streams.pipeline.join.snapshot) --------------------------------------
    def snapshot(self) -> bytes:
        return snapshot_format.dump(self)

    @classmethod
    def restore(
        cls, data: bytes, model_config: Callable[[str], ModelConfig], grace_ms: int, holdout_percent: int, **kwargs
    ) -> PartitionJoin:
        return snapshot_format.load(data, cls(model_config, grace_ms, holdout_percent, **kwargs))

    # -- one event at a time (tests, raw replay): each its own batch -----------------------------
    def add_impression(self, event: Impression) -> None:
        self.process([impression_event(event)], [])

    def add_action(self, action: Action) -> None:
        self.process([], [action])

    def is_pending(self, impression_id: str) -> bool:
        key = id_keys([impression_id.encode()])
        row = int(self.ids.lookup(key)[0])
        return row >= 0 and self.pending.id_of(row) == impression_id.encode()
