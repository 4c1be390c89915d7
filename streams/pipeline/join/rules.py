"""Label rules: what a click or a conversion means to one model's prediction, and when its label is final.

One `LabelRule` per model, built from its `ModelConfig`; the join asks it, never the config:

- population=impression: positive iff a label event (click or conversion, per the model) with
  ``imp.ts <= ts <= imp.ts + window`` was seen, else negative.
- population=click (post-click models): only impressions clicked within ``click_window`` are
  examples; positive iff an in-window conversion was seen too (in either order).

`RuleBook` holds the rules by model index, plus the two per-model columns the columnar path needs
for impressions nobody clicked (the common case): when their slot is due, and whether it is an example.

>>> from streams.pipeline.config import ModelConfig
>>> cvr = LabelRule(ModelConfig(label="conversion", population="click", window_ms=300, click_window_ms=60,
...                             allowed_lateness_ms=5))
>>> cvr.due(0, None), cvr.due(0, 30), cvr.label(0, None, None), cvr.label(0, 30, 200), cvr.label(0, 30, None)
(65, 305, None, 1, 0)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from streams.pipeline.config import ModelConfig
from streams.pipeline.events import CLICK


class LabelRule:
    __slots__ = ("click_label", "click_window", "config", "horizon", "lateness", "post_click", "window")

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.click_label = config.label == "click"
        self.post_click = config.population == "click"
        self.window = config.window_ms
        self.click_window = config.click_window_ms
        self.lateness = config.allowed_lateness_ms
        self.horizon = config.horizon_ms  # after this (plus lateness) nothing can change the label

    def action_window(self, kind: int) -> int | None:
        """How long after the impression an action of `kind` counts for this model (None: never)."""
        if kind == CLICK:
            if self.click_label:
                return self.window
            return self.click_window if self.post_click else None
        return None if self.click_label else self.window

    def _clicked(self, ts: int, click_ts: int | None) -> bool:
        return click_ts is not None and click_ts <= ts + (self.window if self.click_label else self.click_window)

    def due(self, ts: int, click_ts: int | None) -> int:
        """Event time at which this slot's label is final (window end plus lateness)."""
        if self.post_click and not self._clicked(ts, click_ts):
            return ts + self.click_window + self.lateness
        return ts + self.window + self.lateness

    def untouched_due(self) -> int:
        """`due` minus the impression's ts, for an impression never clicked nor converted."""
        return (self.click_window if self.post_click else self.window) + self.lateness

    def label(self, ts: int, click_ts: int | None, conversion_ts: int | None) -> int | None:
        """The final label of a closed slot; None when the impression is not in the model's population."""
        if self.click_label:
            return int(self._clicked(ts, click_ts))
        if self.post_click and not self._clicked(ts, click_ts):
            return None
        return int(conversion_ts is not None and conversion_ts <= ts + self.window)


class RuleBook:
    """Rules by model index, grown as the join interns new model names."""

    def __init__(self, model_config: Callable[[str], ModelConfig]) -> None:
        self._model_config = model_config
        self.rules: list[LabelRule] = []
        self.untouched_due = np.zeros(0, np.int64)  # per model: due - ts when nobody clicked
        self.untouched_label = np.zeros(0, bool)  # per model: an unclicked impression is a (negative) example
        self.late_after = np.zeros(0, np.int64)  # per model: an impression older than clock - this is late

    def add(self, name: str) -> None:
        rule = LabelRule(self._model_config(name))
        self.rules.append(rule)
        self.untouched_due = np.append(self.untouched_due, rule.untouched_due())
        self.untouched_label = np.append(self.untouched_label, not rule.post_click)
        self.late_after = np.append(self.late_after, rule.horizon + rule.lateness)

    def keep(self, used: np.ndarray) -> None:
        """Drop the rules of pruned models (`used`: the kept model indices, in order)."""
        self.rules = [self.rules[i] for i in used.tolist()]
        self.untouched_due = self.untouched_due[used]
        self.untouched_label = self.untouched_label[used]
        self.late_after = self.late_after[used]

    def __getitem__(self, model: int) -> LabelRule:
        return self.rules[model]
