"""The Faust application a `recal worker` runs.

    raw topics --(JoinWorker: batched consume, validate, join, partial calibrators)--> recal-labeled
                                                  \\--> recal-partials --(agent: aggregate)--> table
    timer(refresh) --> merge partials, quality gate --> fenced publish to Redis

Faust supplies the worker process, the aggregation agent and its changelogged table, the refresh
timer, the web server (health, metrics) and graceful shutdown; the hot path is `JoinWorker`.
"""

from __future__ import annotations

import asyncio
import logging
import time

import faust
import mode
import redis

from recalibrators.serving.keys import RedisKeys
from streams.dashboard.pages import DashboardSource
from streams.pipeline.aggregator import Aggregator, MapState
from streams.pipeline.config import Config
from streams.pipeline.join_processes import partial_message
from streams.pipeline.join_worker import JoinWorker
from streams.pipeline.metrics import (
    PROMETHEUS_CONTENT_TYPE,
    MapTracker,
    Readiness,
    RecalCollector,
    exposition,
    registry,
)
from streams.pipeline.publisher import MapPublisher, RetryingPublisher

log = logging.getLogger("recal.app")


class JoinService(mode.Service):
    """Runs the JoinWorker inside the Faust worker's lifecycle."""

    def __init__(self, worker: JoinWorker, **kwargs) -> None:
        self.worker = worker
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        await self.worker.start()
        self.add_future(self._run())

    async def _run(self) -> None:
        try:
            await self.worker.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("join worker crashed; stopping so the supervisor restarts us")
            await self.crash(exc)

    async def on_stop(self) -> None:
        await self.worker.stop()


def create_app(config: Config) -> faust.App:
    app = faust.App(
        config.app_id,
        broker=f"kafka://{config.broker}",
        broker_credentials=config.kafka.faust_credentials(),
        store="memory://",
        web_port=config.web_port,
        web_host="0.0.0.0",
        topic_partitions=config.partitions,
        topic_replication_factor=config.replication_factor,
        topic_allow_declare=True,
        broker_session_timeout=config.session_timeout_ms / 1000,
        broker_heartbeat_interval=max(0.5, config.session_timeout_ms / 5000),
        producer_acks=-1,
        table_cleanup_interval=60,
    )
    partials_topic = app.topic(
        config.topics.partials,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=config.partitions,
    )
    table = app.Table("partials", default=None, key_type=bytes, value_type=bytes, partitions=config.partitions)
    aggregator = Aggregator(config.model)
    cache = redis.Redis.from_url(config.redis, socket_timeout=1.0, socket_connect_timeout=1.0)
    publisher = RetryingPublisher(MapPublisher(cache, prefix=config.prefix))

    async def send_partials(partials) -> None:
        for partition, key, calibrator in partials:
            k, v = partial_message(partition, key, calibrator)
            await partials_topic.send(key=k, value=v)

    join = JoinWorker(config, on_partials=send_partials)
    # A dependency, not an app.service: those start after the app's own group join and table
    # recovery, which serialised two consumer-group joins (~5 s each on the embedded broker).
    app.add_dependency(JoinService(join, loop=app.loop, beacon=app.beacon))

    @app.agent(partials_topic, concurrency=1)  # stateful: keep at 1 (faust-streaming #606)
    async def aggregate(stream):
        async for event in stream.events():
            key = event.key.decode()
            try:
                stored = table.get(event.key)
                state = aggregator.add(key, event.value, MapState.decode(stored) if stored else None)
                table[event.key] = state.encode()
            except ValueError as exc:
                log.warning("dropping malformed partial for %s: %s", key, exc)

    index_key = RedisKeys(config.prefix).index
    tracker = MapTracker()  # the maps this worker published last: map age and calibration gauges

    def redis_lost_maps() -> bool:
        """Redis came back empty (restart without persistence, failover, FLUSHALL)?"""
        try:
            return bool(aggregator.published) and not cache.exists(index_key)
        except redis.RedisError:
            return False  # unreachable: RetryingPublisher already counts and backs off

    @app.timer(config.refresh_interval_ms / 1000)
    async def refresh() -> None:
        if await asyncio.to_thread(redis_lost_maps):
            # Rebuild every map this worker owns from the table, not only the changed ones.
            for key, stored in table.items():
                aggregator.restore(key.decode(), MapState.decode(stored))
            log.warning("Redis has no map index: republishing %d maps", len(aggregator.dirty))
        maps = aggregator.take_dirty(int(time.time() * 1000))
        publisher.submit(maps)
        pending = dict(publisher.pending)
        results = await asyncio.to_thread(publisher.flush)
        tracker.record(pending, results)

    metrics_registry = registry(RecalCollector(join, publisher, aggregator, tracker))
    # Probes use their own client: short timeouts, and never queued behind a slow publish.
    probe = redis.Redis.from_url(config.redis, socket_timeout=1.0, socket_connect_timeout=1.0)

    async def redis_ok() -> None:
        await asyncio.to_thread(probe.ping)

    async def broker_ok() -> str | None:
        if join.consumer is None:
            return "join consumer not started"
        await join.consumer._client.fetch_all_metadata()  # one Metadata round trip; raises if unreachable
        return None

    readiness = Readiness({"broker": broker_ok, "redis": redis_ok}, ttl=2.0, timeout=1.5)
    dashboard = DashboardSource(
        redis.Redis.from_url(config.redis, socket_timeout=2.0, socket_connect_timeout=1.0), prefix=config.prefix
    )

    @app.page("/healthz")
    async def healthz(web, request):
        return web.json({"ok": True})

    @app.page("/readyz")
    async def readyz(web, request):
        """Ready when the join owns its partitions (recovery done), and the broker and Redis answer
        (checked at most every 2 s, each bounded by 1.5 s). 503 lists the failing checks."""
        ready, body = await readiness.report(join.ready.is_set())
        return web.json(body, status=200 if ready else 503)

    @app.page("/metrics")
    async def metrics(web, request):
        # In a thread: with many maps, formatting takes ~65 us per map (the collector only copies dicts,
        # atomically under the GIL). aiohttp adds "; charset=utf-8" and refuses a charset in content_type.
        text = await asyncio.to_thread(exposition, metrics_registry)
        return web.text(text.decode(), content_type=PROMETHEUS_CONTENT_TYPE)

    @app.page("/dashboard")
    async def dashboard_index(web, request):
        try:
            page = await asyncio.to_thread(dashboard.index_html)
        except redis.RedisError as exc:
            return web.text(f"Redis unavailable: {type(exc).__name__}", status=503)
        return web.html(page)

    @app.page("/dashboard/map")
    async def dashboard_map(web, request):
        query = request.query
        try:
            status, page = await asyncio.to_thread(
                dashboard.map_html, query.get("model", ""), query.get("segment", "*")
            )
        except redis.RedisError as exc:
            return web.text(f"Redis unavailable: {type(exc).__name__}", status=503)
        return web.html(page, status=status)

    @app.page("/stats")
    async def stats(web, request):
        s, partitions, pending = join.total_stats()  # every join process of this worker
        return web.json(
            {
                "events_in": dict(s.events_in),
                "dead_letters": dict(s.dead_letters),
                "join": dict(s.join),
                "labeled": dict(s.labeled),
                "rekeyed": s.rekeyed,
                "snapshots": s.snapshots,
                "batches": s.batches,
                "partitions": partitions,
                "pending": pending,
                "maps_published": publisher.published,
                "maps_refused_stale": publisher.refused,
                "gate_refusals": aggregator.gate_refusals,
                "publish_failures": publisher.failures,
                "gate_refused": dict(aggregator.refused),  # key -> the gate's last refusal reason
                "drift_alerts": sorted(k for k, alert in aggregator.drift.items() if alert),
            }
        )

    return app
