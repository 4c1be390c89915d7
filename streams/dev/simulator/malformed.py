"""Malformed messages, one kind per way a producer can break the event contract (the workers must count and
dead-letter every one)."""

from __future__ import annotations

from collections.abc import Callable

import orjson


def _impression(iid: str, ts: object, score: object = 0.02) -> dict[str, object]:
    return {
        "impression_id": iid,
        "ts": ts,
        "segment": {"platform": "ios", "placement": "search"},
        "predictions": [{"model": "ctr", "version": "v1", "score": score}],
    }


def _raw_score(iid: str, ts: int, literal: bytes) -> bytes:
    # orjson refuses NaN/inf, and producers that use other JSON libraries write them anyway.
    return orjson.dumps(_impression(iid, ts, score=0.5)).replace(b'"score":0.5', b'"score":' + literal)


# kind -> (topic index: 0 impressions, 1 clicks, 2 conversions; bytes). Every payload breaks the contract.
MALFORMED: dict[str, Callable[[str, int], tuple[int, bytes]]] = {
    "bad_json": lambda iid, ts: (0, b'{"impression_id": "' + iid.encode() + b'", "ts": ,}'),
    "truncated": lambda iid, ts: (0, orjson.dumps(_impression(iid, ts))[:-7]),
    "missing_field": lambda iid, ts: (
        0,
        orjson.dumps({k: v for k, v in _impression(iid, ts).items() if k != "ts"}),
    ),
    "wrong_type": lambda iid, ts: (0, orjson.dumps(_impression(iid, str(ts)))),
    "nan_score": lambda iid, ts: (0, _raw_score(iid, ts, b"NaN")),
    "inf_score": lambda iid, ts: (0, _raw_score(iid, ts, b"Infinity")),
    "negative_score": lambda iid, ts: (0, orjson.dumps(_impression(iid, ts, score=-0.25))),
    "score_above_1": lambda iid, ts: (0, orjson.dumps(_impression(iid, ts, score=1.5))),
    "ts_1970": lambda iid, ts: (0, orjson.dumps(_impression(iid, 86_400_000))),
    "ts_2100": lambda iid, ts: (0, orjson.dumps(_impression(iid, 4_133_980_800_000))),  # 2101-01-01
    "empty_predictions": lambda iid, ts: (0, orjson.dumps(_impression(iid, ts) | {"predictions": []})),
    "invalid_utf8": lambda iid, ts: (0, orjson.dumps(_impression(iid, ts)).replace(b"ios", b"i\xff\xfes")),
    "click_missing_impression": lambda iid, ts: (1, orjson.dumps({"click_id": iid, "ts": ts})),
    "conversion_wrong_type": lambda iid, ts: (
        2,
        orjson.dumps({"conversion_id": iid, "impression_id": 12345, "ts": ts, "value": "12.5"}),
    ),
}
MALFORMED_KINDS = tuple(MALFORMED)
