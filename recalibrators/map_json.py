"""A calibration map as a schema-2 JSON document and back (docs/map.schema.json; `CalibrationMap.to_json` and
`from_json` delegate here, and the map itself checks the values)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from .calibration_map import CalibrationMap

__all__ = ["SCHEMA_VERSION", "decode", "encode"]

SCHEMA_VERSION = 2

# What a reader needs to apply a map; everything else is optional and unknown fields are ignored, so a
# newer publisher never makes an older reader drop its maps.
_REQUIRED = {"schema": int, "model": str, "model_version": str, "segment": dict, "version": int, "x": list, "y": list}
_OPTIONAL = {
    "updated_at": int,
    "method": str,
    "n": float,
    "positives": float,
    "last_event_ms": int,
    "platt": dict,
    "metrics": dict,
    "prior": dict,
    "y_lo": list,
    "y_hi": list,
    "ess": list,
}
_BAND = ("y_lo", "y_hi", "ess")  # optional per-knot confidence (recalibrators.hierarchy); readers may ignore


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_numbers(name: str, values: list) -> None:
    """JSON booleans and strings are never numbers (numpy would silently convert both)."""
    if not all(_is_number(v) for v in values):
        raise ValueError(f"{name} must be an array of numbers")


def _provenance(prior: dict | None) -> dict | None:
    """`prior` is provenance only (the contract fixes no type beyond an object): its entries that are
    not strings or finite numbers are dropped, never a reason to reject a map that applies fine."""
    if prior is None:
        return None
    return {k: v for k, v in prior.items() if isinstance(v, str) or (_is_number(v) and math.isfinite(v))}


def encode(m: CalibrationMap) -> bytes:
    """The map's JSON document (`CalibrationMap.to_json`).

    >>> from recalibrators.calibration_map import identity_map
    >>> encode(identity_map(model="ctr", model_version="v2", map_version=3))[:80]
    b'{"schema":2,"model":"ctr","model_version":"v2","segment":{},"version":3,"updated'
    """
    doc: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "model": m.model,
        "model_version": m.model_version,
        "segment": dict(m.segment),
        "version": m.map_version,
        "updated_at": m.updated_at,
        "method": m.method,
        "n": m.n,
        "positives": m.positives,
        "last_event_ms": m.last_event_ms,
        "x": m.x,
        "y": m.y,
    }
    if m.platt is not None:
        doc["platt"] = {"a": m.platt[0], "b": m.platt[1]}
    if m.metrics is not None:
        doc["metrics"] = dict(m.metrics)
    if m.prior is not None:
        doc["prior"] = dict(m.prior)
    for name in _BAND:
        if getattr(m, name) is not None:
            doc[name] = getattr(m, name)
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def decode(data: bytes | str) -> dict[str, Any]:
    """A schema-2 document's `CalibrationMap` keyword arguments, its fields type-checked; ValueError for
    anything a reader must not apply. Unknown fields are ignored; the map's constructor checks the values.

    >>> decode(b'{"schema": 2, "model": "ctr", "model_version": "v2", "segment": {"placement": "feed"},'
    ...        b' "version": 1, "x": [0, 1], "y": [0, 1], "from_the_future": 1}')["segment"]
    {'placement': 'feed'}
    >>> decode(b'{"schema": 2, "model": "ctr", "x": [0, true]}')
    Traceback (most recent call last):
    ...
    ValueError: calibration map JSON is missing fields: ['model_version', 'segment', 'version', 'y']
    """
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"calibration map is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("calibration map JSON must be an object")
    if not _is_int(doc.get("schema")) or doc["schema"] != SCHEMA_VERSION:
        raise ValueError(f"unsupported schema {doc.get('schema')!r} (expected {SCHEMA_VERSION})")
    missing = sorted(set(_REQUIRED) - set(doc))
    if missing:
        raise ValueError(f"calibration map JSON is missing fields: {missing}")
    for key, typ in (_REQUIRED | _OPTIONAL).items():
        if key not in doc:
            continue
        v = doc[key]
        ok = _is_number(v) if typ is float else (_is_int(v) if typ is int else isinstance(v, typ))
        if not ok:
            raise ValueError(f"field {key!r} must be {typ.__name__}, got {type(v).__name__}")
    for name in ("x", "y", *_BAND):
        if name in doc:
            _check_numbers(name, doc[name])
    platt = doc.get("platt")
    if platt is not None:
        if not ("a" in platt and "b" in platt):
            raise ValueError("platt must be an object with keys 'a' and 'b'")
        platt = (platt["a"], platt["b"])
    return dict(
        x=doc["x"],
        y=doc["y"],
        method=doc.get("method", ""),
        n=doc.get("n", 0.0),
        positives=doc.get("positives", 0.0),
        last_event_ms=doc.get("last_event_ms", 0),
        model=doc["model"],
        model_version=doc["model_version"],
        segment=doc["segment"],
        map_version=doc["version"],
        updated_at=doc.get("updated_at", 0),
        platt=platt,
        metrics=doc.get("metrics"),
        prior=_provenance(doc.get("prior")),
        **{name: doc[name] for name in _BAND if name in doc},
    )
