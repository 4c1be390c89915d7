"""Fixtures of the fault-injection suite; the code lives in faultkit.py."""

from faultkit import record, stack, start_worker

__all__ = ["record", "stack", "start_worker"]
