"""MapReader against a real Redis: fallback, pub/sub and periodic refresh, rejection, outages."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import orjson
import pytest
import redis as redis_lib

from recalibrators.serving.reader import MapReader
from streams.dev import devstack
from streams.pipeline.publisher import MapPublisher

IOS_SEARCH = {"platform": "ios", "placement": "search"}


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture
def reader_factory(redis_url):
    readers: list[MapReader] = []

    def make(**kwargs) -> MapReader:
        reader = MapReader(redis_url, **kwargs)
        readers.append(reader)
        return reader

    yield make
    for reader in readers:
        reader.close()


def test_full_load_on_start_and_calibrate(r, make_map, reader_factory):
    MapPublisher(r).publish(make_map(segment=IOS_SEARCH, lift=0.1))
    reader = reader_factory()
    assert reader.status()["synced"] and reader.status()["connected"]
    assert reader.calibrate_one("ctr", IOS_SEARCH, 0.5, model_version="v1") == pytest.approx(0.35)
    scores = np.array([0.0, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(reader.calibrate("ctr", IOS_SEARCH, scores, model_version="v1"), [0.0, 0.175, 0.35, 1.0])
    assert np.isnan(reader.calibrate_one("ctr", IOS_SEARCH, float("nan"), model_version="v1"))
    assert np.isnan(reader.calibrate("ctr", IOS_SEARCH, np.array([np.nan]), model_version="v1")[0])
    assert reader.misses == 0


def test_fallback_chain_and_misses(r, make_map, reader_factory):
    pub = MapPublisher(r)
    pub.publish_many([make_map(segment={"placement": "search"}, lift=0.1), make_map(model="cvr", lift=0.2)])
    reader = reader_factory(segment_by={"ctr": [["platform", "placement"], ["placement"]]})
    # ctr: no exact map, the configured coarser level serves it
    assert reader.lookup("ctr", IOS_SEARCH, "v1").segment_dict == {"placement": "search"}
    # cvr has no segment_by: exact, then the model-wide map
    assert reader.lookup("cvr", IOS_SEARCH, "v1").segment_dict == {}
    assert reader.calibrate_one("cvr", {}, 0.5, model_version="v1") == pytest.approx(0.45)
    # nothing at all: raw scores back, counted, no exception
    raw = np.array([0.1, 0.9])
    assert reader.calibrate("ctr", {"placement": "feed"}, raw, model_version="v1") is raw
    assert reader.calibrate_one("nomodel", {}, 0.3, model_version="v1") == 0.3
    assert (
        reader.calibrate_one("ctr", {"placement": 7}, 0.3, model_version="v1") == 0.3
    )  # odd input: a miss, not a crash
    assert reader.lookup("ctr", {"placement": "feed"}, "v1") is None
    assert reader.misses == 3

    pub.publish(make_map(segment=IOS_SEARCH, lift=0.2))  # a finer map appears: resolution follows
    eventually(lambda: reader.lookup("ctr", IOS_SEARCH, "v1").segment_dict == IOS_SEARCH)


def test_pubsub_refresh_is_fast(r, make_map, reader_factory):
    pub = MapPublisher(r)
    pub.publish(make_map(map_version=1))
    reader = reader_factory(check_interval=60)  # the periodic check cannot be what refreshes
    start = time.monotonic()
    pub.publish(make_map(map_version=2, lift=0.2))
    eventually(lambda: reader.lookup("ctr", {}, "v1").map_version == 2, timeout=1.0)
    assert time.monotonic() - start < 1.0
    assert reader.calibrate_one("ctr", {}, 0.5, model_version="v1") == pytest.approx(0.45)


def test_periodic_check_heals_missed_message_and_deletions(r, make_map, reader_factory):
    pub = MapPublisher(r)
    pub.publish_many([make_map(map_version=1), make_map(segment={"p": "x"})])
    reader = reader_factory(check_interval=0.2)
    # A write that bypasses the channel: only the index check can find it.
    r.set("recal:map:ctr:v1:*", make_map(map_version=2, lift=0.2).to_json())
    r.hset("recal:maps", "ctr:v1:*", 2)
    eventually(lambda: reader.lookup("ctr", {}, "v1").map_version == 2)
    r.hdel("recal:maps", "ctr:v1:p=x")
    r.delete("recal:map:ctr:v1:p=x")
    eventually(lambda: "ctr:v1:p=x" not in reader.ages())
    assert reader.lookup("ctr", {"p": "x"}, "v1").segment_dict == {}  # falls back to the model-wide map


@pytest.mark.parametrize(
    "bad",
    [
        b"not json",
        b'{"schema": 2}',
        # a syntactically valid map whose y decreases
        b'{"schema":2,"model":"ctr","model_version":"v1","segment":{},"version":2,"updated_at":0,'
        b'"method":"isotonic","n":1.0,"positives":1.0,"last_event_ms":0,"x":[0,1],"y":[0.9,0.1]}',
        b'{"schema":2,"model":"ctr","model_version":"v1","segment":{},"version":2,"updated_at":0,'
        b'"method":"isotonic","n":1.0,"positives":1.0,"last_event_ms":0,"x":[0,1],"y":[0.1,NaN]}',
        # valid, but it belongs to another key
        b'{"schema":2,"model":"cvr","model_version":"v1","segment":{},"version":2,"updated_at":0,'
        b'"method":"isotonic","n":1.0,"positives":1.0,"last_event_ms":0,"x":[0,1],"y":[0.1,0.9]}',
    ],
)
def test_corrupted_value_is_rejected_and_previous_map_keeps_serving(r, make_map, reader_factory, bad):
    MapPublisher(r).publish(make_map(map_version=1, lift=0.1))
    reader = reader_factory(check_interval=0.1)
    r.hset("recal:maps", "ctr:v1:p=junk", "not-a-version")  # a foreign index entry must not stall syncing
    r.set("recal:map:ctr:v1:*", bad)
    r.hset("recal:maps", "ctr:v1:*", 2)
    r.publish("recal:maps:updated", "ctr:v1:*:2")
    eventually(lambda: reader.status()["rejected"] >= 1)
    time.sleep(0.3)  # several periodic checks: the same bad version is not refetched nor recounted
    assert reader.status()["rejected"] == 1 and reader.status()["errors"] == 0
    assert reader.lookup("ctr", {}, "v1").map_version == 1
    assert reader.calibrate_one("ctr", {}, 0.5, model_version="v1") == pytest.approx(0.35)
    MapPublisher(r).publish(make_map(map_version=3, lift=0.2))  # a good newer version heals it
    eventually(lambda: reader.lookup("ctr", {}, "v1").map_version == 3)


def test_ages_and_status(r, make_map, reader_factory):
    now_ms = int(time.time() * 1000)
    MapPublisher(r).publish(make_map(updated_at=now_ms - 60_000))
    reader = reader_factory()
    age = reader.ages()["ctr:v1:*"]
    assert 59 < age.map_s < 70 and 0 <= age.sync_s < 5
    status = reader.status()
    assert status["maps"] == 1 and status["errors"] == 0 and status["last_error"] == ""


def test_redis_killed_and_restarted_reader_keeps_serving(make_map):
    server = devstack.redis_server().start()
    url = f"redis://127.0.0.1:{server.port}/0"
    client = redis_lib.Redis.from_url(url)
    try:
        MapPublisher(client).publish(make_map(map_version=1, lift=0.1))
        with MapReader(url, check_interval=0.2, socket_timeout=0.5, max_backoff=0.5) as reader:
            server.kill()
            eventually(lambda: not reader.status()["connected"] and reader.status()["errors"] > 0)
            assert reader.calibrate_one("ctr", {}, 0.5, model_version="v1") == pytest.approx(
                0.35
            )  # last map still serves
            assert reader.status()["last_error"]

            server = devstack.redis_server(server.port).start()  # same port, empty: Redis lost its data
            eventually(lambda: reader.status()["connected"])
            time.sleep(0.5)  # a few checks against the empty index
            assert reader.status()["unindexed"] == 1 and reader.lookup("ctr", {}, "v1") is not None

            MapPublisher(client).publish(make_map(segment={"p": "new"}, map_version=1, lift=0.2))
            eventually(lambda: reader.lookup("ctr", {"p": "new"}, "v1").segment_dict == {"p": "new"})
            assert reader.calibrate_one("ctr", {"p": "new"}, 0.5, model_version="v1") == pytest.approx(0.45)
            time.sleep(0.5)
            assert reader.calibrate_one("ctr", {}, 0.5, model_version="v1") == pytest.approx(
                0.35
            )  # not deleted, just unindexed
    finally:
        client.close()
        server.stop()


def test_reader_started_while_redis_is_down_serves_raw_then_loads(make_map):
    server = devstack.redis_server()
    url = f"redis://127.0.0.1:{server.port}/0"
    reader = MapReader(url, start_timeout=0.3, socket_timeout=0.5, max_backoff=0.3)
    try:
        assert not reader.status()["synced"]
        assert reader.calibrate_one("ctr", {}, 0.5, model_version="v1") == 0.5
        server.start()
        client = redis_lib.Redis.from_url(url)
        MapPublisher(client).publish(make_map(lift=0.1))
        client.close()
        assert reader.wait_synced(10)
        eventually(lambda: reader.lookup("ctr", {}, "v1") is not None)
    finally:
        reader.close()
        server.stop()


def test_request_threads_never_fail_while_the_cache_churns(r, make_map, reader_factory):
    pub = MapPublisher(r)
    pub.publish(make_map(map_version=0))
    reader = reader_factory(check_interval=0.05)
    done = threading.Event()
    failures: list[BaseException] = []

    def serve(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not done.is_set():
                segment = {"p": str(rng.integers(20))}
                p = reader.calibrate_one("ctr", segment, float(rng.random()), model_version="v1")
                assert 0.0 <= p <= 1.0
                assert reader.calibrate("ctr", segment, rng.random(16), model_version="v1").shape == (16,)
        except BaseException as exc:  # reported to the main thread
            failures.append(exc)

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for v in range(1, 101):
        pub.publish_many(make_map(segment={"p": str(i)}, map_version=v, lift=v / 1000) for i in range(0, 20, 3))
        pub.publish(make_map(map_version=v))
    eventually(lambda: reader.lookup("ctr", {"p": "3"}, "v1").map_version == 100)
    done.set()
    for t in threads:
        t.join()
    assert failures == []
    assert reader.status()["errors"] == 0


def test_slow_redis_times_out_in_the_background_only(r, redis_url, make_map):
    MapPublisher(r).publish(make_map(lift=0.1))

    def block_server() -> None:
        with redis_lib.Redis.from_url(redis_url) as client:
            client.execute_command("DEBUG", "SLEEP", 1.5)

    with MapReader(redis_url, check_interval=0.1, socket_timeout=0.3, max_backoff=0.2) as reader:
        blocker = threading.Thread(target=block_server)
        blocker.start()
        worst = 0.0
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            assert reader.calibrate_one("ctr", {}, 0.5, model_version="v1") == pytest.approx(0.35)
            worst = max(worst, time.perf_counter() - t0)
        assert reader.status()["errors"] > 0 and not reader.status()["connected"]
        assert "Timeout" in reader.status()["last_error"]
        assert worst < 0.2  # the request path never waits for Redis (socket timeout: 0.3 s)
        blocker.join()
        eventually(lambda: reader.status()["connected"])
        MapPublisher(r).publish(make_map(map_version=2))
        eventually(lambda: reader.lookup("ctr", {}, "v1").map_version == 2)


def test_lookup_stays_within_the_model_version(r, make_map, reader_factory):
    pub = MapPublisher(r)
    pub.publish_many(
        [
            make_map(segment=IOS_SEARCH, lift=0.1),  # v1 has the finest map
            make_map(model_version="v2", lift=0.2),  # v2 only a model-wide one
        ]
    )
    reader = reader_factory(segment_by={"ctr": [["placement"]]})
    assert reader.lookup("ctr", IOS_SEARCH, "v2").model_version == "v2"  # v2's coarse map, not v1's fine one
    assert reader.calibrate_one("ctr", IOS_SEARCH, 0.5, model_version="v2") == pytest.approx(0.45)
    assert reader.calibrate_one("ctr", IOS_SEARCH, 0.5, model_version="v1") == pytest.approx(0.35)
    raw = np.array([0.5])
    assert reader.calibrate("ctr", IOS_SEARCH, raw, model_version="v3") is raw  # no map of v3: raw
    assert reader.lookup("ctr", IOS_SEARCH, "v3") is None
    assert reader.status()["misses"] == 1 and reader.status()["fallbacks"] == 0


def test_fallback_version_is_explicit_and_counted_separately(r, make_map, reader_factory):
    MapPublisher(r).publish_many([make_map(lift=0.1), make_map(model_version="v2", lift=0.2)])
    reader = reader_factory(fallback_version={"ctr": "v2"})
    assert reader.calibrate_one("ctr", {}, 0.5, model_version="v3") == pytest.approx(0.45)  # v2's map
    assert reader.calibrate("ctr", {}, np.array([0.5]), model_version="v3")[0] == pytest.approx(0.45)
    assert reader.calibrate_one("ctr", {}, 0.5, model_version="v1") == pytest.approx(0.35)  # its own
    assert reader.calibrate_one("cvr", {}, 0.5, model_version="v3") == 0.5  # no fallback for cvr: raw
    assert (reader.fallbacks, reader.misses) == (2, 1)


def test_forward_compatible_maps_are_accepted(r, make_map, reader_factory):
    """A newer publisher's unknown field, or a map with only the required fields, must still serve."""
    doc = orjson.loads(make_map(lift=0.1).to_json())
    doc["calibrated_with"] = {"tool": "recal 3", "features": [1, 2]}
    r.set("recal:map:ctr:v1:*", orjson.dumps(doc))
    r.hset("recal:maps", "ctr:v1:*", 1)
    bare = orjson.loads(make_map(model_version="v2", lift=0.2).to_json())
    for name in ("last_event_ms", "updated_at", "n", "positives", "method", "platt", "metrics"):
        bare.pop(name, None)
    r.set("recal:map:ctr:v2:*", orjson.dumps(bare))
    r.hset("recal:maps", "ctr:v2:*", 1)
    r.hset("recal:maps", "ctr:*", 9)  # a schema-1 field of an older publisher: ignored, not rejected
    r.set("recal:map:ctr:*", b'{"schema": 1}')
    reader = reader_factory()
    assert reader.calibrate_one("ctr", {}, 0.5, model_version="v1") == pytest.approx(0.35)
    assert reader.calibrate_one("ctr", {}, 0.5, model_version="v2") == pytest.approx(0.45)
    assert reader.status()["rejected"] == 0 and reader.status()["maps"] == 2
