"""Validation at the edge: raw Kafka message values -> typed events, or a dead-letter reason.

Every message is decoded with orjson and checked against the event contract. Nothing that fails
reaches the join; the caller routes it to the dead-letter topic with the reason returned here.
A message value may be one event or a JSON array of events (batching producers).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import orjson

IMPRESSION, CLICK, CONVERSION = 0, 1, 2
KIND_NAMES = ("impression", "click", "conversion")

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
    predictions: list[tuple[str, str, float]]  # (model, version, score)


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


def _impression(event: dict, limits: Limits) -> Impression | str:
    impression_id = _id(event, "impression_id")
    if impression_id is None:
        return "bad_field:impression_id"
    ts = _ts(event.get("ts"))
    if type(ts) is str:
        return ts
    if ts > limits.max_ts_ms:
        return "bad_timestamp:future"
    segment = event.get("segment")
    if segment is None:
        segment = {}
    elif type(segment) is not dict or len(segment) > MAX_SEGMENT_DIMS:
        return "bad_field:segment"
    else:
        for dim, value in segment.items():
            if type(value) is not str or len(value) > MAX_SEGMENT_TEXT or len(dim) > MAX_SEGMENT_TEXT:
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
        predictions.append((model, version, score))
    return Impression(impression_id, ts, segment, predictions)


def _action(event: dict, kind: int, limits: Limits) -> Action | str:
    id_field = "click_id" if kind == CLICK else "conversion_id"
    action_id = _id(event, id_field)
    if action_id is None:
        return f"bad_field:{id_field}"
    impression_id = _id(event, "impression_id")
    if impression_id is None:
        return "bad_field:impression_id"
    ts = _ts(event.get("ts"))
    if type(ts) is str:
        return ts
    if ts > limits.max_ts_ms:
        return "bad_timestamp:future"
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


def max_ts_now(skew_ms: int, now_ms: int) -> int:
    """The latest event time accepted at wall time `now_ms`."""
    return min(MAX_TS_MS, now_ms + skew_ms)
