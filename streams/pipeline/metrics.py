"""Worker metrics in Prometheus text format, and the readiness checks behind /readyz.

Nothing here counts on the hot path: a custom collector reads, at scrape time, the counters the join
worker, the publisher and the aggregator already keep (`JoinWorker.stats`, `RetryingPublisher`,
`Aggregator`). Each app has its own `CollectorRegistry`, so several apps in one process (tests) never
collide and no default process collectors leak in.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from recalibrators.serving.keys import MapField
from streams.pipeline.join_stats import Stats, process_report, segment_keys
from streams.pipeline.stalls import StallWatch

log = logging.getLogger("recal.metrics")

__all__ = [
    "BYTES_PER_PENDING",
    "PROMETHEUS_CONTENT_TYPE",
    "LoopMonitor",
    "MapTracker",
    "Readiness",
    "RecalCollector",
    "registry",
]

# Join state per pending impression, measured by bench/bench_join.py (docs/pipeline.md): an estimate is
# far cheaper at scrape time than walking millions of dict entries with sys.getsizeof.
BYTES_PER_PENDING = 193
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4"  # the text exposition format (charset added by aiohttp)


@dataclass
class MapTracker:
    """What this worker published last, per map field: for map age and calibration gauges."""

    published: dict[str, Any] = field(default_factory=dict)  # field -> CalibrationMap

    def record(self, maps_by_field: dict[str, Any], results) -> None:
        for result in results:
            if result.published and result.field in maps_by_field:
                self.published[result.field] = maps_by_field[result.field]


def _segment_label(m) -> str:
    return "|".join(f"{k}={v}" for k, v in m.segment) or "*"


class LoopMonitor:
    """How late the event loop wakes a task that sleeps `interval` seconds: the longest stall of the loop
    (a batch, an encode, anything that holds it). `max_s` since start, `recent_max_s` since the last scrape."""

    def __init__(self, interval: float = 0.05, watch: StallWatch | None = None) -> None:
        self.interval = interval
        self.max_s = 0.0
        self.recent_max_s = 0.0
        self.watch = watch  # logs what held the loop (`[worker] stall_log`)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        if self.watch is not None:
            self.watch.start(self.interval)
        try:
            while True:
                before = loop.time()
                await asyncio.sleep(self.interval)
                lag = max(0.0, loop.time() - before - self.interval)
                self.max_s = max(self.max_s, lag)
                self.recent_max_s = max(self.recent_max_s, lag)
                if self.watch is not None:
                    self.watch.woke(lag)
        finally:
            if self.watch is not None:
                self.watch.stop()

    def take_recent(self) -> float:
        recent, self.recent_max_s = self.recent_max_s, 0.0
        return recent


class RecalCollector:
    """Reads the worker's counters at scrape time. `join`, `publisher` and `aggregator` are duck-typed
    (JoinWorker, RetryingPublisher, Aggregator) so unit tests can pass plain objects.

    The worker runs `collect` in a thread (formatting many per-map series takes a while): every dict
    the event loop mutates is copied first with one C-level `dict(...)`/`list(...)` call before it is
    iterated, which the GIL makes atomic."""

    def __init__(
        self,
        join,
        publisher,
        aggregator,
        tracker: MapTracker,
        clock: Callable[[], float] = time.time,
        loop_monitor: LoopMonitor | None = None,
        refresher=None,
        partials=None,
    ) -> None:
        self.loop_monitor = loop_monitor
        self.refresher = refresher
        self.partials = partials  # PartialsConsumer
        self.join = join
        self.publisher = publisher
        self.aggregator = aggregator
        self.tracker = tracker
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        # Every join process of this worker (`--processes N`): counters summed, partitions from their owners.
        reports = self.join.reports() if hasattr(self.join, "reports") else [process_report(self.join)]
        s, partitions, _ = Stats.total(reports)
        yield _counter("recal_events_in", "Raw messages read, per source topic.", "topic", s.events_in)
        yield _counter(
            "recal_dead_letters",
            "Messages and events sent to the dead-letter topic, per reason.",
            "reason",
            s.dead_letters,
        )
        yield _counter(
            "recal_join_events", "Join outcomes: late_*, duplicate_*, early_*, orphan_*, ...", "kind", s.join
        )
        yield _counter("recal_labeled", "Labeled examples emitted, per model.", "model", s.labeled)
        yield _counter("recal_rekeyed", "Events re-published keyed by their impression.", None, s.rekeyed)
        yield _counter("recal_snapshots", "Join state snapshots written.", None, s.snapshots)
        yield _counter("recal_batches", "Consumer batches processed.", None, s.batches)
        yield _counter(
            "recal_batch_seconds",
            "Seconds spent processing batches (divide by recal_batches_total for the mean batch latency).",
            None,
            s.batch_seconds,
        )
        yield _counter(
            "recal_expiry_deferred",
            "Batches that kept windows open because label topics lagged.",
            None,
            s.expiry_deferred,
        )

        if self.loop_monitor is not None:
            yield GaugeMetricFamily(
                "recal_event_loop_lag_max_seconds",
                "Longest event-loop stall since the previous scrape (a 50 ms sleep woken late by this much).",
                value=self.loop_monitor.take_recent(),
            )
        pending = GaugeMetricFamily(
            "recal_join_pending", "Impressions waiting in join state, per partition.", labels=["partition"]
        )
        pending_bytes = GaugeMetricFamily(
            "recal_join_pending_bytes",
            f"Estimated join state bytes (pending impressions x {BYTES_PER_PENDING} B, bench/bench_join.py).",
            labels=["partition"],
        )
        by_partition = {p: n for report in reports for p, n in report["pending_by_partition"].items()}
        for p, n in sorted(by_partition.items()):
            pending.add_metric([str(p)], n)
            pending_bytes.add_metric([str(p)], n * BYTES_PER_PENDING)
        yield pending
        yield pending_bytes
        tracked = GaugeMetricFamily(
            "recal_segment_keys",
            "Segment keys admitted per model, all fallback levels (capped by max_segments per level; with "
            "several join processes the largest of theirs: each caps its own).",
            labels=["model"],
        )
        for model, n in sorted(segment_keys(reports).items()):
            tracked.add_metric([model], n)
        yield tracked
        yield GaugeMetricFamily(
            "recal_partitions_assigned", "Join partitions owned by this worker.", value=len(partitions)
        )
        lag = GaugeMetricFamily(
            "recal_consumer_lag",
            "Records behind the log end, per source topic partition "
            "(highwater minus the next offset to read; absent until the first fetch).",
            labels=["topic", "partition"],
        )
        for report in reports:
            for topic, partition, behind in report["lag"]:
                lag.add_metric([topic, str(partition)], behind)
        yield lag

        p = self.publisher
        yield _counter("recal_maps_published", "Maps written to Redis.", None, p.published)
        yield _counter(
            "recal_maps_refused_stale", "Maps refused by the Redis fence (a newer version was live).", None, p.refused
        )
        yield _counter(
            "recal_maps_gate_refused",
            "Candidate maps held back by the quality gate.",
            None,
            self.aggregator.gate_refusals,
        )
        yield _counter("recal_redis_publish_errors", "Publish attempts that failed on a Redis error.", None, p.failures)
        yield GaugeMetricFamily(
            "recal_maps_pending", "Maps waiting for Redis (retried with backoff).", value=len(p.pending)
        )
        yield _counter(
            "recal_map_build_errors",
            "Map builds that raised (logged and skipped; the key's previous map stays live).",
            None,
            getattr(self.aggregator, "build_errors", 0),
        )
        yield _counter(
            "recal_map_metrics_seconds",
            "Seconds spent computing the maps' calibration metrics.",
            None,
            getattr(self.aggregator, "metrics_seconds", 0.0),
        )
        yield GaugeMetricFamily(
            "recal_refresh_backlog_keys",
            "Changed keys whose maps are not built yet (a refresh builds a time-bounded slice, the rest waits).",
            value=len(getattr(self.aggregator, "dirty", ())),
        )
        if self.partials is not None:
            yield _counter("recal_partials_read", "Partials topic records read.", None, self.partials.records)
            yield _counter(
                "recal_partials_malformed",
                "Partials topic records that are neither a partial nor a prior (logged, skipped).",
                None,
                self.partials.malformed,
            )
            yield GaugeMetricFamily(
                "recal_partials_catching_up",
                "Partials partitions being read from their start (assigned to this worker; their maps are partial).",
                value=len(self.partials.catching_up),
            )
        if self.refresher is not None:
            yield GaugeMetricFamily(
                "recal_refresh_seconds",
                "Map building time of the last refresh tick (bounded by its budget; the rest is carried).",
                value=self.refresher.last_seconds,
            )
            yield _counter(
                "recal_map_builder_restarts",
                "Map builder processes started after one died (every key is rebuilt then).",
                None,
                self.refresher.builder.restarts,
            )
        yield from self._maps()

    def _maps(self) -> Iterator[Metric]:
        now = self.clock()
        age = GaugeMetricFamily(
            "recal_map_age_seconds",
            "Seconds since the last map this worker published (its updated_at), per model and segment.",
            labels=["model", "model_version", "segment"],
        )
        ece = GaugeMetricFamily(
            "recal_map_ece",
            "ECE on the recent window (the map's metrics), raw scores vs calibrated.",
            labels=["model", "model_version", "segment", "scores"],
        )
        ratio = GaugeMetricFamily(
            "recal_map_calibration_ratio",
            "sum(prediction)/sum(positives) on the recent window, raw vs calibrated (> 1 over-predicts).",
            labels=["model", "model_version", "segment", "scores"],
        )
        n = GaugeMetricFamily(
            "recal_map_effective_samples",
            "Effective (decayed) sample size of the map.",
            labels=["model", "model_version", "segment"],
        )
        for m in list(self.tracker.published.values()):
            seg = _segment_label(m)
            age.add_metric([m.model, m.model_version, seg], max(0.0, now - m.updated_at / 1000))
            n.add_metric([m.model, m.model_version, seg], m.n)
            metrics = m.metrics_dict or {}
            for scores in ("raw", "cal"):
                label = "raw" if scores == "raw" else "calibrated"
                if isinstance(v := metrics.get(f"ece_{scores}"), (int, float)):
                    ece.add_metric([m.model, m.model_version, seg, label], v)
                if isinstance(v := metrics.get(f"ratio_{scores}"), (int, float)) and math.isfinite(v):
                    ratio.add_metric([m.model, m.model_version, seg, label], v)
        drift = GaugeMetricFamily(
            "recal_drift_alert",
            "1 while the raw scores drift out of calibration "
            "(ratio or ECE beyond the aggregator's thresholds), else 0.",
            labels=["model", "model_version", "segment"],
        )
        for key, alert in sorted(dict(getattr(self.aggregator, "drift", {})).items()):
            drift.add_metric(list(MapField.parse(key)), 1.0 if alert else 0.0)
        held = GaugeMetricFamily(
            "recal_maps_gate_held",
            "1 while the quality gate holds a key's candidate map back (reason: /stats gate_refused).",
            labels=["model", "model_version", "segment"],
        )
        for key in sorted(dict(getattr(self.aggregator, "refused", {}))):
            held.add_metric(list(MapField.parse(key)), 1.0)
        yield from (age, n, ece, ratio, drift, held)


def _counter(name: str, doc: str, label: str | None, value) -> CounterMetricFamily:
    if label is None:
        return CounterMetricFamily(name, doc, value=float(value))
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, count in sorted(dict(value).items()):
        family.add_metric([str(key)], float(count))
    return family


def registry(collector: RecalCollector) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)


class Readiness:
    """/readyz: partitions assigned and recovered, broker reachable, Redis reachable.

    The I/O checks are cached for `ttl` seconds (probes and scrapers may poll often) and bounded by
    `timeout`; concurrent requests share one check. `checks` maps a name to an async callable that
    returns None when fine or raises / returns an error string.
    """

    def __init__(
        self,
        checks: dict[str, Callable[[], Any]],
        ttl: float = 2.0,
        timeout: float = 1.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.checks = checks
        self.ttl = ttl
        self.timeout = timeout
        self.clock = clock
        self._cached: tuple[float, dict[str, str | None]] | None = None
        self._logged: dict[str, str | None] = {}  # check -> the failure last logged
        self._lock = asyncio.Lock()

    async def io_checks(self) -> dict[str, str | None]:
        async with self._lock:
            if self._cached is not None and self.clock() - self._cached[0] < self.ttl:
                return self._cached[1]
            names = list(self.checks)
            outcomes = await asyncio.gather(*(self._one(n, self.checks[n]) for n in names))
            result = dict(zip(names, outcomes, strict=True))
            self._cached = (self.clock(), result)
            return result

    async def _one(self, name: str, check) -> str | None:
        """None when fine, else a fixed word for the body: exception text (hostnames, addresses) only goes
        to the log, once per change."""
        try:
            outcome = await asyncio.wait_for(check(), self.timeout)
        except TimeoutError:
            outcome, detail = f"timed out after {self.timeout:g}s", None
        except Exception as exc:
            outcome, detail = "unreachable", f"{type(exc).__name__}: {exc}"
        else:
            detail = outcome
        if detail != self._logged.get(name):
            self._logged[name] = detail
            if detail is not None:
                log.warning("readiness check %s failing: %s", name, detail)
            else:
                log.info("readiness check %s passing again", name)
        return outcome or None

    async def report(self, partitions_ready: bool) -> tuple[bool, dict]:
        """(ready, JSON body): per check true/false, and the errors of the failing ones."""
        outcomes = await self.io_checks()
        body: dict[str, Any] = {"partitions_assigned": partitions_ready}
        body |= {name: error is None for name, error in outcomes.items()}
        errors = {name: error for name, error in outcomes.items() if error is not None}
        if not partitions_ready:
            errors["partitions_assigned"] = "join partitions not assigned or recovery not finished"
        if errors:
            body["errors"] = errors
        return not errors, body
