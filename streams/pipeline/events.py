"""Validation at the edge: raw Kafka message values -> typed events, or a dead-letter reason.

The event contract is written once, as strict msgspec structs (`true` is not a score, `"123"` is not a
timestamp, an int score is a float). The worker's hot path, `decode_batch`, decodes a whole fetched
batch with them at C speed and never builds a dict. A message the structs refuse goes through the
slow path, `decode`, which names the reason (the dead-letter vocabulary) with orjson and plain checks;
`tests/unit/test_events.py` pins that both accept exactly the same events. A message value may be one
event or a JSON array of events (batching producers).

>>> value = b'{"impression_id": "i-1", "ts": 1700000000000, "segment": {"placement": "feed"},'
>>> value += b' "predictions": [{"model": "ctr", "version": "v1", "score": 0.02}]}'
>>> list(decode(value, IMPRESSION, Limits()))
[Impression(impression_id='i-1', ts=1700000000000, segment={'placement': 'feed'}, predictions=[('ctr', 'v1', 0.02)])]
>>> list(decode(b'{"impression_id": "i-1", "ts": true}', IMPRESSION, Limits()))
[Invalid(reason='bad_type:ts', index=-1)]
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, NamedTuple

import msgspec
import numpy as np
import orjson

IMPRESSION, CLICK, CONVERSION = 0, 1, 2
KIND_NAMES = ("impression", "click", "conversion")
ACTION_ID_FIELD = {CLICK: "click_id", CONVERSION: "conversion_id"}  # the one place for the id choice

MIN_TS_MS = 1_000_000_000_000  # 2001-09-09: anything older is a unit bug (seconds, not ms) or garbage
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01
MAX_ID_LEN = 256
MAX_SEGMENT_DIMS = 16
MAX_SEGMENT_TEXT = 128
MAX_MODEL_NAME = 64


class Impression(NamedTuple):
    impression_id: str
    ts: int
    segment: dict[str, str]
    predictions: list[tuple[str, str, float]]  # (model, model version, score)


class Action(NamedTuple):
    """A click or a conversion: something that labels an impression."""

    kind: int
    impression_id: str
    ts: int
    action_id: str


class Invalid(NamedTuple):
    reason: str
    index: int  # position in a batched (array) message, -1 for a single event


class Limits(NamedTuple):
    max_message_bytes: int = 1_000_000
    max_predictions: int = 64
    max_ts_ms: int = MAX_TS_MS
    max_events: int = 10_000  # per array message


# -- the contract, as strict structs (the fast path) -------------------------------------------------
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LEN)]
Ts = Annotated[int, msgspec.Meta(ge=MIN_TS_MS)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_SEGMENT_TEXT)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_MODEL_NAME)]  # no ":": checked per batch

# gc=False: these hold only strings, numbers and each other (no cycles), and tracking ~10^5 of them per
# batch made the cyclic collector the decoder's main cost (2x).


class Prediction(msgspec.Struct, frozen=True, gc=False):
    model: Name
    model_version: Annotated[str, msgspec.Meta(max_length=MAX_MODEL_NAME)] = msgspec.field(name="version")
    score: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class ImpressionEvent(msgspec.Struct, gc=False):
    impression_id: Id
    ts: Ts
    predictions: Annotated[list[Prediction], msgspec.Meta(min_length=1)]
    # Kept as its JSON text: a batch has few distinct segments, each validated (and parsed) once by
    # `segment_of`; decoding a dict per event and keying it cost a third of the decode.
    segment: msgspec.Raw = msgspec.Raw(b"null")


class ClickEvent(msgspec.Struct, gc=False):
    click_id: Id
    impression_id: Id
    ts: Ts


class ConversionEvent(msgspec.Struct, gc=False):
    conversion_id: Id
    impression_id: Id
    ts: Ts
    value: Annotated[float, msgspec.Meta(ge=-1.7976931348623157e308, le=1.7976931348623157e308)] = 0.0


Segment = Annotated[dict[Text, Text], msgspec.Meta(max_length=MAX_SEGMENT_DIMS)] | None
_SEGMENT_DECODER = msgspec.json.Decoder(Segment)
_SEGMENTS: dict[bytes, dict[str, str] | str] = {}  # segment JSON -> the segment, or why it is refused
_MAX_SEGMENTS = 100_000


def segment_check(raw: bytes) -> dict[str, str] | str:
    """The segment a segment's JSON text holds ({} for null), or the reason it is refused:
    `invalid_json` (the decoder skips a raw value without checking, e.g., its escapes: orjson refuses
    the whole message then) or `bad_field:segment`."""
    segment = _SEGMENTS.get(raw)
    if segment is None:
        if len(_SEGMENTS) >= _MAX_SEGMENTS:
            _SEGMENTS.clear()
        try:
            orjson.loads(raw)
            segment = _SEGMENT_DECODER.decode(raw) or {}
        except orjson.JSONDecodeError:
            segment = "invalid_json"
        except (msgspec.ValidationError, msgspec.DecodeError):
            segment = "bad_field:segment"
        _SEGMENTS[raw] = segment
    return segment


def segment_of(raw: bytes) -> dict[str, str]:
    """The segment of a text `segment_check` accepted."""
    segment = segment_check(raw)
    if type(segment) is str:
        raise ValueError(f"{segment}: {raw[:100]!r}")
    return segment


def segment_text(segment: msgspec.Raw | dict | None) -> bytes:
    """The JSON text of an event struct's segment (a Raw from the decoder, or a dict from code)."""
    return bytes(segment) if type(segment) is msgspec.Raw else orjson.dumps(segment)


_STRUCTS = (ImpressionEvent, ClickEvent, ConversionEvent)
_DECODERS = tuple(msgspec.json.Decoder(t) for t in _STRUCTS)


@dataclass
class Decoded:
    """One fetched batch of one kind: the accepted events (structs), the message each came from, and
    the refused events per message (message index -> Invalids), for the dead-letter topic."""

    events: list = field(default_factory=list)
    origin: list[int] = field(default_factory=list)
    invalid: dict[int, list[Invalid]] = field(default_factory=dict)


def decode_batch(values: list[bytes | None], kind: int, limits: Limits) -> Decoded:
    """Decode every message of a batch; never raises. One C call per message when all are single,
    valid events (the steady state); messages it refuses (or arrays) go through `decode`."""
    out = Decoded()
    if values and max(map(len, filter(None, values)), default=0) <= limits.max_message_bytes:
        try:
            out.events = list(map(_DECODERS[kind].decode, values))
            out.origin = list(range(len(values)))
        except (msgspec.ValidationError, msgspec.DecodeError, TypeError):
            out.events = []
    if not out.events and values:
        _decode_slowly(values, kind, limits, out)
    _check_limits(out, kind, limits)
    return out


def _decode_slowly(values: list[bytes | None], kind: int, limits: Limits, out: Decoded) -> None:
    decoder = _DECODERS[kind]
    for i, value in enumerate(values):
        if value is not None and len(value) <= limits.max_message_bytes:
            try:
                out.events.append(decoder.decode(value))
                out.origin.append(i)
                continue
            except (msgspec.ValidationError, msgspec.DecodeError):
                pass
        for event in decode(value, kind, limits):
            if type(event) is Invalid:
                out.invalid.setdefault(i, []).append(event)
            else:  # an element of an array message: back to a struct
                out.events.append(_as_struct(event, kind))
                out.origin.append(i)


def _as_struct(event: Impression | Action, kind: int):
    if kind == IMPRESSION:
        predictions = [Prediction(m, v, s) for m, v, s in event.predictions]
        return ImpressionEvent(event.impression_id, event.ts, predictions, msgspec.Raw(orjson.dumps(event.segment)))
    if kind == CLICK:
        return ClickEvent(event.action_id, event.impression_id, event.ts)
    return ConversionEvent(event.action_id, event.impression_id, event.ts)


def _check_limits(out: Decoded, kind: int, limits: Limits) -> None:
    """The checks that depend on the worker (wall clock, prediction cap), the segment (validated once
    per distinct text) and those that span an event's predictions (a model twice, a ':' in a model
    name), vectorised over the batch; the first failing check names the event, as in `decode`."""
    events = out.events
    if not events:
        return
    reasons: dict[int, str] = {}
    ts = np.fromiter((e.ts for e in events), np.int64, len(events))
    for i in np.flatnonzero(ts > limits.max_ts_ms).tolist():
        reasons[i] = "bad_timestamp:future"
    if kind == IMPRESSION:
        texts = [bytes(e.segment) for e in events]
        for text in dict.fromkeys(texts):
            segment = segment_check(text)
            if type(segment) is str:
                for i in [i for i, t in enumerate(texts) if t == text]:
                    if segment == "invalid_json":
                        reasons[i] = segment  # the whole message is not JSON: nothing else counts
                    else:
                        reasons.setdefault(i, segment)
        n_slots = np.fromiter((len(e.predictions) for e in events), np.int64, len(events))
        for i in np.flatnonzero(n_slots > limits.max_predictions).tolist():
            reasons.setdefault(i, "too_many_predictions")
        models = [p.model for e in events for p in e.predictions]
        codes = {m: i for i, m in enumerate(dict.fromkeys(models))}
        code = np.fromiter(map(codes.__getitem__, models), np.int64, len(models))
        owner = np.repeat(np.arange(len(events)), n_slots)
        bad_names = [c for m, c in codes.items() if ":" in m]
        for i in np.unique(owner[np.isin(code, bad_names)]).tolist():
            reasons.setdefault(i, "bad_field:model")
        pair = np.sort(owner * len(codes) + code)
        for i in np.unique(pair[1:][pair[1:] == pair[:-1]] // len(codes)).tolist():
            reasons.setdefault(i, "duplicate_model")
    if not reasons:
        return
    keep_events, keep_origin = [], []
    for i, (event, origin) in enumerate(zip(events, out.origin, strict=True)):
        reason = reasons.get(i)
        if reason is None:
            keep_events.append(event)
            keep_origin.append(origin)
        else:
            out.invalid.setdefault(origin, []).append(Invalid(reason, -1))
    out.events, out.origin = keep_events, keep_origin


# -- the slow path: one message, every reason named ---------------------------------------------------
def _ts(value: object) -> int | str:
    if type(value) is not int:
        return "bad_type:ts"
    if not value >= MIN_TS_MS:
        return "bad_timestamp:too_old"
    return value


def _id(event: dict, name: str) -> str | None:
    value = event.get(name)
    if type(value) is str and 0 < len(value) <= MAX_ID_LEN:
        return value
    return None


def _segment(segment: object) -> dict[str, str] | None:
    if segment is None:
        return {}
    if type(segment) is not dict or len(segment) > MAX_SEGMENT_DIMS:
        return None
    for dim, value in segment.items():
        if type(value) is not str or len(value) > MAX_SEGMENT_TEXT or len(dim) > MAX_SEGMENT_TEXT:
            return None
    return segment


def _prediction(p: object) -> tuple[str, str, float] | str:
    if type(p) is not dict:
        return "bad_field:predictions"
    model, version, score = p.get("model"), p.get("version"), p.get("score")
    if type(model) is not str or not 0 < len(model) <= MAX_MODEL_NAME or ":" in model:
        return "bad_field:model"
    if type(version) is not str or len(version) > MAX_MODEL_NAME:
        return "bad_field:version"
    if type(score) is int:
        score = float(score)
    if type(score) is not float:
        return "bad_type:score"
    if not (0.0 <= score <= 1.0) or math.isnan(score):
        return "bad_score"
    return model, version, score


def _id_and_ts(event: dict, limits: Limits) -> tuple[str, int] | str:
    """The event's impression id and event time, or the reason one of them is refused."""
    impression_id = _id(event, "impression_id")
    if impression_id is None:
        return "bad_field:impression_id"
    ts = _ts(event.get("ts"))
    if type(ts) is str:
        return ts
    if ts > limits.max_ts_ms:
        return "bad_timestamp:future"
    return impression_id, ts


def _impression(event: dict, limits: Limits) -> Impression | str:
    ref = _id_and_ts(event, limits)
    if type(ref) is str:
        return ref
    impression_id, ts = ref
    segment = _segment(event.get("segment"))
    if segment is None:
        return "bad_field:segment"
    raw_predictions = event.get("predictions")
    if type(raw_predictions) is not list:
        return "bad_field:predictions"
    if not raw_predictions:
        return "empty_predictions"
    if len(raw_predictions) > limits.max_predictions:
        return "too_many_predictions"
    predictions = []
    for p in raw_predictions:
        prediction = _prediction(p)
        if type(prediction) is str:
            return prediction
        predictions.append(prediction)
    if len({p[0] for p in predictions}) != len(predictions):
        return "duplicate_model"  # which score is the model's? refused, not guessed (see docs/pipeline.md)
    return Impression(impression_id, ts, segment, predictions)


def _action(event: dict, kind: int, limits: Limits) -> Action | str:
    id_field = ACTION_ID_FIELD[kind]
    action_id = _id(event, id_field)
    if action_id is None:
        return f"bad_field:{id_field}"
    ref = _id_and_ts(event, limits)
    if type(ref) is str:
        return ref
    impression_id, ts = ref
    if kind == CONVERSION and "value" in event:
        value = event["value"]
        if type(value) not in (int, float) or not math.isfinite(value):
            return "bad_field:value"
    return Action(kind, impression_id, ts, action_id)


def _one(event: object, kind: int, limits: Limits) -> Impression | Action | str:
    if type(event) is not dict:
        return "not_an_object"
    return _impression(event, limits) if kind == IMPRESSION else _action(event, kind, limits)


def decode(value: bytes | None, kind: int, limits: Limits) -> Iterator[Impression | Action | Invalid]:
    """Yield the events of one message value, or an Invalid per bad event (never raises)."""
    if value is None:
        yield Invalid("empty_message", -1)
        return
    if len(value) > limits.max_message_bytes:
        yield Invalid("oversized", -1)
        return
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        yield Invalid("invalid_json", -1)
        return
    if type(doc) is list:
        if not doc:
            yield Invalid("empty_batch", -1)
        if len(doc) > limits.max_events:
            yield Invalid("too_many_events", -1)
            return
        for index, event in enumerate(doc):
            result = _one(event, kind, limits)
            yield Invalid(result, index) if type(result) is str else result
    else:
        result = _one(doc, kind, limits)
        yield Invalid(result, -1) if type(result) is str else result


def as_action(event: ClickEvent | ConversionEvent, kind: int) -> Action:
    return Action(kind, event.impression_id, event.ts, getattr(event, ACTION_ID_FIELD[kind]))


def max_ts_now(skew_ms: int, now_ms: int) -> int:
    """The latest event time accepted at wall time `now_ms`."""
    return min(MAX_TS_MS, now_ms + skew_ms)
