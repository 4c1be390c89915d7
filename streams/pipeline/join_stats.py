"""A join worker's counters, and their sum over the join processes of one `recal worker`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Stats:
    """Counters since process start, read by the metrics endpoint and the demo's progress line."""

    events_in: Counter[str] = field(default_factory=Counter)  # per source topic
    dead_letters: Counter[str] = field(default_factory=Counter)  # per reason
    join: Counter[str] = field(default_factory=Counter)  # late, duplicate, early, orphan, ...
    labeled: Counter[str] = field(default_factory=Counter)  # per model
    rekeyed: int = 0
    expiry_deferred: int = 0  # batches that held windows open because label topics lagged
    snapshots: int = 0
    snapshots_skipped: int = 0  # revoke snapshots that did not fit before the rebalance deadline
    fenced: int = 0  # partitions dropped because another worker claimed them
    batches: int = 0
    batch_seconds: float = 0.0

    _COUNTERS = ("events_in", "dead_letters", "join", "labeled")
    _NUMBERS = ("rekeyed", "expiry_deferred", "snapshots", "snapshots_skipped", "fenced", "batches", "batch_seconds")

    def as_dict(self) -> dict:
        return {
            **{name: dict(getattr(self, name)) for name in self._COUNTERS},
            **{name: getattr(self, name) for name in self._NUMBERS},
        }

    def add(self, report: dict) -> None:
        """Fold in another join process's counters (`as_dict`)."""
        for name in self._COUNTERS:
            getattr(self, name).update(report[name])
        for name in self._NUMBERS:
            setattr(self, name, getattr(self, name) + report[name])

    @classmethod
    def total(cls, reports: list[dict]) -> tuple[Stats, list[int], int]:
        """(counters, partitions, pending impressions) summed over processes' reports (`JoinWorker.report`)."""
        total = cls()
        for report in reports:
            total.add(report)
        partitions = sorted(p for report in reports for p in report["partitions"])
        return total, partitions, sum(report["pending"] for report in reports)
