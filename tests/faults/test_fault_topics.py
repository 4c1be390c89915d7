"""Broker-loss durability starts with replication: the worker must be able to create its internal topics
(above all `recal-join-state`, the exactly-once snapshots) with a production replication factor.

The embedded broker has a single node, so this is checked against a recording admin client: what matters is
the replication factor `ensure_topics` asks for.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar

from streams.pipeline import topics as topics_module
from streams.pipeline.config import load_config


class RecordingAdmin:
    created: ClassVar[list] = []

    def __init__(self, **kwargs) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def list_topics(self) -> list[str]:
        return [t.name for t in RecordingAdmin.created]

    async def create_topics(self, new_topics) -> None:
        RecordingAdmin.created.extend(new_topics)

    async def describe_topics(self, names) -> list[dict]:
        by_name = {t.name: t for t in RecordingAdmin.created}
        return [{"topic": n, "partitions": list(range(by_name[n].num_partitions))} for n in names]


def test_internal_topics_can_be_created_replicated(monkeypatch, tmp_path: Path):
    RecordingAdmin.created = []
    monkeypatch.setattr(topics_module, "AIOKafkaAdminClient", RecordingAdmin)
    path = tmp_path / "recal.toml"
    path.write_text("[worker]\npartitions = 4\nreplication_factor = 3\n")
    config = load_config(path, env={})
    asyncio.run(topics_module.ensure_topics(config, create_sources=True))
    factors = {t.name: t.replication_factor for t in RecordingAdmin.created}
    assert factors[config.topics.state] == 3, factors
    assert set(factors.values()) == {3}, factors
