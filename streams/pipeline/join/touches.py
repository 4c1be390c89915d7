"""The clicks and conversions applied to a partition's pending impressions, and each model's label rule
applied to them when their slots fall due. Only touched impressions are kept (id -> action time): the
untouched ones are labeled columnar by the join."""

from __future__ import annotations

import numpy as np

from streams.pipeline.events import CLICK, Action
from streams.pipeline.join.due import DueQueue
from streams.pipeline.join.facts import DelayFacts
from streams.pipeline.join.store import PendingStore
from streams.pipeline.join.tables import Tables


class Touches:
    """`apply` an action to its pending impression's row; `decide` due slots; `forget` decided rows."""

    def __init__(self, pending: PendingStore, tables: Tables, due: DueQueue, facts: DelayFacts) -> None:
        self.pending, self.tables, self.due, self.facts = pending, tables, due, facts
        self.clicked: dict[str, int] = {}
        self.converted: dict[str, int] = {}

    def apply(self, action: Action, row: int) -> str | None:
        """Record a click/conversion against its pending impression (labels wait for the window); None,
        or why not: `duplicate` (one of its kind was recorded) or `late` (no prediction's window covers it)."""
        seen = self.clicked if action.kind == CLICK else self.converted
        if action.impression_id in seen:
            return "duplicate"
        rows, slots = self.pending.rows, self.pending.slots
        ts, start, n = int(rows.ts[row]), int(rows.slot_start[row]), int(rows.n_slots[row])
        rules = [self.tables.rule_of(g) for g in slots.group[start : start + n].tolist()]
        windows = [rule.action_window(action.kind) for rule in rules]
        if not any(w is not None and ts <= action.ts <= ts + w for w in windows):
            return "late"
        seen[action.impression_id] = action.ts
        rows.touched[row] = True
        self.facts.action(action, ts, rules, start, self.clicked, self.converted)
        if action.kind == CLICK:  # a post-click model's slot now waits for its conversion window
            for slot, rule in enumerate(rules, start):
                if rule.post_click and slots.open[slot]:
                    self.due.push(np.array([rule.due(ts, action.ts)]), np.array([slot]))
        return None

    def decide(self, rows: np.ndarray, model: np.ndarray, clock: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(label, example, final) of due slots on `rows` of models `model`: an untouched slot is final, an
        example per its model's `untouched_label`, label 0; a touched one goes through its model's rule, and
        is not final when its click rescheduled it past `clock` (the later entry decides it)."""
        store, rules = self.pending, self.tables.rules
        label = np.zeros(len(rows), np.uint8)
        example = rules.untouched_label[model].copy()
        final = np.ones(len(rows), bool)
        for i in np.flatnonzero(store.rows.touched[rows]).tolist():
            row = int(rows[i])
            rule = rules[int(model[i])]
            impression_id = store.id_of(row).decode()
            ts, click_ts = int(store.rows.ts[row]), self.clicked.get(impression_id)
            if rule.due(ts, click_ts) > clock:
                final[i] = False
                continue
            decided = rule.label(ts, click_ts, self.converted.get(impression_id))
            example[i] = decided is not None
            label[i] = decided or 0
        return label, example, final

    def forget(self, rows: np.ndarray) -> None:
        """Decided `rows`: their actions are no longer needed."""
        for row in rows[self.pending.rows.touched[rows]].tolist():
            impression_id = self.pending.id_of(row).decode()
            self.clicked.pop(impression_id, None)
            self.converted.pop(impression_id, None)
