"""The fault suite shares one broker and Redis per session (per broker `RECAL_TEST_BROKER` names): tests keep
apart by namespace. A test that freezes the broker or restarts Redis empty takes a private stack instead
(`private_stack` as its `stack`: test_fault_broker, test_fault_redis)."""

from __future__ import annotations

import pytest

from tests.support.fixtures import broker_impl, private_stack, record, shared_stack, start_worker

__all__ = ["broker_impl", "private_stack", "record", "shared_stack", "stack", "start_worker"]


@pytest.fixture(scope="session")
def stack(shared_stack):
    return shared_stack
