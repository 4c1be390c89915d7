"""Immutable, validated, JSON-serialisable piecewise-linear calibration map (map JSON schema 2).

The map is y = interp(score; x, y), clamped outside [x[0], x[-1]]. Maps built by `Calibrator` always carry end
knots at x=0 and x=1, so the clamping never triggers for valid scores; hand-made maps may omit them.

>>> m = CalibrationMap(x=[0.0, 0.5, 1.0], y=[0.0, 0.2, 1.0], method="isotonic", n=100.0, positives=5.0,
...                    last_event_ms=0, model="ctr", model_version="v2", map_version=7)
>>> m.apply_one(0.25), m.apply([0.25, 0.5]).tolist()
(0.1, [0.1, 0.2])
>>> back = CalibrationMap.from_json(m.to_json())
>>> back == m, back.map_version, back.model_version
(True, 7, 'v2')
>>> CalibrationMap.from_json(b'{"schema": 2, "model": "ctr", "model_version": "v2", "segment": {},'
...                          b' "version": 1, "x": [0, 1], "y": [0, 1], "from_the_future": 1}').method
''
"""

from __future__ import annotations

import dataclasses
import math
from bisect import bisect_right
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import map_json
from .map_json import _BAND, SCHEMA_VERSION, _is_int, _is_number

__all__ = ["MAX_KNOTS", "SCHEMA_VERSION", "CalibrationMap", "identity_map"]

MAX_KNOTS = 4096  # sanity bound: calibrator maps have n_bins + 2 knots
_GRID = 1024  # cells of the sqrt(score) lookup grid used by `apply` on large batches
_MAX_WALK = 3  # grid cells holding more knots than this fall back to np.interp


def _meta_items(name: str, value: object) -> tuple | None:
    """A metadata object (metrics, prior) as sorted (key, value) pairs of finite numbers or strings."""
    if value is None:
        return None
    items = tuple(sorted(value.items() if isinstance(value, Mapping) else value))
    for k, v in items:
        if not isinstance(k, str) or not (isinstance(v, str) or (_is_number(v) and math.isfinite(v))):
            raise ValueError(f"{name} must map strings to finite numbers or strings, got {k!r}: {v!r}")
    return items


def _knots(name: str, values: object) -> np.ndarray:
    try:
        arr = np.array(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a sequence of numbers: {exc}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    arr.flags.writeable = False
    return arr


def _band(name: str, values: object, y: np.ndarray) -> np.ndarray:
    """An optional per-knot array: y_lo <= y <= y_hi within [0, 1], ess >= 0."""
    arr = _knots(name, values)
    if arr.shape != y.shape:
        raise ValueError(f"{name} must have one value per knot ({y.size}), got {arr.size}")
    if name == "ess":
        ok = bool(np.all(arr >= 0))
    else:
        ok = bool(np.all((arr >= 0) & (arr <= 1))) and bool(np.all(arr <= y) if name == "y_lo" else np.all(arr >= y))
    if not ok:
        raise ValueError(f"{name} out of range (need y_lo <= y <= y_hi within [0, 1] and ess >= 0)")
    return arr


def _segment_pairs(segment: Mapping[str, str] | tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    items = segment.items() if isinstance(segment, Mapping) else segment
    pairs = tuple(sorted((k, v) for k, v in items))
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in pairs):
        raise ValueError("segment keys and values must be strings")
    return pairs


@dataclasses.dataclass(frozen=True, eq=False)
class CalibrationMap:
    """Monotone map from raw score to calibrated probability plus provenance metadata.

    `segment` accepts a dict and is stored as a sorted tuple of (key, value) pairs; `metrics` and `prior`
    (a warm start's provenance: the source's model_version and map_version) likewise. All stay immutable;
    use `segment_dict` / `metrics_dict` / `prior_dict` to read. `map_version` is the publish fence (JSON
    key ``version``); `model_version` the version of the model whose scores the map calibrates.
    """

    x: np.ndarray
    y: np.ndarray
    method: str
    n: float
    positives: float
    last_event_ms: int
    model: str = ""
    model_version: str = ""
    segment: Any = ()
    map_version: int = 0
    updated_at: int = 0
    platt: tuple[float, float] | None = None
    metrics: Any = None
    prior: Any = None
    y_lo: Any = None
    y_hi: Any = None
    ess: Any = None
    _xs: memoryview = dataclasses.field(init=False, repr=False)
    _ys: memoryview = dataclasses.field(init=False, repr=False)
    _grid: tuple | None = dataclasses.field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        x, y = _knots("x", self.x), _knots("y", self.y)
        if x.shape != y.shape:
            raise ValueError(f"x and y lengths differ: {x.size} vs {y.size}")
        if not 2 <= x.size <= MAX_KNOTS:
            raise ValueError(f"need 2..{MAX_KNOTS} knots, got {x.size}")
        if x[0] < 0.0 or x[-1] > 1.0:
            raise ValueError("x must lie in [0, 1]")
        if not np.all(np.diff(x) > 0):
            raise ValueError("x must be strictly increasing")
        if y[0] < 0.0 or y[-1] > 1.0:
            raise ValueError("y must lie in [0, 1]")
        if not np.all(np.diff(y) >= 0):
            raise ValueError("y must be non-decreasing (map is not monotone)")
        if not isinstance(self.method, str) or not isinstance(self.model, str):
            raise ValueError("method and model must be strings")
        if not isinstance(self.model_version, str):
            raise ValueError("model_version must be a string")
        for name in ("n", "positives"):
            v = getattr(self, name)
            if not _is_number(v) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite non-negative number, got {v!r}")
        for name in ("last_event_ms", "map_version", "updated_at"):
            if not _is_int(getattr(self, name)):
                raise ValueError(f"{name} must be an integer, got {getattr(self, name)!r}")
        if self.map_version < 0:
            raise ValueError(f"map_version must be >= 0, got {self.map_version}")
        platt = self.platt
        if platt is not None:
            if len(platt) != 2 or not all(_is_number(v) and math.isfinite(v) for v in platt):
                raise ValueError(f"platt must be a pair of finite numbers, got {platt!r}")
            platt = (float(platt[0]), float(platt[1]))
        metrics, prior = _meta_items("metrics", self.metrics), _meta_items("prior", self.prior)
        set_ = object.__setattr__
        for name in _BAND:
            if getattr(self, name) is not None:
                set_(self, name, _band(name, getattr(self, name), y))
        set_(self, "x", x)
        set_(self, "y", y)
        set_(self, "n", float(self.n))
        set_(self, "positives", float(self.positives))
        set_(self, "segment", _segment_pairs(self.segment))
        set_(self, "platt", platt)
        set_(self, "metrics", metrics)
        set_(self, "prior", prior)
        # Zero-copy sequence views: bisect on them costs ~0.2 us and no per-map Python float lists.
        set_(self, "_xs", memoryview(x))
        set_(self, "_ys", memoryview(y))

    def __getstate__(self) -> dict[str, Any]:  # pickle (the map builder process): the fields, not views of them
        return {k: v for k, v in self.__dict__.items() if k not in ("_xs", "_ys")}

    def __setstate__(self, state: dict[str, Any]) -> None:  # validated when made; the views made again
        self.__dict__.update(state, _xs=memoryview(state["x"]), _ys=memoryview(state["y"]))

    @property
    def segment_dict(self) -> dict[str, str]:
        return dict(self.segment)

    @property
    def metrics_dict(self) -> dict[str, float | str] | None:
        return None if self.metrics is None else dict(self.metrics)

    @property
    def prior_dict(self) -> dict[str, float | str] | None:
        return None if self.prior is None else dict(self.prior)

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """Vectorised map, bit-identical to np.interp(scores, x, y) (clamped outside the knot range).

        np.interp binary-searches every score (~30 ns each); for large batches a lookup grid uniform in
        sqrt(score) (fine where CTR knots are dense) gives each score's knot interval in a few gathers (~3x
        faster). The grid is built lazily on the first large batch and cached (a pure cache: maps stay equal).
        """
        s = np.asarray(scores, dtype=np.float64)
        if s.size < 256 or s.ndim != 1:
            return np.interp(s, self.x, self.y)
        if self._grid is None:
            object.__setattr__(self, "_grid", self._build_grid())
        table, x_next, slope, walk = self._grid
        if walk > _MAX_WALK:
            return np.interp(s, self.x, self.y)
        x, y = self.x, self.y
        s = np.clip(s, x[0], x[-1])
        cell = np.sqrt(s)
        cell *= _GRID
        with np.errstate(invalid="ignore"):  # NaN scores: any cell will do, the result stays NaN
            idx = cell.astype(np.intp)
        np.clip(idx, 0, _GRID - 1, out=idx)
        i = table[idx]
        for _ in range(walk):
            i += x_next[i] <= s
        out = s - x[i]
        out *= slope[i]
        out += y[i]
        return out

    def _build_grid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        x, y = self.x, self.y
        bounds = (np.arange(_GRID + 1) / _GRID) ** 2
        # table[c] = last knot <= start of cell c; a score in the cell is at most `walk` knots further.
        table = np.maximum(np.searchsorted(x, bounds[:-1], side="right") - 1, 0)
        walk = int(np.max(np.searchsorted(x, bounds[1:], side="left") - 1 - table, initial=0))
        slope = np.append(np.diff(y) / np.diff(x), 0.0)  # last knot: flat, so s == x[-1] gives y[-1]
        return table, np.append(x[1:], np.inf), slope, max(walk, 0)

    def apply_one(self, score: float) -> float:
        """Scalar fast path, same formula as np.interp."""
        xs, ys = self._xs, self._ys
        i = bisect_right(xs, score)
        if i == 0:
            return ys[0]
        if i == len(xs):
            return ys[-1]
        x0, y0 = xs[i - 1], ys[i - 1]
        return (ys[i] - y0) / (xs[i] - x0) * (score - x0) + y0

    def with_meta(self, **changes: Any) -> CalibrationMap:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> bytes:
        return map_json.encode(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> CalibrationMap:
        """Parse and validate a schema-2 map; ValueError for anything a reader must not apply."""
        return cls(**map_json.decode(data))

    def _key(self) -> tuple:
        return (
            self.method,
            self.n,
            self.positives,
            self.last_event_ms,
            self.model,
            self.model_version,
            self.segment,
            self.map_version,
            self.updated_at,
            self.platt,
            self.metrics,
            self.prior,
        )

    def _band_key(self) -> tuple:
        return tuple(None if getattr(self, n) is None else getattr(self, n).tobytes() for n in _BAND)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CalibrationMap):
            return NotImplemented
        same_knots = np.array_equal(self.x, other.x) and np.array_equal(self.y, other.y)
        return same_knots and self._key() == other._key() and self._band_key() == other._band_key()

    def __hash__(self) -> int:
        return hash((self._key(), self.x.tobytes(), self.y.tobytes(), self._band_key()))


def identity_map(**meta: Any) -> CalibrationMap:
    """y = score; what a calibrator publishes with no data and no prior."""
    base: dict[str, Any] = {"method": "identity", "n": 0.0, "positives": 0.0, "last_event_ms": 0}
    return CalibrationMap(x=(0.0, 1.0), y=(0.0, 1.0), **(base | meta))
