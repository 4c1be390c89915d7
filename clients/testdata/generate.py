"""Shared test vectors for the ranker clients, computed by the Python core (schema-2 map contract).

    python clients/testdata/generate.py          # rewrite clients/testdata/vectors.json
    python clients/testdata/generate.py --check  # exit 1 if the checked-in file is stale

Every double is written as its IEEE-754 bits (16 hex digits) beside its repr, so NaN, -0.0 and the last bit
survive JSON. Expected outputs are what `np.interp` (the formula `CalibrationMap.apply` promises) returns;
`scalar` / `batch` record where `CalibrationMap.apply_one` or the gridded `apply` return other bits.
"""

from __future__ import annotations

import math
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from recalibrators import calibration_map, segments
from recalibrators.calibration_map import CalibrationMap

OUT = Path(__file__).with_name("vectors.json")
SCHEMA = 2


def esc(text: str) -> str:
    """A key component: the segment escaping, applied to model names and versions too."""
    return segments.escape(text)


def field(model: str, model_version: str, segment: dict[str, str]) -> str:
    return f"{esc(model)}:{esc(model_version)}:{segments.segment_key(segment)}"


def bits(v: float) -> str:
    return struct.pack(">d", float(v)).hex()


def num(v: float) -> dict[str, str]:
    return {"bits": bits(v), "repr": repr(float(v))}


def published(model: str, model_version: str, segment: dict[str, str], x: Any, y: Any, version: int) -> bytes:
    """A map's JSON exactly as the Python core serialises it, in schema 2."""
    m = CalibrationMap(
        x=x,
        y=y,
        method="isotonic",
        n=1234.5,
        positives=56.0,
        last_event_ms=1_764_000_000_000,
        model=model,
        model_version=model_version,
        segment=segment,
        map_version=version,
        updated_at=1_764_000_000_000,
        platt=(1.0, -0.25),
        metrics={"ece": 0.0125, "gate": "passed"},
    )
    doc = orjson.loads(m.to_json())
    if calibration_map.SCHEMA_VERSION != SCHEMA:  # the core still writes schema 1: the contract's layout
        doc["schema"] = SCHEMA
    return orjson.dumps(doc)


def python_accepts(key: str, raw: bytes) -> bool:
    """Does the Python core accept `raw` stored under `key`? (The contract's reader-side validation.)"""
    if calibration_map.SCHEMA_VERSION == SCHEMA:
        from recalibrators.serving.keys import map_field

        try:
            m = CalibrationMap.from_json(raw)
            return map_field(m) == key
        except ValueError:
            return False
    return _contract_accepts(key, raw)


def _contract_accepts(key: str, raw: bytes) -> bool:
    """Until the schema-2 reader lands: the TEAM contract's required fields, then the core's knot checks."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False

    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def of(t: type) -> Any:
        return lambda v: isinstance(v, t)

    types = {"schema": is_int, "model": of(str), "model_version": of(str), "segment": of(dict), "version": is_int}
    if not isinstance(doc, dict) or not all(name in doc and ok(doc[name]) for name, ok in types.items()):
        return False
    seg = doc["segment"]
    if doc["schema"] != SCHEMA or doc["version"] < 0 or not doc["model"] or not doc["model_version"]:
        return False
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in seg.items()):
        return False
    for name in ("x", "y"):
        if not isinstance(doc.get(name), list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in doc[name]
        ):
            return False
    if not _optional_ok(doc):
        return False
    try:
        CalibrationMap(x=doc["x"], y=doc["y"], method="isotonic", n=0.0, positives=0.0, last_event_ms=0)
    except ValueError:
        return False
    return field(doc["model"], doc["model_version"], seg) == key


def _optional_ok(doc: dict[str, Any]) -> bool:
    """The contract's optional fields, when present: integers, strings, finite non-negative counts, a Platt
    pair of finite numbers, metadata objects of finite numbers or strings."""

    def finite(v: object) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    def meta(v: object) -> bool:
        return isinstance(v, dict) and all(isinstance(e, str) or finite(e) for e in v.values())

    checks = {
        "updated_at": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "last_event_ms": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "method": lambda v: isinstance(v, str),
        "n": lambda v: finite(v) and v >= 0,
        "positives": lambda v: finite(v) and v >= 0,
        "platt": lambda v: isinstance(v, dict) and "a" in v and "b" in v and finite(v["a"]) and finite(v["b"]),
        "metrics": meta,
        "prior": lambda v: isinstance(v, dict),  # provenance only: an object, entries of any type
    }
    return all(check(doc[name]) for name, check in checks.items() if name in doc)


# ---- escaping, segment keys, fallback chains -----------------------------------------------------------

TRICKY = ["plain", "a:b", "a|b", "a=b", "*", "%", "%3A", "100%", "a*b:c|d=e%f", "", "é", "日本", "😀", "\uffff", "\x00"]

SEGMENTS: list[dict[str, str]] = [
    {},
    {"platform": "ios"},
    {"platform": "ios", "placement": "search"},
    {"placement": "search", "platform": "ios", "country": "de"},
    {"k:ey": "v|al", "a=b": "c*d", "%": "%25"},
    {"é": "ü", "e": "z", "f": "日本"},
    {"😀": "1", "\uffff": "2", "\ue000": "3"},  # code-point order, not UTF-16 order
    {"x": "", "": "y"},
]


def chains() -> list[dict[str, Any]]:
    cases = [
        ({"platform": "ios", "placement": "search"}, [["platform", "placement"], ["placement"]]),
        ({"platform": "ios", "placement": "search", "country": "de"}, [["platform"], ["country", "placement"]]),
        ({"platform": "ios"}, [["platform", "placement"], ["placement"], ["platform"]]),
        ({"k:ey": "v|al", "a=b": "c*d", "%": "%25"}, [["%", "k:ey"], ["a=b"]]),
        ({"😀": "1", "\uffff": "2"}, [["\uffff"], ["😀"]]),
        ({}, [["platform"]]),
        ({"platform": "ios"}, []),
    ]
    return [
        {"segment": seg, "segment_by": by, "chain": segments.fallback_chain(seg, [list(seg), *by])} for seg, by in cases
    ]


# ---- maps and scores -------------------------------------------------------------------------------------


def _knots(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    u = rng.random(n - 2)
    x = np.unique(u * u * u)  # not u ** 3: numpy's SIMD power (AVX-512) differs in the last bit by CPU
    x = np.concatenate(([0.0], x[(x > 0) & (x < 1)], [1.0]))
    y = np.cumsum(rng.random(x.size) * (rng.random(x.size) > 0.2))
    return x, y / y[-1]


def _maps() -> list[tuple[str, str, str, dict[str, str], Any, Any]]:
    """(name, model, model_version, segment, x, y): a calibrator-sized map, hand-made ones, corner cases."""
    rng = np.random.default_rng(20261201)
    x98, y98 = _knots(rng, 98)
    x4096, y4096 = _knots(rng, 4096)
    return [
        ("calibrator-sized", "ctr", "v2", {"platform": "ios", "placement": "search"}, x98, y98),
        ("4096 knots", "ctr", "v2", {}, x4096, y4096),
        ("identity", "ctr", "v1", {}, [0.0, 1.0], [0.0, 1.0]),
        ("inner knots only (clamped)", "cvr", "2026-11-30", {"country": "de"}, [0.1, 0.5, 0.9], [0.05, 0.2, 0.7]),
        ("flat steps", "ctr:eu", "v|2", {"a=b": "c*d"}, [0.0, 0.2, 0.4, 0.6, 1.0], [0.1, 0.1, 0.3, 0.3, 0.3]),
        ("integers in JSON", "m%", "é", {}, [0, 1], [0, 1]),
        ("denormal spacing", "edge", "v1", {}, [0.0, 5e-324, 1e-310, 1.0], [0.0, 0.5, 0.75, 1.0]),
        ("near-equal knots", "edge", "v2", {}, [0.3, np.nextafter(0.3, 1), 0.7], [0.1, 0.9, 0.95]),
    ]


def _scores(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = x[:: max(1, x.size // 128)]  # a sample of a big map's knots keeps the file small
    mids = (x[:-1] + x[1:]) / 2
    special = [0.0, -0.0, 1.0, 0.5, 0.013, -0.5, 1.5, np.inf, -np.inf, np.nan, 5e-324, 1e-310, 1 - 2**-53]
    nexts = np.concatenate((np.nextafter(x, -1), np.nextafter(x, 2)))
    uniform, r = rng.random(64), rng.random(64)
    squared = r * r  # squared twice, not r ** 4: numpy's SIMD power (AVX-512) differs in the last bit by CPU
    return np.concatenate((special, x, mids, nexts, uniform, squared * squared))


def apply_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(7)
    out = []
    for name, model, model_version, seg, x, y in _maps():
        raw = published(model, model_version, seg, x, y, version=3)
        m = CalibrationMap.from_json(raw if calibration_map.SCHEMA_VERSION == SCHEMA else _as_schema1(raw))
        s = _scores(m.x, rng)
        expected = np.interp(s, m.x, m.y)
        with np.errstate(over="ignore", invalid="ignore"):  # the denormal map's slopes overflow
            batch = m.apply(np.tile(s, -(-256 // s.size)))[: s.size]  # >= 256 scores: the gridded path
        case: dict[str, Any] = {
            "name": name,
            "field": field(model, model_version, seg),
            "json": raw.decode(),
            "scores": [bits(v) for v in s],
            "expected": [bits(v) for v in expected],
        }
        first = {bits(v): i for i, v in reversed(list(enumerate(s)))}  # each distinct score once
        scalar = {i: s[i] for i in sorted(first.values()) if bits(_reader_one(m, s[i])) != bits(expected[i])}
        grid = {i: batch[i] for i in sorted(first.values()) if bits(batch[i]) != bits(expected[i])}
        if scalar or grid:
            case["python_disagreements"] = {
                "apply_one": [
                    {"score": num(s[i]), "np_interp": num(expected[i]), "apply_one": num(_reader_one(m, v))}
                    for i, v in scalar.items()
                ],
                "apply_batch": [
                    {"score": num(s[i]), "np_interp": num(expected[i]), "apply": num(b)} for i, b in grid.items()
                ],
            }
        out.append(case)
    return out


def _as_schema1(raw: bytes) -> bytes:
    return raw.replace(b'"schema":2', b'"schema":1', 1)


def _reader_one(m: CalibrationMap, score: float) -> float:
    """What `MapReader.calibrate_one` returns: NaN passes through, everything else goes to apply_one."""
    return score if score != score else m.apply_one(float(score))


# ---- documents the reader must reject or accept -----------------------------------------------------------

GOOD = published("ctr", "v2", {"platform": "ios"}, [0.0, 0.5, 1.0], [0.0, 0.4, 1.0], version=7)
GOOD_KEY = field("ctr", "v2", {"platform": "ios"})


def _edit(**changes: Any) -> bytes:
    doc = orjson.loads(GOOD)
    for k, v in changes.items():
        if v is _DROP:
            doc.pop(k)
        else:
            doc[k] = v
    return orjson.dumps(doc)


_DROP = object()


def _text(old: str, new: str) -> bytes:
    assert old.encode() in GOOD, old
    return GOOD.replace(old.encode(), new.encode())


def invalid_cases() -> list[tuple[str, bytes]]:
    cases = [
        ("NaN in x", _text('"x":[0.0,0.5,1.0]', '"x":[0.0,NaN,1.0]')),
        ("NaN in y", _text('"y":[0.0,0.4,1.0]', '"y":[0.0,NaN,1.0]')),
        ("null in y", _text('"y":[0.0,0.4,1.0]', '"y":[0.0,null,1.0]')),
        ("infinite literal", _text('"y":[0.0,0.4,1.0]', '"y":[0.0,Infinity,1.0]')),
        ("overflowing number", _text('"y":[0.0,0.4,1.0]', '"y":[0.0,1e999,1.0]')),
        ("x not strictly increasing", _edit(x=[0.0, 0.5, 0.5])),
        ("x decreasing", _edit(x=[0.0, 0.6, 0.5])),
        ("y decreasing (not monotone)", _edit(y=[0.0, 0.5, 0.4])),
        ("x outside [0, 1]", _edit(x=[-0.1, 0.5, 1.0])),
        ("y outside [0, 1]", _edit(y=[0.0, 0.5, 1.5])),
        ("lengths differ", _edit(y=[0.0, 1.0])),
        ("one knot", _edit(x=[0.5], y=[0.5])),
        ("no knots", _edit(x=[], y=[])),
        ("4097 knots", _edit(x=np.linspace(0, 1, 4097).tolist(), y=np.linspace(0, 1, 4097).tolist())),
        ("knots as strings", _edit(x=["0.0", "0.5", "1.0"])),
        ("knots as booleans", _edit(y=[False, False, True])),
        ("knots nested", _edit(y=[[0.0], [0.4], [1.0]])),
        ("x not an array", _edit(x={"0": 0.0})),
        ("schema 1", _edit(schema=1)),
        ("schema 3", _edit(schema=3)),
        ("schema as string", _edit(schema="2")),
        ("schema as float", _text('"schema":2', '"schema":2.0')),
        ("schema as boolean", _edit(schema=True)),
        ("version negative", _edit(version=-1)),
        ("version as float", _text('"version":7', '"version":7.0')),
        ("version as string", _edit(version="7")),
        ("version as boolean", _edit(version=True)),
        ("model empty", _edit(model="")),
        ("model not a string", _edit(model=1)),
        ("model_version not a string", _edit(model_version=2)),
        ("segment value not a string", _edit(segment={"platform": 1})),
        ("segment not an object", _edit(segment=["platform", "ios"])),
        ("belongs to another segment", _edit(segment={"platform": "android"})),
        ("belongs to another model version", _edit(model_version="v1")),
        ("belongs to another model", _edit(model="cvr")),
        ("segment of the parent level", _edit(segment={})),
        ("not JSON", b'{"schema":2,'),
        ("not an object", b"[1, 2]"),
        ("empty", b""),
    ]
    optional = [
        ("updated_at as float", _text('"updated_at":1764000000000', '"updated_at":1764000000000.0')),
        ("updated_at as string", _edit(updated_at="1764000000000")),
        ("last_event_ms as boolean", _edit(last_event_ms=False)),
        ("method not a string", _edit(method=1)),
        ("n negative", _edit(n=-1.0)),
        ("n as string", _edit(n="1234.5")),
        ("n null", _edit(n=None)),
        ("positives as boolean", _edit(positives=True)),
        ("platt missing b", _edit(platt={"a": 1.0})),
        ("platt as array", _edit(platt=[1.0, 0.0])),
        ("platt value a string", _edit(platt={"a": "1", "b": 0.0})),
        ("metrics value a boolean", _edit(metrics={"ece": True})),
        ("metrics value null", _edit(metrics={"ece": None})),
        ("metrics value an object", _edit(metrics={"ece": {"v": 1}})),
        ("metrics not an object", _edit(metrics=[1, 2])),
        ("prior not an object", _edit(prior=["v1", 3])),
        ("metrics null", _edit(metrics=None)),
    ]
    cases += optional
    for name in ("schema", "model", "model_version", "segment", "version", "x", "y"):
        cases.append((f"missing {name}", _edit(**{name: _DROP})))
    return cases


def _reversed(raw: bytes) -> dict[str, Any]:
    return dict(reversed(orjson.loads(raw).items()))


def accepted_cases() -> list[tuple[str, str, bytes]]:
    only_required = orjson.dumps(
        {"schema": 2, "model": "ctr", "model_version": "v2", "segment": {"platform": "ios"}, "version": 0}
        | {"x": [0, 1], "y": [0.25, 0.75]}
    )
    tricky = ("a*b:c|d=e%f", "v:1|2", {"k:ey": "v|al", "a=b": "c*d", "%": "%25", "😀": "日本"})
    return [
        ("as published", GOOD_KEY, GOOD),
        ("unknown extra fields", GOOD_KEY, _edit(future={"nested": [1, "two", None]}, shard=3, note="hi")),
        ("prior and other optional fields", GOOD_KEY, _edit(prior={"model_version": "v1", "version": 3}, n=0)),
        ("platt with an extra key, empty metrics", GOOD_KEY, _edit(platt={"a": 1, "b": 0, "c": "x"}, metrics={})),
        ("prior with entries of other types", GOOD_KEY, _edit(prior={"x": [0, 1], "source": None})),
        ("only the required fields", GOOD_KEY, only_required),
        ("field order and whitespace", GOOD_KEY, orjson.dumps(_reversed(GOOD), option=orjson.OPT_INDENT_2)),
        ("escaped key components", field(*tricky), published(*tricky, [0.0, 1.0], [0.0, 1.0], version=1)),
        ("version 0", GOOD_KEY, _edit(version=0)),
        ("large version", GOOD_KEY, _edit(version=2**53)),
    ]


# ---- lookup: fallback chain within the model version, no-map behaviour ------------------------------------

LOOKUP_MAPS = [
    ("ctr", "v2", {}),
    ("ctr", "v2", {"platform": "ios"}),
    ("ctr", "v2", {"placement": "search", "platform": "ios"}),
    ("ctr", "v1", {}),
    ("ctr", "v1", {"platform": "android"}),
    ("cvr", "v|1", {"k:ey": "v|al"}),
    ("a:b", "x*y", {}),
]


def lookup_cases() -> dict[str, Any]:
    maps = [
        {"field": field(m, v, s), "json": published(m, v, s, [0.0, 1.0], [0.0, 0.5 + i / 100], version=i + 1).decode()}
        for i, (m, v, s) in enumerate(LOOKUP_MAPS)
    ]
    held = {f["field"] for f in maps}
    segment_by = {"ctr": [["platform", "placement"], ["platform"]], "cvr": [["k:ey"]]}
    fallback_version = {"ctr": "v1"}  # the "no map" behaviour configured per model; raw elsewhere
    queries = [
        ("ctr", "v2", {"platform": "ios", "placement": "search"}),
        ("ctr", "v2", {"platform": "ios", "placement": "feed"}),
        ("ctr", "v2", {"platform": "android"}),
        ("ctr", "v2", {}),
        ("ctr", "v2", {"country": "de"}),
        ("ctr", "v1", {"platform": "android", "placement": "feed"}),
        ("ctr", "v3", {"platform": "android"}),
        ("ctr", "v3", {"platform": "ios"}),
        ("cvr", "v|1", {"k:ey": "v|al", "x": "1"}),
        ("cvr", "v|1", {"k:ey": "other"}),
        ("cvr", "v1", {"k:ey": "v|al"}),
        ("a:b", "x*y", {"any": "thing"}),
        ("a", "b:x*y", {}),
        ("nope", "v1", {}),
    ]
    out = []
    for model, version, seg in queries:
        by = [list(seg), *segment_by.get(model, [])]
        chain = [f"{esc(model)}:{esc(version)}:{k}" for k in segments.fallback_chain(seg, by)]
        served = next((f for f in chain if f in held), None)
        outcome = "hit"
        if served is None and model in fallback_version:
            fb = fallback_version[model]
            fb_chain = [f"{esc(model)}:{esc(fb)}:{k}" for k in segments.fallback_chain(seg, by)]
            served = next((f for f in fb_chain if f in held), None)
            outcome = "fallback_version" if served else "miss"
        elif served is None:
            outcome = "miss"
        out.append(
            {"model": model, "model_version": version, "segment": seg, "chain": chain, "served": served}
            | {"outcome": outcome}
        )
    return {"maps": maps, "segment_by": segment_by, "fallback_version": fallback_version, "queries": out}


def vectors() -> dict[str, Any]:
    invalid = invalid_cases()
    accepted = accepted_cases()
    for name, raw in invalid:
        if python_accepts(GOOD_KEY, raw):
            raise AssertionError(f"the Python core accepts the invalid map {name!r}")
    for name, key, raw in accepted:
        if not python_accepts(key, raw):
            raise AssertionError(f"the Python core rejects the valid map {name!r}")
    return {
        "about": "Generated by clients/testdata/generate.py from the Python core; do not edit. Doubles are "
        "IEEE-754 bits in hex; `expected` is np.interp(score, x, y).",
        "schema": SCHEMA,
        "escape": [{"raw": t, "escaped": esc(t)} for t in TRICKY],
        "segment_keys": [{"segment": s, "key": segments.segment_key(s)} for s in SEGMENTS],
        "fields": [
            {"model": m, "model_version": v, "segment": s, "field": field(m, v, s)}
            for m, v, s in [("ctr", "v2", {}), ("a:b", "c|d", {"e=f": "*"}), ("100%", "2026-11-30T12:00", {"é": "😀"})]
        ],
        "fallback_chains": chains(),
        "apply": apply_cases(),
        "invalid": [{"name": n, "field": GOOD_KEY, "json": raw.decode("utf-8")} for n, raw in invalid],
        "accepted": [{"name": n, "field": k, "json": raw.decode()} for n, k, raw in accepted],
        "lookup": lookup_cases(),
    }


def render() -> bytes:
    return orjson.dumps(vectors(), option=orjson.OPT_INDENT_2) + b"\n"


def disagreements(doc: dict[str, Any]) -> list[str]:
    """One line per score where the Python scalar or gridded batch path differs from np.interp."""
    lines = []
    for case in doc["apply"]:
        for path, rows in case.get("python_disagreements", {}).items():
            for r in rows:
                got = r.get("apply_one") or r.get("apply")
                line = f"{case['name']}: {path}({r['score']['repr']}) = {got['repr']}"
                lines.append(f"{line}, np.interp = {r['np_interp']['repr']}")
    return lines


def main(argv: list[str]) -> int:
    data = render()
    if "--check" in argv:
        if OUT.read_bytes() != data:
            print(f"{OUT} is stale: run python clients/testdata/generate.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_bytes(data)
    for line in disagreements(orjson.loads(data)):
        print("python paths disagree:", line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
