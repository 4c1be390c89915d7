"""Issue #6.4 (fuzz) and #6.6: `decode` never raises; no unsafe deserialisation on data paths; segment keys
cannot collide; secrets never reach a repr or the worker log."""

from __future__ import annotations

import io
import json
import re
import tokenize
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recalibrators.segments import fallback_chain, parse_segment_key, segment_key
from streams.pipeline.config import load_config
from streams.pipeline.events import CLICK, CONVERSION, IMPRESSION, Action, Impression, Invalid, Limits, decode
from streams.pipeline.topics import ids_covering_partitions
from tests.support.kit import (
    PARTITIONS,
    T0,
    config_text,
    map_counts,
    new_ns,
    produce_then_ticks,
    wait_for_counts,
)

ROOT = Path(__file__).resolve().parents[2]

# -- fuzz: decode never raises, always yields events or Invalid --------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)
FIELDS = (
    "impression_id",
    "ts",
    "segment",
    "predictions",
    "model",
    "version",
    "score",
    "click_id",
    "conversion_id",
    "value",
)
event_like = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8)
prediction_like = st.fixed_dictionaries(
    {}, optional={"model": json_values | st.text(max_size=70), "version": json_values, "score": json_values}
)
impression_like = st.fixed_dictionaries(
    {},
    optional={
        "impression_id": st.text(max_size=300) | json_values,
        "ts": st.integers(-(2**70), 2**70) | json_values,
        "segment": st.dictionaries(st.text(max_size=200), st.text(max_size=200) | json_values, max_size=20)
        | json_values,
        "predictions": st.lists(prediction_like, max_size=80) | json_values,
    },
)


def _check(value: bytes | None, kind: int) -> None:
    limits = Limits(max_message_bytes=10_000, max_predictions=64)
    for event in decode(value, kind, limits):
        assert type(event) in (Impression, Action, Invalid)
        if type(event) is Impression:
            assert 1_000_000_000_000 <= event.ts <= limits.max_ts_ms
            assert 0 < len(event.predictions) <= 64
            assert all(0.0 <= s <= 1.0 for _, _, s in event.predictions)
        elif type(event) is Invalid:
            assert isinstance(event.reason, str) and event.reason


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | st.none(), st.sampled_from((IMPRESSION, CLICK, CONVERSION)))
def test_decode_never_raises_on_bytes(value, kind):
    _check(value, kind)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    impression_like | event_like | st.lists(impression_like, max_size=4) | json_values,
    st.sampled_from((IMPRESSION, CLICK, CONVERSION)),
    st.integers(0, 40),
)
def test_decode_never_raises_on_json_shaped_input(doc, kind, cut):
    raw = json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")  # big ints, lone surrogates
    _check(raw, kind)
    _check(raw[:-cut] if cut else raw, kind)  # truncated
    _check(raw.replace(b'"', b'"\xff', 1), kind)  # invalid UTF-8


# -- no unsafe deserialisation on data paths ---------------------------------------------------------------
UNSAFE = re.compile(
    r"\b(pickle|cPickle|dill|marshal|shelve)\b|\beval\s*\(|\bexec\s*\(|\byaml\.load\s*\(|"
    r"\byaml\.unsafe_load\b|\bjsonpickle\b"
)


def _code_tokens(path: Path) -> str:
    """The source without comments and docstrings/strings: documentation that says "no pickle" is fine."""
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.STRING):
            out.append(tok.string)
    return " ".join(out)


def test_no_unsafe_deserialisation_in_streams_or_recalibrators():
    files = sorted((ROOT / "streams").rglob("*.py")) + sorted((ROOT / "recalibrators").rglob("*.py"))
    assert len(files) > 10
    hits = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in files for m in UNSAFE.finditer(_code_tokens(p))]
    assert hits == []


# -- segment keys: escaping makes them collision-free ------------------------------------------------------
nasty_text = st.text(alphabet=st.sampled_from("ab:|=*%,\\ "), min_size=0, max_size=6)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(nasty_text, nasty_text, max_size=3), st.dictionaries(nasty_text, nasty_text, max_size=3))
def test_segment_keys_are_injective(a, b):
    if a != b:
        assert segment_key(a) != segment_key(b)
    assert parse_segment_key(segment_key(a)) == a
    assert ":" not in segment_key(a)  # Redis key components stay separable


def test_separator_in_a_value_cannot_forge_another_segment():
    forged = {"placement": "a|z=c"}
    real = {"placement": "a", "z": "c"}
    assert segment_key(forged) != segment_key(real)
    chain = [["placement", "z"], ["placement"]]
    assert not set(fallback_chain(forged, chain)) & set(fallback_chain(real, chain)[:-1])


# -- secrets -----------------------------------------------------------------------------------------------
MARKER = "s3cr3t-MARKER-7f1e"


def test_config_repr_never_contains_the_password():
    env = {
        "RECAL_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "RECAL_KAFKA_SASL_MECHANISM": "PLAIN",
        "RECAL_KAFKA_SASL_USERNAME": "svc",
        "RECAL_KAFKA_SASL_PASSWORD": MARKER,
    }
    config = load_config(None, env=env)
    assert config.kafka.sasl_password == MARKER
    for text in (repr(config), str(config), repr(config.kafka), str(config.kafka), f"{config!r}"):
        assert MARKER not in text


@pytest.mark.slow
def test_worker_keeps_forged_segments_apart_and_never_logs_the_secret(stack, start_worker, tmp_path, record):
    """Two segments whose unescaped keys would both read `placement=a|z=c` publish distinct, exact maps; a
    worker run with RECAL_KAFKA_SASL_PASSWORD set (PLAINTEXT, so the password is unused) never logs it."""
    ns = new_ns()
    config = config_text(ns, segment_by=[["placement", "z"], ["placement"]])
    worker = start_worker(
        config,
        env={"RECAL_KAFKA_SASL_PASSWORD": MARKER, "RECAL_KAFKA_SASL_USERNAME": "svc"},
        log_name="secret-worker.log",
    )
    worker.wait_ready()
    segments = [{"placement": "a|z=c", "platform": "ios"}, {"placement": "a", "z": "c", "platform": "ios"}]
    messages, expected = [], {}
    for i in range(120):
        iid, seg = f"{ns}-imp-{i}", segments[i % 2]
        doc = {
            "impression_id": iid,
            "ts": T0 + i,
            "segment": seg,
            "predictions": [{"model": "ctr", "version": "v1", "score": 0.1}],
        }
        messages.append((f"{ns}-impressions", iid, orjson.dumps(doc)))
        clicked = i % 3 == 0
        if clicked:
            messages.append(
                (f"{ns}-clicks", iid, orjson.dumps({"click_id": f"c{i}", "impression_id": iid, "ts": T0 + i + 100}))
            )
        for key in fallback_chain(seg, [["placement", "z"], ["placement"]]):
            n_pos = expected.setdefault(("ctr", key), [0, 0])
            n_pos[0] += 1
            n_pos[1] += clicked
    tick = {"segment": {"placement": "tick"}, "predictions": [{"model": "ctr", "version": "v1", "score": 0.1}]}
    ticks = [
        (f"{ns}-impressions", iid, orjson.dumps({"impression_id": iid, "ts": T0 + 60_000, **tick}))
        for iid in ids_covering_partitions(f"{ns}-tick", PARTITIONS)
    ]
    produce_then_ticks(stack.broker_url, messages, ticks)
    counts = wait_for_counts(stack.redis_url, ns, expected, worker, timeout_s=60)
    assert set(expected) == {
        ("ctr", "placement=a%7Cz%3Dc"),
        ("ctr", "placement=a|z=c"),
        ("ctr", "placement=a"),
        ("ctr", "*"),
    }
    assert counts == expected, map_counts(stack.redis_url, ns, expected)
    worker.stop()
    log_text = worker.log_path.read_bytes()
    assert log_text, "the worker wrote no log"
    assert MARKER.encode() not in log_text
    record(
        scenario="security: forged segment keys + secret in env",
        faults=0,
        events_sent=len(messages),
        labels_expected=expected[("ctr", "*")][0],
        labels_counted=counts[("ctr", "*")][0],
        max_rss_mb=round(worker.max_rss_mb),
    )
