"""Every fault test gets a broker and Redis of its own (the faults are destructive: SIGSTOP of the broker, Redis
restarted empty), on each broker `RECAL_TEST_BROKER` names."""

from __future__ import annotations

import pytest

from tests.support.fixtures import broker_impl, private_stack, record, start_worker

__all__ = ["broker_impl", "private_stack", "record", "stack", "start_worker"]


@pytest.fixture
def stack(private_stack):
    return private_stack
