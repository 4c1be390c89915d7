"""The map reader's cache and the daemon thread that keeps it fresh from Redis (`MapReader` serves from it).

The thread subscribes to the `{prefix}:maps:updated` channel, then checks the `{prefix}:maps` index every
`check_interval` s; it validates every map before the swap, and keeps the last good maps while Redis is down.
State is copy-on-write: the thread builds a new dict and swaps the reference, so readers never lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Set

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from recalibrators.calibration_map import CalibrationMap
from recalibrators.serving.backoff import Backoff
from recalibrators.serving.keys import MapField, RedisKeys, map_field
from recalibrators.serving.store import mget_chunked

__all__ = ["MapSync"]

log = logging.getLogger(__name__)

_MAX_DRAIN = 1000  # notifications folded into one load + one cache swap


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


class MapSync:
    """The maps published under `keys`, kept fresh by a daemon thread; `on_install` runs after each swap.

    Without a Redis to reach, nothing loads, and the thread keeps retrying with backoff:

    >>> sync = MapSync("redis://127.0.0.1:1/0", RedisKeys("doc"), on_install=lambda: None, socket_timeout=0.1)
    >>> sync.start(timeout=0.3), sync.maps, sync.connected
    (False, {}, False)
    >>> sync.close()
    """

    def __init__(
        self,
        redis_url: str,
        keys: RedisKeys,
        on_install: Callable[[], None],
        *,
        check_interval: float = 5.0,
        socket_timeout: float = 2.0,
        max_backoff: float = 5.0,
    ) -> None:
        self._url = redis_url
        self._keys = keys
        self._on_install = on_install
        self._check_interval = check_interval
        self._socket_timeout = socket_timeout
        self._max_backoff = max_backoff
        self.maps: dict[str, CalibrationMap] = {}
        self._rejected_versions: dict[str, int] = {}  # field -> index version we refused; not refetched
        self.synced_at = 0.0  # time.time() of the last full check against the index; 0 before the first
        self.connected = False
        self.unindexed = 0  # cached maps the index lacks, e.g. Redis restarted empty
        self.last_error = ""
        self.rejected = 0
        self.reloads = 0
        self.errors = 0
        self._stop = threading.Event()
        self.synced = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recal-map-reader", daemon=True)

    def start(self, timeout: float = 5.0) -> bool:
        """Start the sync thread; wait up to `timeout` s for the first full load. Never raises on Redis."""
        self._thread.start()
        return self.synced.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * self._socket_timeout + 1)

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
                self.connected = False
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, redis.RedisError | OSError):
                    log.warning(
                        "map reader: redis unavailable (%s); serving %d cached maps",
                        self.last_error,
                        len(self.maps),
                    )
                else:
                    log.exception("map reader: unexpected error; serving %d cached maps", len(self.maps))
            finally:
                if client is not None:
                    client.close()
            self._stop.wait(backoff.next_delay())

    def _session(self, client: redis.Redis, backoff: Backoff) -> None:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self._keys.channel)  # before the full sync, so no update falls in between
            index = self._sync(client, previous=None)
            self.connected = True
            self.last_error = ""
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
                    cur = self.maps.get(field)
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
        maps = self.maps
        stale = {
            f: v
            for f, v in index.items()
            if v is not None  # a foreign, non-numeric index value: keep what we serve for that key
            and ((cur := maps.get(f)) is None or cur.map_version != v)
            and self._rejected_versions.get(f) != v
        }
        deleted = [f for f in previous or () if f not in index]
        self._load(client, stale, authoritative=True, deleted=deleted)
        self.unindexed = sum(f not in index for f in self.maps)
        self.synced_at = time.time()
        self.synced.set()
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
            cur = self.maps.get(field)
            if cur is None or m.map_version > cur.map_version or (authoritative and m.map_version == fields[field]):
                updates[field] = m
        deleted = [f for f in deleted if f in self.maps]
        if updates or deleted:
            new = dict(self.maps)
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
        # Order matters: MapReader._entry reads its resolution cache, then these maps; so the maps are swapped
        # first and the cache cleared after, and lookups racing this swap write into the discarded cache.
        self.maps = maps
        self._on_install()
