"""Reading the published maps of one namespace: the one chunked MGET every reader of Redis uses."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import orjson
import redis

from recalibrators.calibration_map import CalibrationMap
from recalibrators.serving.keys import MapField, RedisKeys

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

    def fields(self, prefix: str | None = None) -> tuple[list[str], list[str]]:
        """(schema-2 fields, other fields) of the index, each sorted; the others (schema-1
        `{model}:{segment_key}` of an older publisher) are left untouched by everything here."""
        keys = RedisKeys(prefix) if prefix else self.keys
        current, legacy = [], []
        for raw in self.redis.hkeys(keys.index):
            field = raw.decode(errors="replace")
            try:
                MapField.parse(field)
            except ValueError:
                legacy.append(field)
            else:
                current.append(field)
        return sorted(current), sorted(legacy)

    def list_maps(self, prefix: str | None = None) -> dict[str, CalibrationMap | None]:
        """Every indexed schema-2 map by field; None where the stored value is missing or invalid."""
        keys = RedisKeys(prefix) if prefix else self.keys
        fields, _ = self.fields(prefix)
        out: dict[str, CalibrationMap | None] = {}
        for field, raw in mget_chunked(self.redis, keys, fields):
            try:
                out[field] = CalibrationMap.from_json(raw) if raw is not None else None
            except ValueError:
                out[field] = None
        return out

    def get_map(self, field: MapField, prefix: str | None = None) -> CalibrationMap | None:
        """The stored map, None if absent; ValueError if the stored value is invalid."""
        keys = RedisKeys(prefix) if prefix else self.keys
        raw = self.redis.get(keys.map(str(field)))
        return None if raw is None else CalibrationMap.from_json(raw)

    def history(self, field: MapField, depth: int) -> list[CalibrationMap]:
        """The last `depth` published maps of a key, newest first; unreadable entries skipped."""
        out = []
        for raw in self.redis.lrange(self.keys.history(str(field)), 0, depth - 1):
            try:
                out.append(CalibrationMap.from_json(raw))
            except ValueError:
                continue
        return out

    def list_versions(self, model: str) -> dict[str, dict]:
        """The model's versions as the workers last wrote them; unreadable entries skipped."""
        out = {}
        for model_version, raw in self.redis.hgetall(self.keys.versions(model)).items():
            try:
                out[model_version.decode()] = orjson.loads(raw)
            except (orjson.JSONDecodeError, UnicodeDecodeError):
                continue
        return out
