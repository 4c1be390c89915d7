"""The delay facts of a partition's join: which windows of `label_delay = "corrected"` models opened,
and their first in-window conversions, read off the pending store as the join admits impressions and
applies actions. The delayed-feedback state learns from them (`streams.pipeline.delayed`)."""

from __future__ import annotations

import numpy as np

from streams.pipeline.delayed import JoinFacts
from streams.pipeline.events import CLICK, Action
from streams.pipeline.join.rules import LabelRule
from streams.pipeline.join.store import PendingStore


class DelayFacts:
    """Open-window facts in terms of the join's slot groups (drained with its examples, so they index the
    same tables): column chunks from the vectorised impression path, scalar rows per action."""

    def __init__(self, pending: PendingStore) -> None:
        self.pending = pending
        self.out = JoinFacts()

    def __bool__(self) -> bool:
        return bool(self.out)

    def take(self) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
        return self.out.take()

    def impressions(self, slots: np.ndarray, model: np.ndarray, rules: list[LabelRule]) -> None:
        """Newly stored open `slots` of models `model`: a conversion model's window opens at the impression
        (a post-click one's at the click). Vectorised."""
        opens = np.array([r.config.corrected and not r.post_click for r in rules], bool)[model]
        if not opens.any():
            return
        self.out.add(**self.pending.columns(slots[opens]))

    def action(
        self, action: Action, ts: int, rules: list[LabelRule], start: int, clicked: dict[str, int], converted: dict
    ) -> None:
        """An applied action on the impression at `ts` whose slots start at `start`: a post-click window opens
        at its click (with a conversion seen before it); a first in-window conversion of an open window (a
        post-click one: once clicked). Per action, scalars."""
        slots = self.pending.slots
        for slot, rule in enumerate(rules, start):
            if not (rule.config.corrected and slots.open[slot]):
                continue
            if action.kind == CLICK:
                if rule.post_click and action.ts <= ts + rule.click_window:
                    self._one(slot, ts)
                    conversion_ts = converted.get(action.impression_id)
                    if conversion_ts is not None and conversion_ts <= ts + rule.window:
                        self._one(slot, ts, conversion_ts)
            elif action.ts <= ts + rule.window:
                click_ts = clicked.get(action.impression_id)
                if not rule.post_click or (click_ts is not None and click_ts <= ts + rule.click_window):
                    self._one(slot, ts, action.ts)

    def _one(self, slot: int, ts: int, conversion_ts: int | None = None) -> None:
        store = self.pending
        row = int(store.slots.row[slot])
        group, score = int(store.slots.group[slot]), float(store.slots.score[slot])
        self.out.add_one(group, score, ts, bool(store.rows.holdout[row]), conversion_ts)
