"""The ranker's client: calibrated scores from an in-process cache of the maps published in Redis.

The request path (`calibrate`, `calibrate_one`, `lookup`) only reads Python dicts: no locks, no I/O, no
exceptions. A daemon thread keeps the cache fresh from the `{prefix}:maps:updated` channel plus a periodic
check of the `{prefix}:maps` index, and keeps the last good maps serving while Redis is down.
See docs/serving.md for the Redis contract (schema 2: maps keyed by model version).

A score is calibrated with a map of the model version that produced it: the segment fallback chain
within that version. A version with no map yet gets the raw score (`misses`), or, for a model listed in
`fallback_version`, that named version's map (`fallbacks`); never silently another version's map.

>>> import socket
>>> try:
...     socket.create_connection(("127.0.0.1", 6379), timeout=0.2).close()
... except OSError:
...     import pytest; pytest.skip("no Redis on 127.0.0.1:6379")
>>> with MapReader("redis://127.0.0.1:6379/0", prefix="recal-doctest", segment_by={"ctr": [["placement"]]}) as r:
...     r.calibrate_one("ctr", {"placement": "feed"}, 0.02, model_version="v2")  # no map: the raw score
0.02
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence, Set
from typing import NamedTuple, Self

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from recalibrators.calibration_map import CalibrationMap
from recalibrators.serving.backoff import Backoff
from recalibrators.serving.keys import MapField, RedisKeys, lookup_chain, map_field
from recalibrators.serving.store import mget_chunked

__all__ = ["Age", "MapReader"]

log = logging.getLogger(__name__)

_MAX_DRAIN = 1000  # notifications folded into one load + one cache swap
_UNRESOLVED = object()


class Age(NamedTuple):
    map_s: float  # seconds since the map's updated_at (epoch ms): how old the calibration is
    sync_s: float  # seconds since the reader last confirmed its cache against the index


class _Entry(NamedTuple):
    field: str
    map: CalibrationMap
    fallback: bool  # the configured fallback version's map, not the requested version's


def _map_version(raw: bytes) -> int | None:
    try:
        return int(raw)
    except ValueError:
        return None


def _is_field(field: str) -> bool:
    """Schema-2 fields only: a schema-1 key of an older publisher is none of this reader's business."""
    try:
        MapField.parse(field)
    except ValueError:
        return False
    return True


class MapReader:
    """Serves `calibrate*` from cache; `segment_by` maps a model to its coarser fallback levels;
    `fallback_version` maps a model to the version whose maps serve versions that have none (default:
    none, the raw score)."""

    def __init__(
        self,
        redis_url: str,
        prefix: str = "recal",
        segment_by: Mapping[str, Sequence[Sequence[str]]] | None = None,
        check_interval: float = 5.0,
        start: bool = True,
        *,
        fallback_version: Mapping[str, str] | None = None,
        start_timeout: float = 5.0,
        socket_timeout: float = 2.0,
        max_backoff: float = 5.0,
        resolve_cache_size: int = 100_000,
    ) -> None:
        self._url = redis_url
        self._keys = RedisKeys(prefix)
        self._segment_by = {model: [list(dims) for dims in levels] for model, levels in (segment_by or {}).items()}
        self._fallback_version = dict(fallback_version or {})
        self._check_interval = check_interval
        self._socket_timeout = socket_timeout
        self._max_backoff = max_backoff
        self._resolve_cache_size = resolve_cache_size
        # Copy-on-write state: the sync thread builds new dicts and swaps the references; readers never lock.
        self._maps: dict[str, CalibrationMap] = {}
        self._resolved: dict[tuple, _Entry | None] = {}
        self._rejected_versions: dict[str, int] = {}  # field -> index version we refused; not refetched
        self._synced_at = 0.0
        self._connected = False
        self._unindexed = 0
        self._last_error = ""
        # Plain ints: `+=` from request threads may lose a rare increment; fine for counters.
        self.misses = 0  # scores returned raw: no map of their version (nor of the fallback version)
        self.fallbacks = 0  # scores calibrated with the configured fallback version's map
        self.rejected = 0
        self.reloads = 0
        self.errors = 0
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recal-map-reader", daemon=True)
        if start:
            self.start(start_timeout)

    # ---- request path -------------------------------------------------------------------------------

    def lookup(self, model: str, segment: Mapping[str, str], model_version: str) -> CalibrationMap | None:
        """The map that serves (model, model_version, segment), or None (the raw score is served)."""
        entry = self._entry(model, model_version, segment)
        return None if entry is None else entry.map

    def calibrate_one(self, model: str, segment: Mapping[str, str], score: float, *, model_version: str) -> float:
        entry = self._entry(model, model_version, segment)
        if entry is None:
            self.misses += 1
            return score
        if entry.fallback:
            self.fallbacks += 1
        if score != score:  # NaN stays NaN, as in the batch path (a bisect would map it to y[-1])
            return score
        return entry.map.apply_one(score)

    def calibrate(
        self, model: str, segment: Mapping[str, str], scores: np.ndarray, *, model_version: str
    ) -> np.ndarray:
        """Calibrated scores; the raw `scores` themselves when no map applies."""
        entry = self._entry(model, model_version, segment)
        if entry is None:
            self.misses += 1
            return scores
        if entry.fallback:
            self.fallbacks += 1
        return entry.map.apply(scores)

    def _entry(self, model: str, model_version: str, segment: Mapping[str, str]) -> _Entry | None:
        resolved = self._resolved  # read before _maps: see _install
        key = (model, model_version, *segment.items())  # insertion order matters only for cache hits
        entry = resolved.get(key, _UNRESOLVED)
        if entry is _UNRESOLVED:
            entry = self._resolve(resolved, key, model, model_version, segment)
        return entry  # type: ignore[return-value]

    def _resolve(
        self, resolved: dict, key: tuple, model: str, model_version: str, segment: Mapping[str, str]
    ) -> _Entry | None:
        maps = self._maps
        versions = [model_version]
        if (fallback := self._fallback_version.get(model)) is not None and fallback != model_version:
            versions.append(fallback)
        entry = None
        try:
            segment = {str(k): str(v) for k, v in segment.items()}
            for serving in versions:
                for field in lookup_chain(model, serving, segment, self._segment_by.get(model, ())):
                    if (m := maps.get(field)) is not None:
                        entry = _Entry(field, m, serving != model_version)
                        break
                if entry is not None:
                    break
        except Exception:  # a malformed model, version or segment must not fail the request: it is a miss
            log.exception("cannot resolve segment %r of model %r version %r", segment, model, model_version)
            return None
        if len(resolved) >= self._resolve_cache_size:
            resolved.clear()  # bounded memory under high-cardinality segments; hot keys re-resolve
        resolved[key] = entry
        return entry

    # ---- observability ------------------------------------------------------------------------------

    def ages(self) -> dict[str, Age]:
        """Per map field: age of the map's data and of the last successful sync."""
        now = time.time()
        sync_s = now - self._synced_at if self._synced_at else float("inf")
        return {field: Age(now - m.updated_at / 1000, sync_s) for field, m in self._maps.items()}

    def status(self) -> dict[str, object]:
        return {
            "connected": self._connected,
            "synced": self._synced.is_set(),
            "last_error": self._last_error,
            "unindexed": self._unindexed,  # cached maps the index lacks, e.g. Redis restarted empty
            "maps": len(self._maps),
            "misses": self.misses,
            "fallbacks": self.fallbacks,
            "rejected": self.rejected,
            "reloads": self.reloads,
            "errors": self.errors,
            "sync_age_s": time.time() - self._synced_at if self._synced_at else None,
        }

    # ---- lifecycle ----------------------------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> bool:
        """Start the sync thread; wait up to `timeout` s for the first full load. Never raises on Redis."""
        self._thread.start()
        return self._synced.wait(timeout)

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * self._socket_timeout + 1)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- sync thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff(cap=self._max_backoff)
        while not self._stop.is_set():
            client: redis.Redis | None = None
            try:
                client = redis.Redis.from_url(
                    self._url,
                    socket_timeout=self._socket_timeout,
                    socket_connect_timeout=self._socket_timeout,
                    # Idle pub/sub sockets get pinged, so a silently dead connection is noticed.
                    health_check_interval=max(1, int(self._check_interval)),
                    # One immediate retry (a pooled socket broken by a server restart); beyond that our
                    # backoff loop reconnects, instead of redis-py's default of 10 retries (~5 s blocked).
                    retry=Retry(NoBackoff(), 1),
                )
                self._session(client, backoff)
            except Exception as exc:  # the thread must survive anything; Redis errors are the usual case
                self._connected = False
                self.errors += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, redis.RedisError | OSError):
                    log.warning(
                        "map reader: redis unavailable (%s); serving %d cached maps",
                        self._last_error,
                        len(self._maps),
                    )
                else:
                    log.exception("map reader: unexpected error; serving %d cached maps", len(self._maps))
            finally:
                if client is not None:
                    client.close()
            self._stop.wait(backoff.next_delay())

    def _session(self, client: redis.Redis, backoff: Backoff) -> None:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self._keys.channel)  # before the full sync, so no update falls in between
            index = self._sync(client, previous=None)
            self._connected = True
            self._last_error = ""
            backoff.reset()
            next_check = time.monotonic() + self._check_interval
            while not self._stop.is_set():
                wait = min(max(next_check - time.monotonic(), 0.0), 0.2)  # 0.2 s: close() stays prompt
                changed = self._drain(pubsub, wait)
                if changed:
                    self._load(client, changed, authoritative=False)
                if time.monotonic() >= next_check:
                    index = self._sync(client, previous=index)
                    next_check = time.monotonic() + self._check_interval
        finally:
            pubsub.close()

    def _drain(self, pubsub: redis.client.PubSub, wait: float) -> dict[str, int]:
        """Pending notifications as field -> announced version, skipping ones the cache already has."""
        changed: dict[str, int] = {}
        msg = pubsub.get_message(timeout=wait)
        while msg is not None:
            if msg.get("type") == "message":
                field, _, announced = msg["data"].decode(errors="replace").rpartition(":")
                try:
                    v = int(announced)
                except ValueError:
                    log.warning("map reader: ignoring malformed notification %r", msg["data"])
                else:
                    cur = self._maps.get(field)
                    if not _is_field(field):
                        pass  # a schema-1 publisher's notification
                    elif (cur is None or v > cur.map_version) and self._rejected_versions.get(field) != v:
                        changed[field] = max(v, changed.get(field, v))
            if len(changed) >= _MAX_DRAIN:
                break  # the rest stays queued for the next round
            msg = pubsub.get_message(timeout=0)
        return changed

    def _sync(self, client: redis.Redis, previous: Set[str] | None) -> Set[str]:
        """Compare the index with the cache: load what differs, drop what was deleted; the index fields.

        A deletion is a field seen leaving the index between two checks of one session. A cached map that
        is simply absent (the first check after a reconnect to a Redis that lost its data) keeps serving
        and is counted as `unindexed`: dropping every calibration at once would be the worse failure.
        """
        index = {
            field: _map_version(v)
            for f, v in client.hgetall(self._keys.index).items()
            if _is_field(field := f.decode(errors="replace"))
        }
        maps = self._maps
        stale = {
            f: v
            for f, v in index.items()
            if v is not None  # a foreign, non-numeric index value: keep what we serve for that key
            and ((cur := maps.get(f)) is None or cur.map_version != v)
            and self._rejected_versions.get(f) != v
        }
        deleted = [f for f in previous or () if f not in index]
        self._load(client, stale, authoritative=True, deleted=deleted)
        self._unindexed = sum(f not in index for f in self._maps)
        self._synced_at = time.time()
        self._synced.set()
        return index.keys()

    def _load(
        self, client: redis.Redis, fields: Mapping[str, int], authoritative: bool, deleted: Iterable[str] = ()
    ) -> None:
        """Fetch and validate `fields` (field -> expected version); swap in one new cache.

        Pub/sub updates only move a key forward. The index is authoritative: a lower version there (a
        namespace rebuilt from scratch) replaces the cached map too.
        """
        names = list(fields)
        updates: dict[str, CalibrationMap] = {}
        for field, raw in mget_chunked(client, self._keys, names):
            if raw is None:
                continue  # deleted after the index read; the next check drops it
            m = self._validate(field, raw, fields[field])
            if m is None:
                continue
            cur = self._maps.get(field)
            if cur is None or m.map_version > cur.map_version or (authoritative and m.map_version == fields[field]):
                updates[field] = m
        deleted = [f for f in deleted if f in self._maps]
        if updates or deleted:
            new = dict(self._maps)
            new.update(updates)
            for f in deleted:
                del new[f]
            self._install(new)
            self.reloads += len(updates)
            if deleted:
                log.info("map reader: %d maps deleted from the index", len(deleted))

    def _validate(self, field: str, raw: bytes, map_version: int) -> CalibrationMap | None:
        """The parsed map, or None (counted, logged once per version) for anything we must not apply."""
        try:
            m = CalibrationMap.from_json(raw)
            if map_field(m) != field:
                raise ValueError(f"value under {field!r} belongs to {map_field(m)!r}")
        except ValueError as exc:
            self.rejected += 1
            self._rejected_versions[field] = map_version
            log.error(
                "map reader: rejected map %r (index version %d): %s; keeping the previous one",
                field,
                map_version,
                exc,
            )
            return None
        self._rejected_versions.pop(field, None)
        return m

    def _install(self, maps: dict[str, CalibrationMap]) -> None:
        # Order matters: _entry reads _resolved then _maps, so every entry in the new resolution cache is
        # computed from the new maps; lookups racing this swap write into the discarded dict.
        self._maps = maps
        self._resolved = {}
