"""The integration suite shares one broker (per `RECAL_TEST_BROKER` choice) and one Redis for the session."""

from __future__ import annotations

import pytest

from tests.support.fixtures import broker_impl, shared_stack, start_worker

__all__ = ["broker_impl", "shared_stack", "stack", "start_worker"]


@pytest.fixture(scope="session")
def stack(shared_stack):
    return shared_stack
