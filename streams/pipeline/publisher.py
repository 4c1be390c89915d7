"""Fenced, atomic publication of calibration maps to Redis (contract: docs/serving.md).

One Lua script writes a map: it compares the map's version with the one in the index and, only if the new
one is strictly greater, sets the map key, the index field, the history list and publishes the
notification. A worker that lost its partitions, or a late replay, therefore never overwrites a newer map.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis

from recalibrators.calibration_map import CalibrationMap
from recalibrators.serving.backoff import Backoff
from recalibrators.serving.keys import RedisKeys, check_model, map_field
from recalibrators.serving.store import MGET_CHUNK, MapStore, mget_chunked

__all__ = ["MapPublisher", "PublishResult", "RetryingPublisher"]

# KEYS: map, index, history. ARGV: field, version, json, history length, channel.
# Type checks come first: a Lua script is atomic but not transactional, so a WRONGTYPE after the first
# write would leave a half-published map.
_PUBLISH_LUA = """
local function is(key, kind)
  local t = redis.call('TYPE', key)['ok']
  return t == 'none' or t == kind
end
if not (is(KEYS[1], 'string') and is(KEYS[2], 'hash') and is(KEYS[3], 'list')) then
  return redis.error_reply('WRONGTYPE a recal key holds an unexpected type; nothing written')
end
local version = tonumber(ARGV[2])
local stored = redis.call('HGET', KEYS[2], ARGV[1])
if stored and tonumber(stored) >= version then
  return {0, stored}
end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local keep = tonumber(ARGV[4])
if keep > 0 then
  redis.call('LPUSH', KEYS[3], ARGV[3])
  redis.call('LTRIM', KEYS[3], 0, keep - 1)
end
redis.call('PUBLISH', ARGV[5], ARGV[1] .. ':' .. ARGV[2])
return {1, ARGV[2]}
"""

_CHUNK = 500
_CAS_ATTEMPTS = 10  # promote --force / rollback re-read and retry when a concurrent publish wins


@dataclass(frozen=True)
class PublishResult:
    field: str  # `{model}:{segment_key}`
    status: Literal["published", "refused_stale"]
    version: int  # the version now in the index: ours when published, the newer stored one when refused

    @property
    def published(self) -> bool:
        return self.status == "published"


class MapPublisher(MapStore):
    """Writes maps under `prefix`; keeps the last `history` versions per key (0 disables history)."""

    def __init__(self, redis_client: redis.Redis, prefix: str = "recal", history: int = 5) -> None:
        if history < 0:
            raise ValueError("history must be >= 0")
        super().__init__(redis_client, prefix)
        self.history = history
        self._script = redis_client.register_script(_PUBLISH_LUA)

    def publish(self, m: CalibrationMap) -> PublishResult:
        return self._publish(m, self.keys, self.redis)

    def publish_many(self, maps: Iterable[CalibrationMap]) -> list[PublishResult]:
        """Fenced publish of every map, pipelined: one round trip per 500 maps, each map atomic on its own."""
        return self._publish_many(list(maps), self.keys)

    def _call(self, m: CalibrationMap, keys: RedisKeys, client: redis.Redis) -> Any:
        """Run the script for `m` on `client`: its reply, or the pipeline itself when queued."""
        field = map_field(m)
        if m.version < 0:
            raise ValueError(f"map version must be non-negative, got {m.version}")
        return self._script(
            keys=[keys.map(field), keys.index, keys.history(field)],
            args=[field, m.version, m.to_json(), self.history, keys.channel],
            client=client,
        )

    def _publish(self, m: CalibrationMap, keys: RedisKeys, client: redis.Redis) -> PublishResult:
        # Straight EVALSHA: a pipeline would add a SCRIPT EXISTS round trip for a single map.
        return _result(map_field(m), self._call(m, keys, client))

    def _publish_many(self, maps: Sequence[CalibrationMap], keys: RedisKeys) -> list[PublishResult]:
        results: list[PublishResult] = []
        for start in range(0, len(maps), _CHUNK):  # bounded pipelines: no giant buffers for huge batches
            pipe = self.redis.pipeline(transaction=False)
            chunk = maps[start : start + _CHUNK]
            for m in chunk:
                self._call(m, keys, pipe)
            results += [_result(map_field(m), reply) for m, reply in zip(chunk, pipe.execute(), strict=True)]
        return results

    # ---- promote / rollback -------------------------------------------------------------------------

    def promote(self, from_prefix: str, to_prefix: str = "recal", force: bool = False) -> dict[str, int]:
        """Copy every map of namespace `from_prefix` into `to_prefix`, per key atomic and fenced.

        Without `force` a map lands only if its version is newer than the live one. With `force` it is
        republished as version max(own, live + 1), so a rebuilt map deliberately replaces a live one
        while readers and fencing still see a strictly newer version.
        """
        src, dst = RedisKeys(from_prefix), RedisKeys(to_prefix)
        counts = {"published": 0, "refused_stale": 0, "invalid": 0}
        fields = sorted(f.decode() for f in self.redis.hkeys(src.index))
        for start in range(0, len(fields), MGET_CHUNK):
            maps = []
            for field, raw in mget_chunked(self.redis, src, fields[start : start + MGET_CHUNK]):
                try:
                    m = CalibrationMap.from_json(raw) if raw is not None else None
                    ok = m is not None and map_field(m) == field
                except ValueError:
                    ok = False
                if ok:
                    maps.append(m)
                else:
                    counts["invalid"] += 1
            for m, result in zip(maps, self._publish_many(maps, dst), strict=True):
                if force and not result.published:
                    result = self._publish_bumped(
                        lambda stored, m=m: m.with_meta(version=max(m.version, stored + 1)), result.field, dst
                    )
                counts[result.status] += 1
        return counts

    def rollback(self, model: str, segment_key: str, steps: int = 1) -> PublishResult:
        """Republish the map of `steps` publishes ago (history entry `steps`) as version live + 1.

        The rollback is itself a publish, so it enters the history: a second `rollback(steps=1)` undoes
        the first. Raises LookupError when the history does not reach back that far.
        """
        if steps < 1:
            raise ValueError("steps must be >= 1")
        field = f"{check_model(model)}:{segment_key}"

        def restored(stored: int) -> CalibrationMap:
            raw = self.redis.lindex(self.keys.history(field), steps)
            if raw is None:
                raise LookupError(f"no history entry {steps} publishes back for {field}")
            return CalibrationMap.from_json(raw).with_meta(version=stored + 1)

        return self._publish_bumped(restored, field, self.keys)

    def _publish_bumped(self, build: Callable[[int], CalibrationMap], field: str, keys: RedisKeys) -> PublishResult:
        """Compare-and-set loop: build the map from the stored version, publish it fenced, retry if beaten."""
        for _ in range(_CAS_ATTEMPTS):
            stored = self.redis.hget(keys.index, field)
            result = self._publish(build(-1 if stored is None else int(stored)), keys, self.redis)
            if result.published:
                return result
        return result


def _result(field: str, reply: list) -> PublishResult:
    ok, version = reply
    return PublishResult(field, "published" if ok == 1 else "refused_stale", int(version))


class RetryingPublisher:
    """Non-blocking retries for the worker loop: `submit` maps, call `flush` every tick.

    `flush` never raises on Redis errors and never sleeps: it counts the failure and skips attempts until
    a capped, jittered backoff has passed. Pending maps are kept per key, newest version wins, so a long
    outage costs one map per key, not a growing queue.
    """

    def __init__(
        self,
        publisher: MapPublisher,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.publisher = publisher
        self.backoff = backoff or Backoff(base=0.1, cap=30.0)
        self.clock = clock
        self.pending: dict[str, CalibrationMap] = {}
        self.failures = 0
        self.published = 0
        self.refused = 0
        self.last_error = ""
        self._retry_at = 0.0

    def submit(self, maps: Iterable[CalibrationMap]) -> None:
        for m in maps:
            field = map_field(m)
            if (cur := self.pending.get(field)) is None or m.version >= cur.version:
                self.pending[field] = m

    def _answers(self) -> bool:
        """While backing off, one PING per tick: Redis answering again ends the backoff at once, so maps
        come back within one refresh of the outage's end rather than after the backoff's cap."""
        try:
            self.publisher.redis.ping()
        except redis.RedisError:
            return False
        return True

    def flush(self) -> list[PublishResult]:
        """Publish what is pending unless backing off (a PING that answers ends the backoff); [] when
        nothing was attempted or it failed."""
        if not self.pending:
            return []
        if self.clock() < self._retry_at and not self._answers():
            return []
        try:
            results = self.publisher.publish_many(self.pending.values())
        except redis.RedisError as exc:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._retry_at = self.clock() + self.backoff.next_delay()
            return []
        self.backoff.reset()
        self.pending.clear()  # refused maps are final: a newer version is already live
        self.published += sum(r.published for r in results)
        self.refused += sum(not r.published for r in results)
        return results
