"""Topic set-up: the join's inputs and outputs must be co-partitioned (same partition count)."""

from __future__ import annotations

import asyncio
import time

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.pipeline.config import Config
from streams.pipeline.partitioners import partition_of

__all__ = ["PARTIALS_TABLE", "ensure_topics", "ids_covering_partitions", "partials_changelog", "partition_of"]

PARTIALS_TABLE = "partials"  # the Faust table the aggregation agent keeps; its changelog is ours to create


def partials_changelog(config: Config) -> str:
    """The partials table's changelog topic, named as Faust names it (`{app id}-{table}-changelog`)."""
    return f"{config.app_id}-{PARTIALS_TABLE}-changelog"


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
            (topics.rekeyed, n),
            (topics.labeled, n),
            (topics.state, n),
            (topics.partials, config.partitions),
            (topics.deadletter, config.partitions),
        ]
        new = [NewTopic(t, p, config.replication_factor) for t, p in internal if t not in existing]
        changelog = partials_changelog(config)
        if changelog not in existing:  # compacted, as Faust declares it
            compact = {"cleanup.policy": "compact"}
            new.append(NewTopic(changelog, config.partitions, config.replication_factor, topic_configs=compact))
        if new:
            await admin.create_topics(new)
            await _wait_for_partitions(admin, {t.name: t.num_partitions for t in new})
        return n
    finally:
        await admin.close()


async def _wait_for_partitions(admin: AIOKafkaAdminClient, want: dict[str, int], timeout_s: float = 30.0) -> None:
    """Until the metadata shows every new topic with all its partitions. A broker may answer CreateTopics
    before its metadata has them (Apache Kafka's controller propagates them a moment later); a Faust
    consumer that starts in that moment caches the changelog with 0 partitions, and its table refuses
    every partial (PartitionsMismatch) until the metadata's next refresh, minutes later; and the
    co-partitioning check would count a source created a moment ago without its partitions."""
    deadline = time.monotonic() + timeout_s
    while True:
        described = await admin.describe_topics(list(want))
        seen = {d["topic"]: len(d["partitions"]) for d in described if not d.get("error_code")}
        if all(seen.get(t, 0) >= n for t, n in want.items()):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics created but not visible with their partitions after {timeout_s:.0f} s: {want}")
        await asyncio.sleep(0.1)
