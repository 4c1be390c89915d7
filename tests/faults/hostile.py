"""A seeded generator of malformed and adversarial messages, each with the dead-letter reason it must get.

The expected reason is fixed by construction (what the payload breaks in the event contract of README.md),
never by calling `streams.pipeline.events.decode`, so the worker-level test checks the validator rather than itself.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import orjson

T_OK = 1_790_000_000_000  # a valid event time
HUGE = 1_000_000  # the worker's default max_message_bytes

Bad = tuple[int, bytes | None, list[str]]  # (topic index 0/1/2, value, expected reasons, one per dead letter)


def _imp(iid: str, **over) -> dict:
    doc = {
        "impression_id": iid,
        "ts": T_OK,
        "segment": {"placement": "search", "platform": "ios"},
        "predictions": [{"model": "ctr", "version": "v1", "score": 0.02}],
    }
    doc.update(over)
    return doc


def _pred(**over) -> dict:
    return {"model": "ctr", "version": "v1", "score": 0.02, **over}


def _raw_score(iid: str, literal: bytes) -> bytes:
    return orjson.dumps(_imp(iid, predictions=[_pred(score=0.5)])).replace(b'"score":0.5', b'"score":' + literal)


def _cases(rng: random.Random) -> dict[str, Callable[[str], Bad]]:
    def truncated(iid: str) -> Bad:
        raw = orjson.dumps(_imp(iid))
        return 0, raw[: rng.randrange(0, len(raw))], ["invalid_json"]

    def random_bytes(iid: str) -> Bad:
        return 0, b"\xff" + rng.randbytes(rng.randrange(0, 64)), ["invalid_json"]

    def invalid_utf8(iid: str) -> Bad:
        return 0, orjson.dumps(_imp(iid)).replace(b"ios", b"i\xff\xfes"), ["invalid_json"]

    def lone_surrogate(iid: str) -> Bad:
        return 0, orjson.dumps(_imp(iid)).replace(b"search", b"se\\ud800rch"), ["invalid_json"]

    def trailing_garbage(iid: str) -> Bad:
        return 0, orjson.dumps(_imp(iid)) + b"}", ["invalid_json"]

    return {
        "truncated": truncated,
        "random_bytes": random_bytes,
        "invalid_utf8": invalid_utf8,
        "lone_surrogate": lone_surrogate,
        "trailing_garbage": trailing_garbage,
        "nan_score": lambda iid: (0, _raw_score(iid, b"NaN"), ["invalid_json"]),
        "inf_score": lambda iid: (0, _raw_score(iid, b"Infinity"), ["invalid_json"]),
        "overflow_score": lambda iid: (0, _raw_score(iid, b"1e400"), ["invalid_json"]),
        "tombstone": lambda iid: (0, None, ["empty_message"]),
        "empty_batch": lambda iid: (0, b"[]", ["empty_batch"]),
        "scalar": lambda iid: (0, rng.choice([b"42", b'"x"', b"null", b"true", b"1.5"]), ["not_an_object"]),
        "missing_id": lambda iid: (
            0,
            orjson.dumps({k: v for k, v in _imp(iid).items() if k != "impression_id"}),
            ["bad_field:impression_id"],
        ),
        "int_id": lambda iid: (0, orjson.dumps(_imp(12345)), ["bad_field:impression_id"]),
        "empty_id": lambda iid: (0, orjson.dumps(_imp("")), ["bad_field:impression_id"]),
        "long_id": lambda iid: (0, orjson.dumps(_imp(iid + "x" * 300)), ["bad_field:impression_id"]),
        "str_ts": lambda iid: (0, orjson.dumps(_imp(iid, ts=str(T_OK))), ["bad_type:ts"]),
        "float_ts": lambda iid: (0, orjson.dumps(_imp(iid, ts=T_OK + 0.5)), ["bad_type:ts"]),
        "bool_ts": lambda iid: (0, orjson.dumps(_imp(iid, ts=True)), ["bad_type:ts"]),
        "ts_1970": lambda iid: (0, orjson.dumps(_imp(iid, ts=86_400_000)), ["bad_timestamp:too_old"]),
        "ts_negative": lambda iid: (0, orjson.dumps(_imp(iid, ts=-5)), ["bad_timestamp:too_old"]),
        "ts_2100": lambda iid: (0, orjson.dumps(_imp(iid, ts=4_133_980_800_000)), ["bad_timestamp:future"]),
        "segment_list": lambda iid: (0, orjson.dumps(_imp(iid, segment=["a"])), ["bad_field:segment"]),
        "segment_int_value": lambda iid: (0, orjson.dumps(_imp(iid, segment={"placement": 3})), ["bad_field:segment"]),
        "segment_17_dims": lambda iid: (
            0,
            orjson.dumps(_imp(iid, segment={f"d{i}": "v" for i in range(17)})),
            ["bad_field:segment"],
        ),
        "predictions_dict": lambda iid: (
            0,
            orjson.dumps(_imp(iid, predictions={"model": "ctr"})),
            ["bad_field:predictions"],
        ),
        "prediction_not_object": lambda iid: (0, orjson.dumps(_imp(iid, predictions=[0.5])), ["bad_field:predictions"]),
        "empty_predictions": lambda iid: (0, orjson.dumps(_imp(iid, predictions=[])), ["empty_predictions"]),
        "model_int": lambda iid: (0, orjson.dumps(_imp(iid, predictions=[_pred(model=7)])), ["bad_field:model"]),
        "model_colon": lambda iid: (
            0,
            orjson.dumps(_imp(iid, predictions=[_pred(model="ctr:evil")])),
            ["bad_field:model"],
        ),
        "model_long": lambda iid: (
            0,
            orjson.dumps(_imp(iid, predictions=[_pred(model="m" * 65)])),
            ["bad_field:model"],
        ),
        "version_int": lambda iid: (0, orjson.dumps(_imp(iid, predictions=[_pred(version=2)])), ["bad_field:version"]),
        "score_str": lambda iid: (0, orjson.dumps(_imp(iid, predictions=[_pred(score="0.5")])), ["bad_type:score"]),
        "score_null": lambda iid: (0, orjson.dumps(_imp(iid, predictions=[_pred(score=None)])), ["bad_type:score"]),
        "score_negative": lambda iid: (0, orjson.dumps(_imp(iid, predictions=[_pred(score=-0.25)])), ["bad_score"]),
        "score_above_1": lambda iid: (0, orjson.dumps(_imp(iid, predictions=[_pred(score=1.5)])), ["bad_score"]),
        "click_no_id": lambda iid: (1, orjson.dumps({"impression_id": iid, "ts": T_OK}), ["bad_field:click_id"]),
        "click_int_impression": lambda iid: (
            1,
            orjson.dumps({"click_id": iid, "impression_id": 5, "ts": T_OK}),
            ["bad_field:impression_id"],
        ),
        "click_ts_1970": lambda iid: (
            1,
            orjson.dumps({"click_id": iid, "impression_id": iid, "ts": 1000}),
            ["bad_timestamp:too_old"],
        ),
        "conversion_str_value": lambda iid: (
            2,
            orjson.dumps({"conversion_id": iid, "impression_id": iid, "ts": T_OK, "value": "12.5"}),
            ["bad_field:value"],
        ),
        "conversion_no_id": lambda iid: (
            2,
            orjson.dumps({"impression_id": iid, "ts": T_OK}),
            ["bad_field:conversion_id"],
        ),
        "array_mixed": lambda iid: (
            0,
            orjson.dumps([_imp(iid, ts=1), 7, _imp(iid, predictions=[])]),
            ["bad_timestamp:too_old", "not_an_object", "empty_predictions"],
        ),
    }


# Rare and large: a handful each, on top of the common cases.
def _large_cases(rng: random.Random) -> dict[str, Callable[[str], Bad]]:
    return {
        "oversized": lambda iid: (0, orjson.dumps(_imp(iid, pad="p" * (HUGE + 1000))), ["oversized"]),
        "huge_segment_value": lambda iid: (
            0,
            orjson.dumps(_imp(iid, segment={"placement": "s" * (HUGE - 500)})),
            ["bad_field:segment"],
        ),
        "huge_id": lambda iid: (0, orjson.dumps(_imp("i" * (HUGE - 500))), ["bad_field:impression_id"]),
        "array_of_1000": lambda iid: (0, orjson.dumps([1] * 1000), ["not_an_object"] * 1000),
        "predictions_10000": lambda iid: (
            0,
            orjson.dumps(_imp(iid, predictions=[_pred()] * 10_000)),
            ["too_many_predictions"],
        ),
    }


def generate(n: int, seed: int = 6, n_large: int = 4) -> tuple[list[Bad], Counter[str], Counter[str]]:
    """`n` malformed messages (plus `n_large` of each large kind); returns them, the expected dead-letter
    reasons and how many of each kind were made."""
    rng = random.Random(seed)
    cases, large = _cases(rng), _large_cases(rng)
    names = sorted(cases)
    out: list[Bad] = []
    kinds: Counter[str] = Counter()
    for i in range(n):
        kind = names[rng.randrange(len(names))]
        kinds[kind] += 1
        out.append(cases[kind](f"bad-{seed}-{i}"))
    for kind, make in large.items():
        for j in range(n_large):
            kinds[kind] += 1
            out.append(make(f"big-{seed}-{kind}-{j}"))
    rng.shuffle(out)
    reasons: Counter[str] = Counter()
    for _, _, why in out:
        reasons.update(why)
    return out, reasons, kinds
