"""Which versions of a model are live: admission under a per-model cap, retirement by event-time idleness.

Several versions of a model serve at once (champion and challenger, canaries, a rollback), each with its own
maps. A version is live from its first event until it has seen no event for `idle_ms` of the model's event
time (the newest event time of any of its versions): never because another version appeared. At most
`max_versions` are live per model; an event of one more version is refused (the join dead-letters the
impression as `too_many_versions`, the aggregator drops the partial) and never evicts a live one. A retired
version that sees events again is live again if there is room. Event time, not wall time, so a replay
decides exactly as the live run did.

>>> live = LiveVersions(max_versions=2, idle_ms=1_000)
>>> live.admit("v1", 0), live.admit("v2", 10), live.admit("junk", 20)
(True, True, False)
>>> live.admit("v2", 2_000), live.retire_idle()
(True, ['v1'])
>>> live.admit("junk", 2_001), sorted(live.live)
(True, ['junk', 'v2'])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from streams.pipeline.config import ModelConfig

__all__ = ["LiveVersions", "ModelVersions"]


class LiveVersions:
    """The live versions of one model: version -> last event time (ms)."""

    def __init__(self, max_versions: int, idle_ms: int, report_retired: bool = False) -> None:
        self.max_versions = max_versions
        self.idle_ms = idle_ms
        self.live: dict[str, int] = {}
        self.first: dict[str, int] = {}  # live version -> its first event time
        self.now_ms = 0  # the model's event time: the newest event of any version
        self.refused = 0
        self.report_retired = report_retired  # keep what an admission retired for `take_retired`
        self._unreported: list[str] = []  # retired by an admission, not yet returned by `take_retired`

    def admit(self, model_version: str, ts_ms: int) -> bool:
        """Whether an event of `model_version` at `ts_ms` counts; makes it live if there is room."""
        if model_version not in self.live:
            retired = self.retire_idle(max(self.now_ms, ts_ms))  # an idle version's slot is free before the cap check
            if self.report_retired:
                self._unreported += retired
            if len(self.live) >= self.max_versions:
                self.refused += 1
                return False
            self.live[model_version] = self.first[model_version] = ts_ms
            if model_version in self._unreported:  # retired and back before anyone was told: never retired
                self._unreported.remove(model_version)
        self.seen(model_version, ts_ms, ts_ms)
        return True

    def seen(self, model_version: str, first_ms: int, last_ms: int) -> None:
        """A live version's events from `first_ms` to `last_ms`: what admitting each of them does."""
        self.first[model_version] = min(self.first[model_version], first_ms)
        self.live[model_version] = max(self.live[model_version], last_ms)
        self.now_ms = max(self.now_ms, last_ms)

    def retire_idle(self, now_ms: int | None = None) -> list[str]:
        """Retire the versions idle for longer than idle_ms; the retired ones, oldest first."""
        now = self.now_ms if now_ms is None else now_ms
        idle = sorted((last, v) for v, last in self.live.items() if now - last > self.idle_ms)
        for _, model_version in idle:
            del self.live[model_version], self.first[model_version]
        return [v for _, v in idle]

    def take_retired(self) -> list[str]:
        """Retire the idle versions; every version retired since the last call (by an admission too), oldest first."""
        retired, self._unreported = self._unreported + self.retire_idle(), []
        return retired

    def most_recent(self, before: str) -> str | None:
        """The default warm-start source of `before`: of the live versions that started earlier, the one
        with the newest event (a version that started later, e.g. a canary, is never its prior)."""
        start = self.first.get(before, self.now_ms)
        older = [(last, v) for v, last in self.live.items() if v != before and self.first[v] < start]
        return max(older)[1] if older else None


class ModelVersions:
    """`LiveVersions` per model, sized from each model's config."""

    def __init__(self, model_config: Callable[[str], ModelConfig], report_retired: bool = False) -> None:
        self._model_config = model_config
        self.report_retired = report_retired
        self.models: dict[str, LiveVersions] = {}

    def __getitem__(self, model: str) -> LiveVersions:
        live = self.models.get(model)
        if live is None:
            cfg = self._model_config(model)
            live = self.models[model] = LiveVersions(cfg.max_versions, cfg.version_idle, self.report_retired)
        return live

    def admit(self, model: str, model_version: str, ts_ms: int) -> bool:
        return self[model].admit(model_version, ts_ms)

    def admit_impressions(self, impressions: Sequence) -> list[bool]:
        """Per impression struct, in order, whether every one of its predictions' versions is admitted (as
        `admit`, prediction by prediction, stopping at the first refusal). When every version the batch names is
        live already, no admission can refuse or retire one: each version's first and last event time move to
        its earliest and latest of the batch, array operations instead of a call per prediction."""
        pairs = [(p.model, p.model_version) for e in impressions for p in e.predictions]
        codes = {pair: i for i, pair in enumerate(dict.fromkeys(pairs))}
        if not all(version in self[model].live for model, version in codes):
            return [all(self.admit(p.model, p.model_version, e.ts) for p in e.predictions) for e in impressions]
        n = len(impressions)
        ts = np.repeat(
            np.fromiter((e.ts for e in impressions), np.int64, n),
            np.fromiter((len(e.predictions) for e in impressions), np.int64, n),
        )
        code = np.fromiter(map(codes.__getitem__, pairs), np.int64, len(pairs))
        first = np.full(len(codes), np.iinfo(np.int64).max)
        last = np.full(len(codes), np.iinfo(np.int64).min)
        np.minimum.at(first, code, ts)
        np.maximum.at(last, code, ts)
        for (model, version), lo, hi in zip(codes, first.tolist(), last.tolist(), strict=True):
            self[model].seen(version, lo, hi)
        return [True] * n
