"""Fixtures shared by the integration and fault suites (each conftest.py imports the ones it uses).

`RECAL_TEST_BROKER=tansu|apache|both` (default tansu) picks the broker: `broker_impl` is parametrized over the
choice, so with `both` every test that uses a stack runs once per broker, its id suffixed `[tansu]`/`[apache]`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from streams.dev.devstack import BROKER_IMPLS, DevStack
from tests.support.kit import WorkerProcess


def test_brokers(value: str | None = None) -> tuple[str, ...]:
    """The brokers `RECAL_TEST_BROKER` asks for."""
    value = value if value is not None else os.environ.get("RECAL_TEST_BROKER", "tansu")
    chosen = BROKER_IMPLS if value == "both" else tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = set(chosen) - set(BROKER_IMPLS)
    if unknown or not chosen:
        raise ValueError(f"RECAL_TEST_BROKER={value!r}: use tansu, apache or both")
    return chosen


test_brokers.__test__ = False  # a helper, not a test


@pytest.fixture(scope="session", params=test_brokers())
def broker_impl(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def shared_stack(broker_impl: str) -> Iterator[DevStack]:
    """One broker and Redis for the whole session (per broker): tests keep apart by namespace."""
    with DevStack(broker_impl=broker_impl) as running:
        yield running


@pytest.fixture
def private_stack(broker_impl: str) -> Iterator[DevStack]:
    """A broker and Redis of the test's own: fault tests pause, kill and restart them."""
    with DevStack(broker_impl=broker_impl) as running:
        yield running


@pytest.fixture
def start_worker(tmp_path: Path, stack: DevStack):
    """`start_worker(config_text, env=None, log_name=...)`: a `recal worker` on `stack`, stopped after the test."""
    workers: list[WorkerProcess] = []

    def start(config_text: str, env: dict[str, str] | None = None, log_name: str = "worker.log") -> WorkerProcess:
        path = tmp_path / f"recal-{len(workers)}.toml"
        path.write_text(config_text)
        worker = WorkerProcess(path, stack, tmp_path / log_name, env)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def record(request):
    """`record(**row)` appends the test's summary row to $FAULT_RESULTS (JSON lines), if set; `bench/fault_suite.py`
    prints them as the summary table."""

    def write(**row) -> None:
        path = os.environ.get("FAULT_RESULTS")
        row = {"test": request.node.name, **row}
        if path:
            with open(path, "ab") as f:
                f.write(orjson.dumps(row, option=orjson.OPT_NON_STR_KEYS) + b"\n")

    return write
