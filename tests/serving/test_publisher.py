"""MapPublisher against a real Redis: fencing, atomicity, promote, rollback, retries."""

from __future__ import annotations

import threading

import pytest
import redis as redis_lib
from redis.backoff import NoBackoff
from redis.retry import Retry

from recalibrators.calibration_map import CalibrationMap
from recalibrators.serving.backoff import Backoff
from recalibrators.serving.keys import MapField
from streams.dev import devstack
from streams.pipeline.publisher import MapPublisher, RetryingPublisher

SEG = {"platform": "ios", "placement": "search"}
FIELD = "ctr:v1:placement=search|platform=ios"


def subscribe(r: redis_lib.Redis, channel: str = "recal:maps:updated") -> redis_lib.client.PubSub:
    ps = r.pubsub(ignore_subscribe_messages=True)
    ps.subscribe(channel)
    ps.get_message(timeout=1)  # the subscribe confirmation
    return ps


def messages(ps: redis_lib.client.PubSub) -> list[str]:
    out = []
    while (msg := ps.get_message(timeout=0.2)) is not None:
        out.append(msg["data"].decode())
    return out


def test_publish_writes_key_index_history_and_notifies(r, make_map):
    ps = subscribe(r)
    pub = MapPublisher(r)
    result = pub.publish(make_map(segment=SEG, map_version=3))
    assert (result.field, result.status, result.map_version, result.published) == (FIELD, "published", 3, True)
    assert CalibrationMap.from_json(r.get(f"recal:map:{FIELD}")) == make_map(segment=SEG, map_version=3)
    assert r.hgetall("recal:maps") == {FIELD.encode(): b"3"}
    assert r.llen(f"recal:hist:{FIELD}") == 1
    assert messages(ps) == [f"{FIELD}:3"]


def test_older_or_equal_version_is_refused_and_changes_nothing(r, make_map):
    pub = MapPublisher(r)
    pub.publish(make_map(map_version=5, lift=0.1))
    ps = subscribe(r)
    for version in (5, 4, 0):
        result = pub.publish(make_map(map_version=version))
        assert (result.status, result.map_version) == ("refused_stale", 5)
    assert CalibrationMap.from_json(r.get("recal:map:ctr:v1:*")).map_version == 5
    assert r.llen("recal:hist:ctr:v1:*") == 1
    assert messages(ps) == []


def test_observers_never_see_a_partial_publish(r, redis_url, make_map):
    """Whenever a notification arrives, or whenever anyone looks, index and map key agree."""
    ps = subscribe(r)
    done = threading.Event()
    torn: list[tuple[bytes, int]] = []

    def observe() -> None:
        client = redis_lib.Redis.from_url(redis_url)
        while not done.is_set():
            pipe = client.pipeline(transaction=True)
            index, raw = pipe.hget("recal:maps", "ctr:v1:*").get("recal:map:ctr:v1:*").execute()
            if raw is not None and CalibrationMap.from_json(raw).map_version != int(index):
                torn.append((index, CalibrationMap.from_json(raw).map_version))
        client.close()

    observer = threading.Thread(target=observe)
    observer.start()
    pub = MapPublisher(r)
    for v in range(1, 301):
        pub.publish(make_map(map_version=v))
    done.set()
    observer.join()
    assert torn == []
    notified = [int(m.rsplit(":", 1)[1]) for m in messages(ps)]
    assert notified == list(range(1, 301))


def test_wrong_type_key_fails_before_any_write(r, make_map):
    r.set("recal:hist:ctr:v1:*", "not a list")
    result = MapPublisher(r).publish(make_map())
    assert result.status == "error" and "WRONGTYPE" in result.error
    assert r.exists("recal:map:ctr:v1:*", "recal:maps") == 0


def test_history_is_trimmed_and_can_be_disabled(r, make_map):
    pub = MapPublisher(r, history=2)
    for v in range(1, 5):
        pub.publish(make_map(map_version=v))
    versions = [CalibrationMap.from_json(raw).map_version for raw in r.lrange("recal:hist:ctr:v1:*", 0, -1)]
    assert versions == [4, 3]
    MapPublisher(r, prefix="nohist", history=0).publish(make_map())
    assert r.exists("nohist:hist:ctr:v1:*") == 0 and r.exists("nohist:map:ctr:v1:*") == 1


def test_model_and_model_version_are_escaped_and_never_empty(r, make_map):
    result = MapPublisher(r).publish(make_map(model="a:b", model_version="2026-01-01T00:00"))
    assert result.field == "a%3Ab:2026-01-01T00%3A00:*" and result.published
    assert MapPublisher(r).get_map(MapField("a:b", "2026-01-01T00:00", "*")).model == "a:b"
    with pytest.raises(ValueError, match="model_version"):
        MapPublisher(r).publish(make_map(model_version=""))


def test_one_bad_key_never_blocks_the_others(r, make_map, caplog):
    """A WRONGTYPE key or a non-numeric index field: that map is an `error` result, logged and skipped;
    the maps around it in the same pipeline are published."""
    r.set("recal:hist:ctr:v1:p=1", "not a list")
    r.hset("recal:maps", "ctr:v1:p=2", "not-a-version")
    pub = MapPublisher(r)
    maps = [make_map(segment={"p": str(i)}, map_version=3) for i in range(4)]
    with caplog.at_level("ERROR", logger="recal.publish"):
        results = pub.publish_many(maps)
    assert [res.status for res in results] == ["published", "error", "error", "published"]
    assert "WRONGTYPE" in results[1].error and "BADINDEX" in results[2].error
    assert sum("skipped" in rec.getMessage() for rec in caplog.records) == 2
    retrying = RetryingPublisher(pub)
    retrying.submit([make_map(segment={"p": "1"}, map_version=4), make_map(segment={"p": "9"}, map_version=4)])
    assert [res.status for res in retrying.flush()] == ["error", "published"]
    assert retrying.pending == {} and retrying.errors == 1 and retrying.failures == 0
    assert pub.rollback("ctr", "v1", "p=2").status == "error"  # a foreign index value is not ours to bump


def test_versions_hash(r):
    pub = MapPublisher(r)
    pub.publish_versions("a:b", {"v 1": {"first_event_ms": 1, "last_event_ms": 2, "examples": 3, "state": "live"}})
    assert r.hkeys("recal:versions:a%3Ab") == [b"v 1"]
    r.hset("recal:versions:a%3Ab", "junk", "{not json")
    assert pub.list_versions("a:b") == {
        "v 1": {"first_event_ms": 1, "last_event_ms": 2, "examples": 3, "state": "live"}
    }


def test_publish_many_one_pipeline_mixed_results(r, make_map):
    pub = MapPublisher(r)
    pub.publish(make_map(segment={"p": "0"}, map_version=10))
    maps = [make_map(segment={"p": str(i)}, map_version=2) for i in range(1200)]  # spans several chunks
    results = pub.publish_many(maps)
    assert [res.status for res in results[:2]] == ["refused_stale", "published"]
    assert sum(res.published for res in results) == 1199
    assert r.hlen("recal:maps") == 1200


def test_concurrent_publishers_converge_on_newest(r, redis_url, make_map):
    def worker(offset: int) -> None:
        client = redis_lib.Redis.from_url(redis_url)
        pub = MapPublisher(client)
        for v in range(offset, 200, 4):  # interleaved, each thread in its own order
            pub.publish(make_map(map_version=v, lift=v / 1000))
        client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert r.hget("recal:maps", "ctr:v1:*") == b"199"
    assert CalibrationMap.from_json(r.get("recal:map:ctr:v1:*")).map_version == 199
    history = [CalibrationMap.from_json(raw).map_version for raw in r.lrange("recal:hist:ctr:v1:*", 0, -1)]
    assert history == sorted(history, reverse=True) and history[0] == 199


def test_promote_fenced_and_forced(r, make_map):
    shadow, live = MapPublisher(r, prefix="shadow"), MapPublisher(r)
    shadow.publish_many([make_map(segment={"p": "a"}, map_version=3), make_map(segment={"p": "b"}, map_version=1)])
    r.hset("shadow:maps", "ctr:v1:p=bad", 1)
    r.set("shadow:map:ctr:v1:p=bad", b"{not json")
    live.publish(make_map(segment={"p": "b"}, map_version=7, lift=0.2))

    assert live.promote("shadow") == {"published": 1, "refused_stale": 1, "invalid": 1, "error": 0}
    assert live.get_map(MapField("ctr", "v1", "p=a")).map_version == 3
    assert live.get_map(MapField("ctr", "v1", "p=b")).map_version == 7

    ps = subscribe(r)
    assert live.promote("shadow", force=True) == {"published": 2, "refused_stale": 0, "invalid": 1, "error": 0}
    forced = live.get_map(MapField("ctr", "v1", "p=b"))
    assert forced.map_version == 8 and forced.apply_one(0.5) == 0.25  # the shadow map's content
    assert live.get_map(MapField("ctr", "v1", "p=a")).map_version == 4
    assert sorted(messages(ps)) == ["ctr:v1:p=a:4", "ctr:v1:p=b:8"]


def test_rollback_restores_previous_as_newer_version(r, make_map):
    pub = MapPublisher(r)
    for v, lift in ((1, 0.0), (2, 0.1), (3, 0.2)):
        pub.publish(make_map(segment=SEG, map_version=v, lift=lift))
    result = pub.rollback("ctr", "v1", "placement=search|platform=ios")
    assert (result.status, result.map_version) == ("published", 4)
    restored = pub.get_map(MapField("ctr", "v1", "placement=search|platform=ios"))
    assert restored.map_version == 4 and restored.apply_one(0.5) == pytest.approx(0.35)  # content of v2
    assert pub.rollback("ctr", "v1", "placement=search|platform=ios", steps=3).map_version == 5  # back to v1
    assert pub.get_map(MapField("ctr", "v1", "placement=search|platform=ios")).apply_one(0.5) == 0.25
    with pytest.raises(LookupError):
        pub.rollback("ctr", "v1", "placement=search|platform=ios", steps=9)
    with pytest.raises(LookupError):
        pub.rollback("ctr", "v1", "p=unknown")


def test_list_and_get(r, make_map):
    pub = MapPublisher(r)
    pub.publish_many([make_map(segment={"p": "a"}), make_map(model="cvr")])
    r.hset("recal:maps", "ctr:v1:p=gone", 1)
    listed = pub.list_maps()
    assert list(listed) == ["ctr:v1:p=a", "ctr:v1:p=gone", "cvr:v1:*"]
    assert listed["ctr:v1:p=gone"] is None and listed["cvr:v1:*"].model == "cvr"
    assert pub.get_map(MapField("ctr", "v1", "p=nope")) is None
    r.set("recal:map:ctr:v1:p=a", b"[]")
    with pytest.raises(ValueError):
        pub.get_map(MapField("ctr", "v1", "p=a"))


def test_backoff_is_capped_and_jittered():
    b = Backoff(base=0.1, cap=1.0)
    delays = [b.next_delay() for _ in range(40)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(0.5 <= d <= 1.0 for d in delays[5:])
    b.reset()
    assert b.next_delay() <= 0.1


def test_retrying_publisher_survives_outage(make_map):
    server = devstack.redis_server()  # not started yet: the first attempts fail
    client = redis_lib.Redis(port=server.port, socket_timeout=1, retry=Retry(NoBackoff(), 0))
    now = [0.0]
    retrying = RetryingPublisher(MapPublisher(client), Backoff(base=1.0, cap=4.0), clock=lambda: now[0])
    retrying.submit([make_map(map_version=1), make_map(map_version=2, lift=0.1), make_map(segment={"p": "x"})])
    assert retrying.flush() == [] and retrying.failures == 1
    assert retrying.flush() == [] and retrying.failures == 1  # backing off: no attempt
    assert len(retrying.pending) == 2  # newest per key
    server.start()
    try:
        now[0] += 10
        results = retrying.flush()
        assert sorted((res.field, res.map_version) for res in results) == [("ctr:v1:*", 2), ("ctr:v1:p=x", 1)]
        assert retrying.pending == {} and retrying.published == 2 and retrying.failures == 1
        assert retrying.last_error.startswith("ConnectionError")
    finally:
        client.close()
        server.stop()
