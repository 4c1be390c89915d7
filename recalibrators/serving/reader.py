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
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple, Self

import numpy as np

from recalibrators.calibration_map import CalibrationMap
from recalibrators.serving.keys import RedisKeys, lookup_chain
from recalibrators.serving.sync import MapSync

__all__ = ["Age", "MapReader"]

log = logging.getLogger(__name__)

_UNRESOLVED = object()


class Age(NamedTuple):
    map_s: float  # seconds since the map's updated_at (epoch ms): how old the calibration is
    sync_s: float  # seconds since the reader last confirmed its cache against the index


class _Entry(NamedTuple):
    field: str
    map: CalibrationMap
    fallback: bool  # the configured fallback version's map, not the requested version's


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
        self._segment_by = {model: [list(dims) for dims in levels] for model, levels in (segment_by or {}).items()}
        self._fallback_version = dict(fallback_version or {})
        self._resolve_cache_size = resolve_cache_size
        # Copy-on-write: the sync thread swaps in new maps, then clears this cache; readers never lock.
        self._resolved: dict[tuple, _Entry | None] = {}
        self._sync = MapSync(
            redis_url,
            RedisKeys(prefix),
            self._clear_resolved,
            check_interval=check_interval,
            socket_timeout=socket_timeout,
            max_backoff=max_backoff,
        )
        # Plain ints: `+=` from request threads may lose a rare increment; fine for counters.
        self.misses = 0  # scores returned raw: no map of their version (nor of the fallback version)
        self.fallbacks = 0  # scores calibrated with the configured fallback version's map
        if start:
            self.start(start_timeout)

    @property
    def rejected(self) -> int:
        """Maps refused by validation (each version once)."""
        return self._sync.rejected

    @property
    def reloads(self) -> int:
        """Maps loaded into the cache."""
        return self._sync.reloads

    @property
    def errors(self) -> int:
        """Sync sessions that ended in an error (Redis down, mostly)."""
        return self._sync.errors

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
        resolved = self._resolved  # read before the maps: see MapSync._install
        key = (model, model_version, *segment.items())  # insertion order matters only for cache hits
        entry = resolved.get(key, _UNRESOLVED)
        if entry is _UNRESOLVED:
            entry = self._resolve(resolved, key, model, model_version, segment)
        return entry  # type: ignore[return-value]

    def _resolve(
        self, resolved: dict, key: tuple, model: str, model_version: str, segment: Mapping[str, str]
    ) -> _Entry | None:
        maps = self._sync.maps
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
        now, sync = time.time(), self._sync
        sync_s = now - sync.synced_at if sync.synced_at else float("inf")
        return {field: Age(now - m.updated_at / 1000, sync_s) for field, m in sync.maps.items()}

    def status(self) -> dict[str, object]:
        sync = self._sync
        return {
            "connected": sync.connected,
            "synced": sync.synced.is_set(),
            "last_error": sync.last_error,
            "unindexed": sync.unindexed,  # cached maps the index lacks, e.g. Redis restarted empty
            "maps": len(sync.maps),
            "misses": self.misses,
            "fallbacks": self.fallbacks,
            "rejected": self.rejected,
            "reloads": self.reloads,
            "errors": self.errors,
            "sync_age_s": time.time() - sync.synced_at if sync.synced_at else None,
        }

    # ---- lifecycle ----------------------------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> bool:
        """Start the sync thread; wait up to `timeout` s for the first full load. Never raises on Redis."""
        return self._sync.start(timeout)

    def wait_synced(self, timeout: float) -> bool:
        return self._sync.synced.wait(timeout)

    def close(self) -> None:
        self._sync.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _clear_resolved(self) -> None:
        self._resolved = {}
