"""The checked-in vectors are what the Python core computes today (regenerate: generate.py)."""

from __future__ import annotations

from clients.testdata import generate


def test_vectors_are_fresh() -> None:
    assert generate.OUT.read_bytes() == generate.render(), "stale: run python clients/testdata/generate.py"
