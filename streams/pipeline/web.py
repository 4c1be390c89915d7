"""The worker's web endpoints: /healthz, /readyz, /metrics, /stats and the calibration dashboard.

Mounted on the Faust app's web server by `register_pages`; everything they show is read from the join
worker, the publisher and the aggregator the app built.

Exposure (#13 item 15): the server binds `[worker] web_host` (default 127.0.0.1; a container sets
RECAL_WEB_HOST=0.0.0.0 so probes and scrapers reach it). With a token (RECAL_WEB_TOKEN) every endpoint but
the probes (/healthz, /readyz) wants `Authorization: Bearer <token>`. /readyz names failing checks, never
their exception text. Dashboard pages are rendered on a thread of their own (never queued behind, or
delaying, the publisher's Redis writes) and cached for one refresh interval.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import redis

from streams.dashboard.pages import DashboardSource
from streams.pipeline import startup
from streams.pipeline.join_stats import Stats, segment_keys
from streams.pipeline.metrics import PROMETHEUS_CONTENT_TYPE, LoopMonitor, Readiness, exposition

if TYPE_CHECKING:
    import faust
    from prometheus_client import CollectorRegistry

    from streams.pipeline.aggregator import Aggregator
    from streams.pipeline.config import Config
    from streams.pipeline.join_worker import JoinWorker
    from streams.pipeline.partials_consumer import PartialsConsumer
    from streams.pipeline.publisher import RetryingPublisher
    from streams.pipeline.refresh import Refresher

PROBES = ("/healthz", "/readyz")  # never behind the token: kubelets and load balancers carry none


def bearer_ok(header: str | None, token: str) -> bool:
    """Whether an Authorization header carries `token` (always true without a token)."""
    if not token:
        return True
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


class PageCache:
    """Rendered pages for `ttl` seconds, at most `size` of them (oldest dropped): a dashboard refreshed by
    many browsers costs one Redis read per page and refresh interval."""

    def __init__(self, ttl: float, size: int = 256, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.size, self.clock = ttl, size, clock
        self._pages: OrderedDict[Any, tuple[float, Any]] = OrderedDict()

    def get(self, key: Any, render: Callable[[], Any]) -> Any:
        now = self.clock()
        hit = self._pages.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        page = render()
        self._pages[key] = (now, page)
        self._pages.move_to_end(key)
        while len(self._pages) > self.size:
            self._pages.popitem(last=False)
        return page


def register_pages(
    app: faust.App,
    config: Config,
    *,
    join: JoinWorker,
    publisher: RetryingPublisher,
    aggregator: Aggregator,
    metrics: CollectorRegistry,
    loop_monitor: LoopMonitor | None = None,
    refresher: Refresher | None = None,
    partials: PartialsConsumer | None = None,
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
    pages = PageCache(ttl=config.refresh_interval_ms / 1000)
    renderer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recal-dashboard")

    async def render(key: tuple, draw: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(renderer, pages.get, key, draw)

    def page(path: str):
        """`app.page(path)`, behind the bearer token unless it is a probe."""

        def wrap(handler):
            async def guarded(web, request):
                if path not in PROBES and not bearer_ok(request.headers.get("Authorization"), config.web_token):
                    return web.text("unauthorized", status=401, headers={"WWW-Authenticate": "Bearer"})
                return await handler(web, request)

            guarded.__name__ = handler.__name__
            guarded.__doc__ = handler.__doc__
            return app.page(path)(guarded)

        return wrap

    @page("/healthz")
    async def healthz(web, request):
        return web.json({"ok": True})

    @page("/readyz")
    async def readyz(web, request):
        """Ready when the join owns its partitions (recovery done), and the broker and Redis answer
        (checked at most every 2 s, each bounded by 1.5 s). 503 names the failing checks."""
        ready, body = await readiness.report(join.ready.is_set())
        return web.json(body, status=200 if ready else 503)

    @page("/metrics")
    async def metrics_page(web, request):
        # In a thread: with many maps, formatting takes ~65 us per map (the collector only copies dicts,
        # atomically under the GIL). aiohttp adds "; charset=utf-8" and refuses a charset in content_type.
        text = await asyncio.to_thread(exposition, metrics)
        return web.text(text.decode(), content_type=PROMETHEUS_CONTENT_TYPE)

    @page("/dashboard")
    async def dashboard_index(web, request):
        try:
            html = await render(("index",), dashboard.index_html)
        except redis.RedisError as exc:
            return web.text(f"Redis unavailable: {type(exc).__name__}", status=503)
        return web.html(html)

    @page("/dashboard/map")
    async def dashboard_map(web, request):
        query = request.query
        model, model_version, segment = (
            query.get("model", ""),
            query.get("model_version", ""),
            query.get("segment", "*"),
        )
        try:
            status, html = await render(
                ("map", model, model_version, segment), lambda: dashboard.map_html(model, model_version, segment)
            )
        except redis.RedisError as exc:
            return web.text(f"Redis unavailable: {type(exc).__name__}", status=503)
        return web.html(html, status=status)

    @page("/stats")
    async def stats(web, request):
        reports = join.reports()  # every join process of this worker
        s, partitions, pending = Stats.total(reports)
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
                "loop_lag_max_ms": round(loop_monitor.max_s * 1000, 1) if loop_monitor else None,
                "cardinality": segment_keys(reports),
                "partitions": partitions,
                "pending": pending,
                "maps_published": publisher.published,
                "maps_refused_stale": publisher.refused,
                "gate_refusals": aggregator.gate_refusals,
                "publish_failures": publisher.failures,
                "gate_refused": dict(aggregator.refused),  # keys held back -> the gate's reason, with numbers
                "gate_held": len(aggregator.refused),
                "publish_errors": publisher.errors,
                "version_partials_dropped": aggregator.dropped_partials,  # too_many_versions at the aggregator
                "partials_malformed": partials.malformed if partials else None,  # neither a partial nor a prior
                "partials_catching_up": sorted(partials.catching_up) if partials else None,  # read from their start
                "drift_alerts": sorted(k for k, alert in dict(aggregator.drift).items() if alert),
                "refresh_last_s": round(refresher.last_seconds, 3) if refresher else None,  # map building per tick
                "refresh_max_s": round(refresher.max_seconds, 3) if refresher else None,
                "refresh_backlog_keys": len(aggregator.dirty),  # changed keys whose maps wait for a tick
                "refresh_carried_keys": refresher.carried if refresher else None,  # left by the last tick
                "map_builder_restarts": refresher.builder.restarts if refresher else None,
                "startup_s": startup.phases(),  # seconds from the process start to each start-up phase
            }
        )
