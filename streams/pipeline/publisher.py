"""Fenced, atomic publication of calibration maps to Redis (contract: docs/serving.md).

One Lua script writes a map: it compares the map's version with the one in the index and, only if the new
one is strictly greater, sets the map key, the index field, the history list and publishes the
notification. A worker that lost its partitions, or a late replay, therefore never overwrites a newer map.
Keys are schema 2 (`recalibrators.serving.keys.MapField`); schema-1 keys (`{model}:{segment_key}`) of an
older publisher are never read or written here (docs/serving.md, "Migrating from schema 1").

One key that cannot be written (a WRONGTYPE key, a non-numeric index field) is logged and reported as
`error` for that map only: it never blocks the maps around it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import redis

from recalibrators.calibration_map import CalibrationMap
from recalibrators.serving.backoff import Backoff
from recalibrators.serving.keys import MapField, RedisKeys, map_field
from recalibrators.serving.store import MGET_CHUNK, MapStore, mget_chunked

__all__ = ["MapPublisher", "PublishResult", "RetryingPublisher"]

log = logging.getLogger("recal.publish")

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
if stored and not tonumber(stored) then
  return redis.error_reply('BADINDEX the index field holds a non-numeric map version; nothing written')
end
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
    field: str  # str(MapField)
    status: Literal["published", "refused_stale", "error"]
    map_version: int  # in the index now: ours when published, the newer stored one when refused; -1 on error
    error: str = ""

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
        """Fenced publish of every map, pipelined: one round trip per 500 maps, each map atomic on its own
        and with its own result (a key Redis refuses is an `error` result, the others go on)."""
        return self._publish_many(list(maps), self.keys)

    def _call(self, m: CalibrationMap, keys: RedisKeys, client: redis.Redis) -> Any:
        """Run the script for `m` on `client`: its reply, or the pipeline itself when queued."""
        field = map_field(m)
        return self._script(
            keys=[keys.map(field), keys.index, keys.history(field)],
            args=[field, m.map_version, m.to_json(), self.history, keys.channel],
            client=client,
        )

    def _publish(self, m: CalibrationMap, keys: RedisKeys, client: redis.Redis) -> PublishResult:
        # Straight EVALSHA: a pipeline would add a SCRIPT EXISTS round trip for a single map.
        try:
            reply = self._call(m, keys, client)
        except redis.ResponseError as exc:
            reply = exc
        return _result(map_field(m), reply)

    def _publish_many(self, maps: Sequence[CalibrationMap], keys: RedisKeys) -> list[PublishResult]:
        results: list[PublishResult] = []
        for start in range(0, len(maps), _CHUNK):  # bounded pipelines: no giant buffers for huge batches
            pipe = self.redis.pipeline(transaction=False)
            chunk = maps[start : start + _CHUNK]
            for m in chunk:
                self._call(m, keys, pipe)
            replies = pipe.execute(raise_on_error=False)  # connection errors still raise: the caller retries
            results += [_result(map_field(m), reply) for m, reply in zip(chunk, replies, strict=True)]
        return results

    def publish_versions(self, model: str, infos: dict[str, dict]) -> None:
        """`{prefix}:versions:{model}`: model_version -> {first_event_ms, last_event_ms, examples, state}."""
        if infos:
            self.redis.hset(self.keys.versions(model), mapping={v: orjson.dumps(i) for v, i in infos.items()})

    # ---- promote / rollback -------------------------------------------------------------------------

    def promote(self, from_prefix: str, to_prefix: str = "recal", force: bool = False) -> dict[str, int]:
        """Copy every map of namespace `from_prefix` into `to_prefix`, per key atomic and fenced.

        Without `force` a map lands only if its version is newer than the live one. With `force` it is
        republished as version max(own, live + 1), so a rebuilt map deliberately replaces a live one
        while readers and fencing still see a strictly newer version.
        """
        src, dst = RedisKeys(from_prefix), RedisKeys(to_prefix)
        counts = {"published": 0, "refused_stale": 0, "invalid": 0, "error": 0}
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
                        lambda stored, m=m: m.with_meta(map_version=max(m.map_version, stored + 1)), result.field, dst
                    )
                counts[result.status] += 1
        return counts

    def rollback(self, model: str, model_version: str, segment_key: str, steps: int = 1) -> PublishResult:
        """Republish the map of `steps` publishes ago (history entry `steps`) as version live + 1.

        The rollback is itself a publish, so it enters the history: a second `rollback(steps=1)` undoes
        the first. Raises LookupError when the history does not reach back that far.
        """
        if steps < 1:
            raise ValueError("steps must be >= 1")
        field = str(MapField(model, model_version, segment_key))

        def restored(stored: int) -> CalibrationMap:
            raw = self.redis.lindex(self.keys.history(field), steps)
            if raw is None:
                raise LookupError(f"no history entry {steps} publishes back for {field}")
            return CalibrationMap.from_json(raw).with_meta(map_version=stored + 1)

        return self._publish_bumped(restored, field, self.keys)

    def _publish_bumped(self, build: Callable[[int], CalibrationMap], field: str, keys: RedisKeys) -> PublishResult:
        """Compare-and-set loop: build the map from the stored version, publish it fenced, retry if beaten."""
        for _ in range(_CAS_ATTEMPTS):
            stored = self.redis.hget(keys.index, field)
            try:
                version = -1 if stored is None else int(stored)
            except ValueError:
                return PublishResult(field, "error", -1, f"non-numeric index field {stored!r}")
            result = self._publish(build(version), keys, self.redis)
            if result.published:
                return result
        return result


def _result(field: str, reply: list | Exception) -> PublishResult:
    if isinstance(reply, Exception):
        log.error("cannot publish %r: %s; skipped, the other maps go on", field, reply)
        return PublishResult(field, "error", -1, str(reply))
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
        self.pending_versions: dict[str, dict[str, dict]] = {}  # model -> model_version -> info
        self.failures = 0
        self.published = 0
        self.refused = 0
        self.errors = 0  # maps Redis refused (a key of the wrong type, a foreign index value)
        self.last_error = ""
        self._retry_at = 0.0

    def submit(self, maps: Iterable[CalibrationMap]) -> None:
        for m in maps:
            field = map_field(m)
            if (cur := self.pending.get(field)) is None or m.map_version >= cur.map_version:
                self.pending[field] = m

    def submit_versions(self, versions: dict[str, dict[str, dict]]) -> None:
        for model, infos in versions.items():
            self.pending_versions.setdefault(model, {}).update(infos)

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
        if not self.pending and not self.pending_versions:
            return []
        if self.clock() < self._retry_at and not self._answers():
            return []
        try:
            results = self.publisher.publish_many(self.pending.values())
            while self.pending_versions:
                model, infos = next(iter(self.pending_versions.items()))
                try:
                    self.publisher.publish_versions(model, infos)
                except redis.ResponseError as exc:  # that model's hash has the wrong type: skip it alone
                    log.error("cannot write the versions of model %r: %s", model, exc)
                del self.pending_versions[model]
        except redis.RedisError as exc:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._retry_at = self.clock() + self.backoff.next_delay()
            return []
        self.backoff.reset()
        self.pending.clear()  # refused maps are final: a newer version is already live
        self.published += sum(r.status == "published" for r in results)
        self.refused += sum(r.status == "refused_stale" for r in results)
        self.errors += sum(r.status == "error" for r in results)
        return results
