"""`EarlyActions`: clicks and conversions that arrived before their impression, by impression id.

Each waits `grace` (event time) from the first one that came; then they are orphans.

>>> from streams.pipeline.events import CLICK, Action
>>> early = EarlyActions(grace_ms=10)
>>> [early.wait(Action(CLICK, "i", ts, c)) for ts, c in ((100, "c1"), (105, "c2"), (106, "c2"))]
[True, True, False]
>>> early.orphans(109), [a.action_id for a in early.orphans(110)], early
([], ['c1', 'c2'], {})
"""

from __future__ import annotations

import heapq

from streams.pipeline.events import Action


class EarlyActions(dict[str, list[Action]]):
    def __init__(self, grace_ms: int) -> None:
        super().__init__()
        self.grace_ms = grace_ms
        self._due: list[tuple[int, str]] = []  # heap of (first action's ts + grace, impression id)

    def wait(self, action: Action) -> bool:
        """Hold `action` for its impression; False if the very same one is already waiting (a resend:
        the list stays bounded)."""
        waiting = self.setdefault(action.impression_id, [])
        if any(a.kind == action.kind and a.action_id == action.action_id for a in waiting):
            return False
        if not waiting:
            heapq.heappush(self._due, (action.ts + self.grace_ms, action.impression_id))
        waiting.append(action)
        return True

    def orphans(self, clock: int) -> list[Action]:
        """The actions whose grace ended by `clock`, removed."""
        out: list[Action] = []
        while self._due and self._due[0][0] <= clock:
            _, impression_id = heapq.heappop(self._due)
            waiting = self.get(impression_id)
            if waiting and waiting[0].ts + self.grace_ms <= clock:  # else taken by its impression
                out.extend(self.pop(impression_id))
        return out

    def load(self, waiting: dict[str, list[list]]) -> None:
        for actions in waiting.values():
            for action in actions:
                self.wait(Action(*action))
