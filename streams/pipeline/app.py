"""The Faust application a `recal worker` runs.

    raw topics --(JoinWorker: batched consume, validate, join, partial calibrators)--> recal-labeled
                                                  \\--> recal-partials --(agent: aggregate)--> table
    timer(refresh) --(thread: merge partials, quality gate, a slice per tick)--> fenced publish to Redis

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
from streams.pipeline import logsafe, startup
from streams.pipeline.aggregator import Aggregator, MapState
from streams.pipeline.config import Config
from streams.pipeline.join_processes import paced, partial_message
from streams.pipeline.join_worker import JoinWorker
from streams.pipeline.metrics import LoopMonitor, MapTracker, RecalCollector, registry
from streams.pipeline.publisher import MapPublisher, RetryingPublisher
from streams.pipeline.refresh import Refresher
from streams.pipeline.stalls import StallWatch
from streams.pipeline.topics import PARTIALS_TABLE
from streams.pipeline.urls import faust_brokers
from streams.pipeline.web import register_pages

log = logging.getLogger("recal.app")


class JoinService(mode.Service):
    """Runs the JoinWorker inside the Faust worker's lifecycle."""

    def __init__(self, worker: JoinWorker, loop_monitor: LoopMonitor, **kwargs) -> None:
        self.worker = worker
        self.loop_monitor = loop_monitor
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        startup.mark("join_service")
        await self.worker.start()
        self.add_future(self._run())
        self.add_future(self.loop_monitor.run())

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
    logsafe.install()  # producer-controlled strings (segments, ids) never forge a log line
    app = faust.App(
        config.app_id,
        broker=faust_brokers(config.broker),
        broker_credentials=config.kafka.faust_credentials(),
        store="memory://",
        web_port=config.web_port,
        web_bind=config.web_host,  # the interfaces the server listens on (web_host only names it in URLs)
        web_host=config.web_host,
        topic_partitions=config.partitions,
        topic_replication_factor=config.replication_factor,
        topic_allow_declare=True,
        broker_session_timeout=config.session_timeout_ms / 1000,
        broker_heartbeat_interval=max(0.5, config.session_timeout_ms / 5000),
        producer_acks=-1,
        table_cleanup_interval=60,
        # No standby copies of other workers' table partitions: on Apache Kafka a standby partition promoted to
        # active after a worker died sometimes never finished its recovery ("No event received for active tp ...
        # since recovery start", for good), and the agent never consumed a partial again. Without standbys the new
        # owner reads the compacted changelog from its start, as it does after every restart of a memory store.
        table_standby_replicas=0,
    )
    partials_topic = app.topic(
        config.topics.partials,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=config.partitions,
    )
    table = app.Table(PARTIALS_TABLE, default=None, key_type=bytes, value_type=bytes, partitions=config.partitions)
    aggregator = Aggregator(config.model)
    cache = redis.Redis.from_url(config.redis, socket_timeout=1.0, socket_connect_timeout=1.0)
    publisher = RetryingPublisher(MapPublisher(cache, prefix=config.prefix))

    async def send_partials(partials) -> None:
        async for partition, key, calibrator, delayed in paced(partials):
            k, v = partial_message(partition, key, calibrator, delayed)
            await partials_topic.send(key=k, value=v)

    join = JoinWorker(config, on_partials=send_partials)
    loop_monitor = LoopMonitor(watch=StallWatch(config.stall_log_ms / 1000) if config.stall_log_ms else None)
    # A dependency, not an app.service: those start after the app's own group join and table
    # recovery, which serialised two consumer-group joins (~5 s each on the embedded broker).
    app.add_dependency(JoinService(join, loop_monitor, loop=app.loop, beacon=app.beacon))

    async def save(event, stored: bytes) -> None:
        """`table[event.key] = stored`, its changelog record handed to the producer before the event is acked.
        Faust's own write queues the record in a buffer whose flush before a commit stops waiting after 0.1 s
        without progress: under load a partial's offset could be committed before its changelog record was sent,
        and after a SIGKILL the new owner would recover the table without that key's state, for good (committed
        partials are never read again). The commit's flush does wait for what the producer holds. (A take-over on
        Apache Kafka still loses state another way: docs/pipeline.md, "Known issue".)"""
        table.data[event.key] = stored
        await table.changelog_topic.send(
            key=event.key,
            value=stored,
            partition=event.message.partition,
            key_serializer=table.key_serializer,
            value_serializer=table.value_serializer,
            callback=table._on_changelog_sent,
        )

    @app.agent(partials_topic, concurrency=1)  # stateful: keep at 1 (faust-streaming #606)
    async def aggregate(stream):
        handled = 0
        async for event in stream.events():
            handled += 1
            # A buffered stream never suspends: thousands of partials held the loop. ~0.2 ms per partial (Faust's
            # stream, the table's changelog send): 64 of them are ~15 ms, twice that while the refresh holds the GIL.
            if not handled % 64:
                await asyncio.sleep(0)
            key = event.key.decode()
            try:
                stored = aggregator.add_stored(key, event.value, table.get(event.key))
            except ValueError as exc:
                log.warning("dropping malformed partial for %s: %s", key, exc)
                continue
            if stored is not None:  # None: a version beyond the model's cap, dropped and counted
                await save(event, stored)

    index_key = RedisKeys(config.prefix).index
    tracker = MapTracker()  # the maps this worker published last: map age and calibration gauges

    def redis_lost_maps() -> bool:
        """Redis came back empty (restart without persistence, failover, FLUSHALL)?"""
        try:
            return bool(aggregator.published) and not cache.exists(index_key)
        except redis.RedisError:
            return False  # unreachable: RetryingPublisher already counts and backs off

    # Map building runs in the refresher's thread, half an interval per tick at most, the rest carried.
    refresher = Refresher(aggregator, budget_s=config.refresh_interval_ms / 2000)

    @app.timer(config.refresh_interval_ms / 1000)
    async def refresh() -> None:
        if await asyncio.to_thread(redis_lost_maps):
            # Rebuild every map this worker owns from the table, not only the changed ones.
            for key, stored in table.items():
                try:
                    aggregator.restore(key.decode(), MapState.decode(stored))
                except ValueError as exc:  # a schema-1 state an older worker left in the table
                    log.warning("not restoring %r: %s", key, exc)
            log.warning("Redis has no map index: republishing %d maps", len(aggregator.dirty))
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
        RecalCollector(join, publisher, aggregator, tracker, loop_monitor=loop_monitor, refresher=refresher)
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
    )

    return app
