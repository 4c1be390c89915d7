"""What `{prefix}:versions:{model}` shows of each model version: first and last event, examples, live or retired.

The aggregator tracks them from the partials of each version's model-wide key and hands the models that
changed to the publisher (`Aggregator.take_versions`).
"""

from __future__ import annotations

from dataclasses import dataclass

from recalibrators.serving.keys import MapField

__all__ = ["VersionInfo", "VersionInfos"]


@dataclass
class VersionInfo:
    """One model version as `{prefix}:versions:{model}` shows it (from the keys of its model-wide map)."""

    first_event_ms: int
    last_event_ms: int
    examples: int
    state: str = "live"  # live | retired

    def as_json(self) -> dict[str, int | str]:
        return dict(vars(self))


class VersionInfos:
    """The version infos of every model, and the models whose infos changed since the last `take`.

    >>> infos = VersionInfos()
    >>> infos.track(MapField("ctr", "v1", "*"), examples=10, event_ms=5)
    >>> infos.track(MapField("ctr", "v1", "*"), examples=12, event_ms=3)
    >>> infos.take()
    {'ctr': {'v1': VersionInfo(first_event_ms=5, last_event_ms=5, examples=12, state='live')}}
    >>> infos.retire("ctr", "v1"), infos.take()["ctr"]["v1"].state, infos.take()
    (None, 'retired', {})
    """

    def __init__(self) -> None:
        self.versions: dict[str, dict[str, VersionInfo]] = {}  # model -> model_version -> info
        self.changed: set[str] = set()

    def track(self, field: MapField, examples: int, event_ms: int) -> None:
        """A partial of `field`'s model-wide key: its version is live, with `examples` labeled so far."""
        info = self.versions.setdefault(field.model, {}).get(field.model_version)
        if info is None:
            info = VersionInfo(event_ms, event_ms, examples)
            self.versions[field.model][field.model_version] = info
        info.last_event_ms, info.examples, info.state = max(info.last_event_ms, event_ms), examples, "live"
        self.changed.add(field.model)

    def retire(self, model: str, model_version: str) -> None:
        if (info := self.versions.get(model, {}).get(model_version)) is not None:
            info.state = "retired"
            self.changed.add(model)

    def take(self) -> dict[str, dict[str, VersionInfo]]:
        """The version infos of every model that changed since the last take."""
        changed, self.changed = self.changed, set()
        return {model: dict(self.versions[model]) for model in sorted(changed) if model in self.versions}
