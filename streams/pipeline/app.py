"""The Faust application a `recal worker` runs.

    raw topics --(JoinWorker: batched consume, validate, join, partial calibrators)--> recal-labeled
                                                  \\--> recal-partials (compacted) --(PartialsConsumer)--> Aggregator
    timer(refresh) --(builder process: merge partials, quality gate, a slice per tick)--> fenced publish to Redis

Faust supplies the worker process, the refresh timer, the web server (health, metrics) and graceful shutdown.
The Kafka I/O is aiokafka's, in two consumer groups: `JoinWorker` (the hot path) and `PartialsConsumer` (the
aggregator's state, read back from the compacted partials topic). Faust's own consumer and tables are off: its
table recovery after a take-over on Apache Kafka could come back without state the committed offsets had
moved past (docs/pipeline.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import faust
import mode
import redis
from faust.app.base import BootStrategy

from recalibrators.serving.keys import RedisKeys
from streams.pipeline import gc_policy, logsafe, startup
from streams.pipeline.aggregator import Aggregator
from streams.pipeline.config import Config
from streams.pipeline.join_worker import JoinWorker
from streams.pipeline.map_builder import MapBuilder
from streams.pipeline.metrics import LoopMonitor, MapTracker, RecalCollector, registry
from streams.pipeline.partials_consumer import PartialsConsumer
from streams.pipeline.partials_topic import send_partials
from streams.pipeline.publisher import MapPublisher, RetryingPublisher
from streams.pipeline.refresh import Refresher
from streams.pipeline.stalls import StallWatch
from streams.pipeline.web import register_pages

log = logging.getLogger("recal.app")


class ComponentService(mode.Service):
    """Runs a component (`start`, `run` and `stop` coroutines) and its background coroutines inside the Faust
    worker's lifecycle; `name` marks its start-up phase. A crash of `run` stops the worker, so the supervisor
    restarts it."""

    def __init__(
        self,
        component,
        name: str,
        *background: Callable[[], Awaitable[None]],
        after: Callable[[], object] | None = None,
        **kwargs,
    ) -> None:
        self.component, self.component_name, self.background, self.after = component, name, background, after
        super().__init__(**kwargs)

    def _repr_name(self) -> str:  # mode's label in logs and graphs: which component, not the class twice
        return self.component_name

    async def on_start(self) -> None:
        startup.mark(self.component_name)
        await self.component.start()
        self.add_future(self._run())
        for run in self.background:
            self.add_future(run())

    async def _run(self) -> None:
        try:
            await self.component.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s crashed; stopping so the supervisor restarts us", self.component_name)
            await self.crash(exc)

    async def on_stop(self) -> None:
        await self.component.stop()

    async def on_shutdown(self) -> None:  # mode calls it once the background coroutines are stopped
        if self.after is not None:
            self.after()


def create_app(config: Config) -> faust.App:
    logsafe.install()  # producer-controlled strings (segments, ids) never forge a log line
    app = faust.App(
        config.app_id,
        store="memory://",
        web_port=config.web_port,
        web_bind=config.web_host,  # the interfaces the server listens on (web_host only names it in URLs)
        web_host=config.web_host,
    )
    app.boot_strategy = BootStrategy(app, enable_kafka=False)  # no Faust consumer, producer or tables
    aggregator = Aggregator(config.model)
    cache = redis.Redis.from_url(config.redis, socket_timeout=1.0, socket_connect_timeout=1.0)
    publisher = RetryingPublisher(MapPublisher(cache, prefix=config.prefix))

    async def on_partials(partials) -> None:
        await send_partials(join.producer, config.topics.partials, partials)

    join = JoinWorker(config, on_partials=on_partials)
    partials = PartialsConsumer(config, aggregator)
    loop_monitor = LoopMonitor(watch=StallWatch(config.stall_log_ms / 1000) if config.stall_log_ms else None)
    # Dependencies, not app.services: those start after the app's own start-up, which would serialise the two
    # consumer-group joins (~5 s each on the embedded broker).
    # The join's full garbage collection at stop (streams.pipeline.gc_policy) comes after the loop monitor has
    # stopped: a pause the process asked for is not a stall.
    join_service = ComponentService(
        join, "join_service", loop_monitor.run, after=gc_policy.collect_at_stop, loop=app.loop, beacon=app.beacon
    )
    app.add_dependency(join_service)
    app.add_dependency(ComponentService(partials, "partials_service", loop=app.loop, beacon=app.beacon))

    index_key = RedisKeys(config.prefix).index
    tracker = MapTracker()  # the maps this worker published last: map age and calibration gauges

    def redis_lost_maps() -> bool:
        """Redis came back empty (restart without persistence, failover, FLUSHALL)?"""
        try:
            return bool(aggregator.published) and not cache.exists(index_key)
        except redis.RedisError:
            return False  # unreachable: RetryingPublisher already counts and backs off

    # Map building runs in the builder process, half an interval per tick at most, the rest carried.
    builder = MapBuilder(config)
    refresher = Refresher(aggregator, builder, budget_s=config.refresh_interval_ms / 2000)

    @app.task
    async def start_builder() -> None:  # beside the consumer-group joins, not in the first tick
        await builder.start()

    @app.on_before_shutdown.connect
    async def stop_builder(app: faust.App, **kwargs) -> None:
        await asyncio.to_thread(builder.close)

    @app.timer(config.refresh_interval_ms / 1000)
    async def refresh() -> None:
        if await asyncio.to_thread(redis_lost_maps):
            keys = refresher.republish_all()  # every map this worker owns, not only the changed ones
            log.warning("Redis has no map index: republishing %d maps", keys)
        maps = await refresher.refresh(int(time.time() * 1000))
        publisher.submit(maps)
        versions = aggregator.take_versions()
        publisher.submit_versions(
            {m: {v: info.as_json() for v, info in infos.items()} for m, infos in versions.items()}
        )
        pending = dict(publisher.pending)
        results = await asyncio.to_thread(publisher.flush)
        tracker.record(pending, results)

    metrics_registry = registry(
        RecalCollector(
            join, publisher, aggregator, tracker, loop_monitor=loop_monitor, refresher=refresher, partials=partials
        )
    )
    register_pages(
        app,
        config,
        join=join,
        publisher=publisher,
        aggregator=aggregator,
        metrics=metrics_registry,
        loop_monitor=loop_monitor,
        refresher=refresher,
        partials=partials,
    )

    return app
