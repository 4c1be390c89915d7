"""Fixtures for tests against the real embedded broker (Tansu) and a real redis-server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.dev.devstack import DevStack, WorkerProcess


@pytest.fixture(scope="session")
def stack() -> Iterator[DevStack]:
    with DevStack() as running:
        yield running


@pytest.fixture
def start_worker(tmp_path: Path, stack: DevStack):
    workers: list[WorkerProcess] = []

    def start(config_text: str) -> WorkerProcess:
        path = tmp_path / f"recal-{len(workers)}.toml"
        path.write_text(config_text)
        worker = WorkerProcess(path, stack.broker_url, stack.redis_url, tmp_path / "worker.log")
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
