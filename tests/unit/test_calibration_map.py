import pickle

import numpy as np
import orjson
import pytest

from recalibrators import CalibrationMap, identity_map

KEYS = {
    "schema",
    "model",
    "model_version",
    "segment",
    "version",
    "updated_at",
    "method",
    "n",
    "positives",
    "last_event_ms",
    "x",
    "y",
    "platt",
    "metrics",
    "prior",
}
REQUIRED = {"schema", "model", "model_version", "segment", "version", "x", "y"}


def make_map(**kw) -> CalibrationMap:
    base = dict(
        x=[0.0, 0.01, 0.1, 1.0],
        y=[0.0, 0.005, 0.12, 1.0],
        method="isotonic",
        n=1234.5,
        positives=25.25,
        last_event_ms=1_700_000_000_000,
        model="ctr",
        model_version="v7",
        segment={"platform": "ios", "placement": "feed"},
        map_version=3,
        updated_at=1_700_000_000_123,
        platt=(0.93, -0.1),
        metrics={"holdout_log_loss": 0.0912},
        prior={"model_version": "v6", "map_version": 120},
    )
    return CalibrationMap(**(base | kw))


def test_json_round_trip_is_exact_and_has_the_documented_keys():
    m = make_map(x=[0.0, 0.1 + 0.2, 1 / 3, 1.0], y=[0.0, 1e-300, 0.7000000000000001, 1.0])
    doc = orjson.loads(m.to_json())
    assert set(doc) == KEYS
    assert doc["schema"] == 2 and doc["version"] == 3 and doc["segment"] == {"placement": "feed", "platform": "ios"}
    assert doc["platt"] == {"a": 0.93, "b": -0.1}
    back = CalibrationMap.from_json(m.to_json())
    assert back == m and hash(back) == hash(m)
    assert back.x.tobytes() == m.x.tobytes() and back.y.tobytes() == m.y.tobytes()


def test_pickle_round_trip_is_exact_and_applies_alike():  # the map builder process sends maps pickled
    m = make_map()
    back = pickle.loads(pickle.dumps(m))
    assert back == m and back.to_json() == m.to_json()
    scores = np.linspace(0.0, 1.0, 101)
    assert back.apply(scores).tobytes() == m.apply(scores).tobytes()
    assert [back.apply_one(s) for s in scores] == [m.apply_one(s) for s in scores]


def test_optional_fields_omitted():
    doc = orjson.loads(make_map(platt=None, metrics=None, prior=None).to_json())
    assert "platt" not in doc and "metrics" not in doc and "prior" not in doc
    assert CalibrationMap.from_json(orjson.dumps(doc)).platt is None


def test_only_what_applying_needs_is_required_and_unknown_fields_are_ignored():
    full = orjson.loads(make_map().to_json())
    minimal = {k: v for k, v in full.items() if k in REQUIRED}
    m = CalibrationMap.from_json(orjson.dumps(minimal))  # no last_event_ms, n, method, updated_at, ...
    assert m.apply_one(0.05) == make_map().apply_one(0.05) and m.last_event_ms == 0 and m.method == ""
    for name in REQUIRED:
        with pytest.raises(ValueError, match=r"missing fields|schema"):
            CalibrationMap.from_json(orjson.dumps({k: v for k, v in minimal.items() if k != name}))
    newer = full | {"calibrated_by": "recal 9", "knots_v3": {"any": ["thing"]}, "platt": {"a": 1.0, "b": 0.0, "c": 2}}
    assert CalibrationMap.from_json(orjson.dumps(newer)).map_version == 3


@pytest.mark.parametrize(
    "change",
    [
        {"x": [0.0, "0.01", 0.1, 1.0]},
        {"y": [0.0, 0.005, 0.12, True]},
        {"x": [False, 0.01, 0.1, 1.0]},
        {"n": True},
        {"version": True},
        {"version": "3"},
        {"schema": True},
        {"schema": 1},
        {"schema": 3},
        {"metrics": {"ratio_raw": None}},
        {"metrics": {"flag": True}},
        {"prior": "v1"},
        {"model_version": 2},
        {"platt": {"a": "1", "b": 0}},
    ],
)
def test_look_alikes_are_never_numbers(change):
    with pytest.raises(ValueError):
        CalibrationMap.from_json(_doc(**change))


def test_prior_is_provenance_only():
    m = CalibrationMap.from_json(_doc(prior={"model_version": "v1", "map_version": 7, "x": [0, 1], "n": None}))
    assert m.prior_dict == {"model_version": "v1", "map_version": 7}


def test_metrics_must_be_finite():
    with pytest.raises(ValueError, match="finite"):
        make_map(metrics={"ratio_raw": float("inf")})


def test_immutable_and_with_meta():
    m = make_map()
    with pytest.raises(AttributeError):
        m.map_version = 4  # type: ignore[misc]
    with pytest.raises(ValueError):
        m.x[0] = 0.5
    m2 = m.with_meta(map_version=4, segment={"platform": "android"})
    assert m2.map_version == 4 and m2.segment_dict == {"platform": "android"} and m.map_version == 3
    assert m2 != m


def test_apply_and_apply_one_agree_with_interp():
    m = make_map()
    s = np.array([-1.0, 0.0, 0.003, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0])
    np.testing.assert_array_equal(m.apply(s), np.interp(s, m.x, m.y))
    assert [m.apply_one(float(v)) for v in s] == pytest.approx(list(np.interp(s, m.x, m.y)), rel=1e-15, abs=0)
    assert identity_map().apply_one(0.37) == 0.37


@pytest.mark.parametrize("n_knots", [2, 3, 98, 600, 4096])
def test_large_batch_apply_is_bit_identical_to_interp(n_knots):
    rng = np.random.default_rng(n_knots)
    x = np.unique(np.concatenate([[0.0, 1.0], rng.random(n_knots) ** 4]))[:n_knots]
    y = np.sort(rng.random(x.size))
    m = CalibrationMap(x=x, y=y, method="t", n=0, positives=0, last_event_ms=0)
    s = np.concatenate([rng.random(5000) ** 3, x, [-1.0, 0.0, 1.0, 2.0, np.nan, 5e-324]])
    np.testing.assert_array_equal(m.apply(s), np.interp(s, m.x, m.y))
    inner = m.with_meta(x=[0.1, 0.2, 0.9], y=[0.1, 0.3, 0.5])
    s = rng.uniform(-0.2, 1.2, 5000)
    np.testing.assert_array_equal(inner.apply(s), np.interp(s, inner.x, inner.y))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x": [0.0, 0.5, 0.4, 1.0]}, "strictly increasing"),
        ({"y": [0.0, 0.5, 0.4, 1.0]}, "non-decreasing"),
        ({"x": [0.0, 0.5, np.nan, 1.0]}, "NaN"),
        ({"y": [0.0, np.inf, 0.4, 1.0]}, "NaN or inf"),
        ({"x": [0.0, 0.5, 1.0]}, "lengths differ"),
        ({"x": [0.5], "y": [0.5]}, "knots"),
        ({"x": [-0.1, 0.01, 0.1, 1.0]}, r"\[0, 1\]"),
        ({"y": [0.0, 0.005, 0.12, 1.5]}, r"\[0, 1\]"),
        ({"n": float("nan")}, "n must be"),
        ({"map_version": 1.5}, "map_version must be an integer"),
        ({"map_version": -1}, "map_version must be >= 0"),
        ({"platt": (1.0, float("inf"))}, "platt"),
        ({"segment": {"k": 1}}, "segment"),
    ],
)
def test_invalid_maps_rejected(change, message):
    with pytest.raises(ValueError, match=message):
        make_map(**change)


def _doc(**change):
    doc = orjson.loads(make_map().to_json())
    doc.update(change)
    return orjson.dumps(doc)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be an object"),
        (_doc(schema=1), "unsupported schema"),
        (_doc(y=[0.0, 0.5, 0.4, 1.0]), "non-decreasing"),
        (_doc(x=[0.0, 0.5, 1.0]), "lengths differ"),
        (_doc(version="3"), "'version' must be int"),
        (_doc(n=True), "'n' must be float"),
        (_doc(platt={"a": 1.0}), "platt"),
        (orjson.dumps({"schema": 2}), "missing fields"),
        (_doc(x=[0.0, 0.1, "a", 1.0]), "numbers"),
    ],
)
def test_corrupted_json_rejected(data, message):
    with pytest.raises(ValueError, match=message):
        CalibrationMap.from_json(data)


def test_nan_in_json_rejected():
    # orjson cannot emit NaN, but a hand-edited document may carry it as a bare token or as null.
    bad = make_map().to_json().replace(b'"y":[0.0', b'"y":[null')
    with pytest.raises(ValueError):
        CalibrationMap.from_json(bad)
    with pytest.raises(ValueError):
        CalibrationMap.from_json(make_map().to_json().replace(b'"y":[0.0', b'"y":[NaN'))
