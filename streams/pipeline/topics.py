"""Topic set-up: the join's inputs and outputs must be co-partitioned (same partition count)."""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.pipeline.config import Config
from streams.pipeline.partitioners import partition_of

__all__ = ["COMPACT", "ensure_topics", "ids_covering_partitions", "partition_of"]

log = logging.getLogger("recal.topics")

COMPACT = {"cleanup.policy": "compact"}  # the partials topic: the aggregator's state (streams.pipeline.partials_topic)


def ids_covering_partitions(prefix: str, partitions: int) -> list[str]:
    """One id per partition (`prefix-0`, `prefix-1`, ...): events keyed by them reach every partition,
    which is how tests, benchmarks and tools move every partition's event-time clock."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < partitions:
        key = f"{prefix}-{i}"
        found.setdefault(partition_of(key.encode(), partitions), key)
        i += 1
    return [found[p] for p in sorted(found)]


async def ensure_topics(config: Config, create_sources: bool = False) -> int:
    """Create missing internal topics with the sources' partition count; return that count.

    Source topics belong to the producers; with `create_sources` (dev, demo) missing ones are
    created with `config.partitions`. A partition-count mismatch among the co-partitioned topics is
    refused with a clear error instead of silently joining the wrong events.
    """
    admin = AIOKafkaAdminClient(**config.kafka_client_args())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        topics = config.topics
        missing_sources = [t for t in topics.sources[:3] if t not in existing]
        if missing_sources and create_sources:
            await admin.create_topics(
                [NewTopic(t, config.partitions, config.replication_factor) for t in missing_sources]
            )
            await _wait_for_partitions(admin, dict.fromkeys(missing_sources, config.partitions))
            existing.update(missing_sources)
        elif missing_sources:
            raise RuntimeError(f"source topics missing: {missing_sources} (create them, or pass --create-topics)")
        described = await admin.describe_topics([t for t in topics.sources if t in existing])
        counts = {d["topic"]: len(d["partitions"]) for d in described}
        n = counts[topics.impressions]
        wrong = {t: c for t, c in counts.items() if c != n}
        if wrong:
            raise RuntimeError(f"topics must be co-partitioned with {topics.impressions} ({n} partitions): {wrong}")
        internal = [
            (topics.rekeyed, n, {}),
            (topics.labeled, n, {}),
            (topics.state, n, {}),
            (topics.partials, config.partitions, COMPACT),
            (topics.deadletter, config.partitions, {}),
        ]
        new = [NewTopic(t, p, config.replication_factor, topic_configs=c) for t, p, c in internal if t not in existing]
        if topics.partials in existing:
            await _compact(admin, topics.partials)
        if new:
            await admin.create_topics(new)
            await _wait_for_partitions(admin, {t.name: t.num_partitions for t in new})
        return n
    finally:
        await admin.close()


async def _compact(admin: AIOKafkaAdminClient, topic: str) -> None:
    """Make an existing partials topic compacted (one an older worker created with the broker's default
    retention, which would delete the partials of cold maps). A broker that refuses is logged, not fatal."""
    resource = ConfigResource(ConfigResourceType.TOPIC, topic)
    try:
        (described,) = await admin.describe_configs([resource])
        policy = next((c[1] for c in described.resources[0][4] if c[0] == "cleanup.policy"), None)
        if policy == COMPACT["cleanup.policy"]:
            return
        # AlterConfigs replaces the topic's whole override set; the partials topic has no other one of ours.
        (altered,) = await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, COMPACT)])
        if altered.resources[0][0]:
            raise RuntimeError(f"error {altered.resources[0][0]}: {altered.resources[0][1]}")
        log.warning("topic %s had cleanup.policy=%s: now compact (it holds the aggregator's state)", topic, policy)
    except Exception as exc:  # the worker runs on without compaction, which costs only read time
        log.warning(
            "could not make topic %s compacted (%r): set cleanup.policy=compact on it, or the partials of maps "
            "that see no traffic for the topic's retention are lost on the next take-over",
            topic,
            exc,
        )


async def _wait_for_partitions(admin: AIOKafkaAdminClient, want: dict[str, int], timeout_s: float = 30.0) -> None:
    """Until the metadata shows every new topic with all its partitions. A broker may answer CreateTopics
    before its metadata has them (Apache Kafka's controller propagates them a moment later); a client
    that starts in that moment caches the topic with 0 partitions until the metadata's next refresh,
    minutes later (a Faust table refused every partial so); and the co-partitioning check would count a
    source created a moment ago without its partitions."""
    deadline = time.monotonic() + timeout_s
    while True:
        described = await admin.describe_topics(list(want))
        seen = {d["topic"]: len(d["partitions"]) for d in described if not d.get("error_code")}
        if all(seen.get(t, 0) >= n for t, n in want.items()):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics created but not visible with their partitions after {timeout_s:.0f} s: {want}")
        await asyncio.sleep(0.1)
