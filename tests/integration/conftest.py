"""Fixtures for tests against the real embedded broker (Tansu) and a real redis-server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from streams.devstack import DevStack, free_port


@pytest.fixture(scope="session")
def stack() -> Iterator[DevStack]:
    with DevStack() as running:
        yield running


class WorkerProcess:
    """A `recal worker` subprocess with its own web port; `stats()` reads its /stats endpoint."""

    def __init__(self, config_path: Path, stack: DevStack, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "--config", str(config_path), "--create-topics",
             "--broker", stack.broker_url, "--redis", stack.redis_url, "--web-port", str(self.port)],
            stdout=log_path.open("ab"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def stats(self) -> dict:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=1) as response:
                return orjson.loads(response.read())
        except OSError:
            return {}

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"worker died, see {self.log_path}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1):
                    return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"worker not ready, see {self.log_path}")

    def wait_for(self, predicate, timeout_s: float = 60.0, what: str = "condition") -> dict:
        deadline = time.monotonic() + timeout_s
        stats: dict = {}
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"worker died, see {self.log_path}"
            stats = self.stats()
            if stats and predicate(stats):
                return stats
            time.sleep(0.3)
        raise TimeoutError(f"timed out waiting for {what}; last stats {stats}; log {self.log_path}")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def start_worker(tmp_path: Path, stack: DevStack):
    workers: list[WorkerProcess] = []

    def start(config_text: str) -> WorkerProcess:
        path = tmp_path / f"recal-{len(workers)}.toml"
        path.write_text(config_text)
        worker = WorkerProcess(path, stack, tmp_path / "worker.log")
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
