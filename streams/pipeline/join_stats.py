"""A join worker's counters and partition state, and their sum over the join processes of one `recal worker`
(`/stats` and `/metrics` show the sum: with `--processes N` the other N-1 processes send their reports)."""

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
    expiry_deferred: int = 0  # emissions that held due windows open because label topics lagged (retries too)
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


def process_report(worker) -> dict:
    """One join process's counters, partitions, pending impressions and consumer lag per partition, and
    segment keys per model, as plain data (picklable: what a join process sends the first)."""
    report = worker.stats.as_dict()
    parts = dict(worker.parts)
    report["partitions"] = sorted(parts)
    report["pending_by_partition"] = {p: len(state.join.pending) for p, state in parts.items()}
    report["pending"] = sum(report["pending_by_partition"].values())
    report["lag"] = consumer_lag(worker.consumer, worker.topics, parts)
    guard = getattr(worker, "guard", None)
    report["segment_keys"] = guard.sizes() if guard is not None else {}
    return report


def consumer_lag(consumer, topics, parts: dict) -> list[tuple[str, int, int]]:
    """(topic, partition, records behind the log end) of each owned source partition fetched so far."""
    if consumer is None:
        return []
    from aiokafka import TopicPartition

    lags = []
    for partition, state in sorted(parts.items()):
        for topic in topics.sources:
            try:
                highwater = consumer.highwater(TopicPartition(topic, partition))
            except Exception:  # not assigned (any more), or a rebalance in progress
                continue
            if highwater is not None:
                lags.append((topic, partition, max(0, highwater - state.offsets.get(topic, 0))))
    return lags


def segment_keys(reports: list[dict]) -> dict[str, int]:
    """Segment keys per model over join processes: the largest count of any (each process caps its own
    set, and the sets overlap: a segment reaches every partition)."""
    keys: dict[str, int] = {}
    for report in reports:
        for model, n in report["segment_keys"].items():
            keys[model] = max(n, keys.get(model, 0))
    return keys
