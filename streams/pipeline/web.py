"""The worker's web endpoints: /healthz, /readyz, /metrics, /stats and the calibration dashboard.

Mounted on the Faust app's web server by `register_pages`; everything they show is read from the join
worker, the publisher and the aggregator the app built.
"""

from __future__ import annotations

import asyncio

import faust
import redis
from prometheus_client import CollectorRegistry

from streams.dashboard.pages import DashboardSource
from streams.pipeline.aggregator import Aggregator
from streams.pipeline.config import Config
from streams.pipeline.join_worker import JoinWorker
from streams.pipeline.metrics import PROMETHEUS_CONTENT_TYPE, Readiness, exposition
from streams.pipeline.publisher import RetryingPublisher


def register_pages(
    app: faust.App,
    config: Config,
    *,
    join: JoinWorker,
    publisher: RetryingPublisher,
    aggregator: Aggregator,
    metrics: CollectorRegistry,
) -> None:
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
    async def metrics_page(web, request):  # not `metrics`: that name is the registry
        # In a thread: with many maps, formatting takes ~65 us per map (the collector only copies dicts,
        # atomically under the GIL). aiohttp adds "; charset=utf-8" and refuses a charset in content_type.
        text = await asyncio.to_thread(exposition, metrics)
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
        s = join.stats
        return web.json(
            {
                "events_in": dict(s.events_in),
                "dead_letters": dict(s.dead_letters),
                "join": dict(s.join),
                "labeled": dict(s.labeled),
                "rekeyed": s.rekeyed,
                "snapshots": s.snapshots,
                "idempotent_producer": join.idempotent,  # see broker_caps.py
                "batches": s.batches,
                "partitions": sorted(join.parts),
                "pending": sum(len(p.join.pending) for p in join.parts.values()),
                "maps_published": publisher.published,
                "maps_refused_stale": publisher.refused,
                "gate_refusals": aggregator.gate_refusals,
                "publish_failures": publisher.failures,
                "gate_refused": dict(aggregator.refused),  # key -> the gate's last refusal reason
                "drift_alerts": sorted(k for k, alert in aggregator.drift.items() if alert),
            }
        )
