"""Reading the published maps of one namespace: the one chunked MGET every reader of Redis uses."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import redis

from recalibrators.calibration_map import CalibrationMap
from recalibrators.serving.keys import RedisKeys, check_model

MGET_CHUNK = 1000  # keys per MGET: bounded reply size, no multi-second command on a large namespace


def mget_chunked(client: redis.Redis, keys: RedisKeys, fields: Sequence[str]) -> Iterator[tuple[str, bytes | None]]:
    """(field, stored map bytes or None) for every field, in order, MGET_CHUNK keys per round trip."""
    for start in range(0, len(fields), MGET_CHUNK):
        chunk = fields[start : start + MGET_CHUNK]
        yield from zip(chunk, client.mget([keys.map(f) for f in chunk]), strict=True)


class MapStore:
    """Read access to the maps under one prefix (the CLI, the dashboard, replay and the publisher)."""

    def __init__(self, redis_client: redis.Redis, prefix: str = "recal") -> None:
        self.redis = redis_client
        self.keys = RedisKeys(prefix)

    def list_maps(self, prefix: str | None = None) -> dict[str, CalibrationMap | None]:
        """Every indexed map by field; None where the stored value is missing or invalid."""
        keys = RedisKeys(prefix) if prefix else self.keys
        fields = sorted(f.decode() for f in self.redis.hkeys(keys.index))
        out: dict[str, CalibrationMap | None] = {}
        for field, raw in mget_chunked(self.redis, keys, fields):
            try:
                out[field] = CalibrationMap.from_json(raw) if raw is not None else None
            except ValueError:
                out[field] = None
        return out

    def get_map(self, model: str, segment_key: str, prefix: str | None = None) -> CalibrationMap | None:
        """The stored map, None if absent; ValueError if the stored value is invalid."""
        keys = RedisKeys(prefix) if prefix else self.keys
        raw = self.redis.get(keys.map(f"{check_model(model)}:{segment_key}"))
        return None if raw is None else CalibrationMap.from_json(raw)

    def history(self, model: str, segment_key: str, depth: int) -> list[CalibrationMap]:
        """The last `depth` published maps of a key, newest first; unreadable entries skipped."""
        out = []
        for raw in self.redis.lrange(self.keys.history(f"{check_model(model)}:{segment_key}"), 0, depth - 1):
            try:
                out.append(CalibrationMap.from_json(raw))
            except ValueError:
                continue
        return out
