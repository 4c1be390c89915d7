"""A real redis-server (streams.dev.devstack) shared by the serving tests; every test starts on an empty db."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import redis as redis_lib

from recalibrators.calibration_map import CalibrationMap
from streams.dev import devstack


@pytest.fixture(scope="session")
def redis_server() -> Iterator[devstack.Server]:
    server = devstack.redis_server().start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: devstack.Server) -> str:
    return f"redis://127.0.0.1:{redis_server.port}/0"


@pytest.fixture
def r(redis_url: str) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def make_map() -> Callable[..., CalibrationMap]:
    """Factory for small valid maps; `lift` moves the middle knot so map versions differ in output."""

    def make(
        model: str = "ctr",
        segment: dict[str, str] | None = None,
        map_version: int = 1,
        lift: float = 0.0,
        updated_at: int = 1_700_000_000_000,
        model_version: str = "v1",
    ) -> CalibrationMap:
        return CalibrationMap(
            x=np.array([0.0, 0.5, 1.0]),
            y=np.array([0.0, 0.25 + lift, 1.0]),
            method="isotonic",
            n=1000.0,
            positives=100.0,
            last_event_ms=updated_at,
            model=model,
            model_version=model_version,
            segment=segment or {},
            map_version=map_version,
            updated_at=updated_at,
        )

    return make
