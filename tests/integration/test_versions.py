"""Model versions end to end, against the real broker and Redis: one worker, one model per scenario.

v1 -> v2 mid-stream; v2 with a 10% canary v3; a rollback to v2 after v3; junk versions beyond the cap;
the quality gate on equal-within-noise and on clearly-worse candidates. Each scenario has its own model
and its own stretch of event time (the join clock only moves forward); a `tick` model's impressions close
the windows. Map versions are label counts (fitting + held back), so counts are exact.
"""

from __future__ import annotations

import itertools
import random
import time
import uuid

import orjson
import pytest
import redis

from recalibrators.calibration_map import CalibrationMap
from recalibrators.serving.keys import MapField, RedisKeys
from recalibrators.serving.reader import MapReader
from streams.pipeline.join import is_holdout
from streams.pipeline.topics import ids_covering_partitions
from tests.support import kit
from tests.support.kit import WorkerProcess, consume_all, produce_then_ticks

PARTITIONS = 2
HOLDOUT = 20
HOUR = 3_600_000
T0 = 1_790_000_000_000


MODELS = """
[models.rb]
version_idle = "30s"

[models.capped]
max_versions = 2

[models.gate]
max_loss_increase = 0.01
gate_min_z = 2.0

[models.gate2]
half_life = "1m"
"""


def config_text(ns: str) -> str:
    return kit.config_text(ns, MODELS, worker={"holdout_percent": HOLDOUT})


class Traffic:
    """Impressions of one model (one prediction each), their clicks, and the expected label counts."""

    def __init__(self, ns: str, model: str) -> None:
        self.ns, self.model = ns, model
        self.messages: list[tuple[str, str | None, bytes]] = []
        self.tick_messages: list[tuple[str, str | None, bytes]] = []  # sent after the traffic is acknowledged
        self.labels: dict[tuple[str, str], int] = {}  # (model_version, segment key) -> examples
        self._ids = itertools.count()

    def impressions(self, version: str, n: int, t0: int, click_every: int = 4, placement: str = "search") -> int:
        for i in range(n):
            self.add(version, t0 + 10 * i, i % click_every == 0, placement)
        return t0 + 10 * n

    def add(self, version: str, ts: int, clicked: bool, placement: str = "search", iid: str | None = None) -> str:
        iid = iid or f"{self.ns}-{self.model}-{next(self._ids)}"
        imp = {
            "impression_id": iid,
            "ts": ts,
            "segment": {"placement": placement, "platform": "ios"},
            "predictions": [{"model": self.model, "version": version, "score": 0.2}],
        }
        self.messages.append((f"{self.ns}-impressions", iid, orjson.dumps(imp)))
        if clicked:
            click = {"click_id": f"c-{iid}", "impression_id": iid, "ts": ts + 1_000}
            self.messages.append((f"{self.ns}-clicks", iid, orjson.dumps(click)))
        for seg in (f"placement={placement}", "*"):
            self.labels[(version, seg)] = self.labels.get((version, seg), 0) + 1
        return iid

    def ticks(self, ts: int) -> None:
        """Impressions of a `tick` model on every partition: the join clock passes every window before ts."""
        for iid in ids_covering_partitions(f"{self.ns}-{self.model}-tick-{ts}", PARTITIONS):
            imp = {
                "impression_id": iid,
                "ts": ts,
                "segment": {},
                "predictions": [{"model": "tick", "version": "t", "score": 0.1}],
            }
            self.tick_messages.append((f"{self.ns}-impressions", iid, orjson.dumps(imp)))

    def send(self, broker: str) -> None:
        produce_then_ticks(broker, self.messages, self.tick_messages)
        self.messages, self.tick_messages = [], []


@pytest.fixture(scope="module")
def versioned(stack, tmp_path_factory):
    ns = f"v{uuid.uuid4().hex[:8]}"
    path = tmp_path_factory.mktemp("versions") / "recal.toml"
    path.write_text(config_text(ns))
    worker = WorkerProcess(path, stack, path.parent / "worker.log")
    worker.wait_ready()
    yield ns, worker
    worker.stop()


def read(stack, ns: str, model: str, version: str, segment: str) -> CalibrationMap | None:
    raw = redis.Redis.from_url(stack.redis_url).get(RedisKeys(ns).map(str(MapField(model, version, segment))))
    return CalibrationMap.from_json(raw) if raw else None


def wait_counts(stack, ns, worker, traffic: Traffic, timeout_s: float = 60.0) -> dict[tuple[str, str], CalibrationMap]:
    """Every expected (model_version, segment) map in Redis with exactly the expected label count."""

    def done(_stats) -> bool:
        for (version, seg), n in traffic.labels.items():
            m = read(stack, ns, traffic.model, version, seg)
            if m is None or m.map_version != n:
                return False
        return True

    worker.wait_for(done, timeout_s, f"{traffic.model} maps with counts {traffic.labels}")
    return {key: read(stack, ns, traffic.model, *key) for key in traffic.labels}


def versions_hash(stack, ns: str, model: str) -> dict[str, dict]:
    raw = redis.Redis.from_url(stack.redis_url).hgetall(RedisKeys(ns).versions(model))
    return {k.decode(): orjson.loads(v) for k, v in raw.items()}


def test_v1_to_v2_mid_stream(stack, versioned):
    ns, worker = versioned
    traffic = Traffic(ns, "ctr")
    t = traffic.impressions("v1", 200, T0)
    traffic.ticks(t + 60_000)
    traffic.send(stack.broker_url)
    wait_counts(stack, ns, worker, traffic)  # v1 has been serving when v2 rolls out
    t = traffic.impressions("v2", 200, t + 61_000)
    traffic.ticks(t + 60_000)
    traffic.send(stack.broker_url)
    maps = wait_counts(stack, ns, worker, traffic)
    assert {k for k in maps} == {("v1", "*"), ("v1", "placement=search"), ("v2", "*"), ("v2", "placement=search")}
    assert maps[("v2", "*")].model_version == "v2" and maps[("v1", "*")].model_version == "v1"
    assert maps[("v2", "*")].prior_dict["model_version"] == "v1"  # warm start, named in the metadata
    assert maps[("v1", "*")].prior is None
    states = versions_hash(stack, ns, "ctr")
    assert {v: s["state"] for v, s in states.items()} == {"v1": "live", "v2": "live"}
    assert states["v2"]["examples"] == 200 and states["v1"]["first_event_ms"] < states["v2"]["first_event_ms"]
    with MapReader(stack.redis_url, prefix=ns, segment_by={"ctr": [["placement"]]}) as reader:
        seg = {"placement": "search", "platform": "ios"}
        assert reader.lookup("ctr", seg, "v2").model_version == "v2"
        assert reader.lookup("ctr", seg, "v1").model_version == "v1"
        assert reader.calibrate_one("ctr", seg, 0.2, model_version="v9") == 0.2 and reader.misses == 1


def test_v2_with_a_10_percent_canary_v3(stack, versioned):
    ns, worker = versioned
    traffic = Traffic(ns, "canary")
    t = traffic.impressions("v2", 100, T0 + HOUR)
    for i in range(300):
        traffic.add("v3" if i % 10 == 0 else "v2", t + 10 * i, i % 4 == 0, placement="feed")
    traffic.ticks(t + 60_000)
    traffic.send(stack.broker_url)
    maps = wait_counts(stack, ns, worker, traffic)
    assert maps[("v2", "*")].map_version == 370 and maps[("v3", "*")].map_version == 30
    assert maps[("v3", "placement=feed")].model_version == "v3"  # the canary has its own maps, v2 keeps its
    assert versions_hash(stack, ns, "canary").keys() == {"v2", "v3"}


def test_rollback_to_v2_after_v3(stack, versioned):
    ns, worker = versioned
    traffic = Traffic(ns, "rb")
    t = traffic.impressions("v2", 100, T0 + 2 * HOUR)
    t = traffic.impressions("v3", 100, t + 1_000)
    t = traffic.impressions("v3", 100, t + 40_000)  # v2 silent for > version_idle (30 s): retired
    traffic.ticks(t + 60_000)
    traffic.send(stack.broker_url)
    before = wait_counts(stack, ns, worker, traffic)
    worker.wait_for(lambda s: versions_hash(stack, ns, "rb").get("v2", {}).get("state") == "retired", 30, "v2 retired")
    v3_map = before[("v3", "*")]

    t = traffic.impressions("v2", 100, t + 120_000, click_every=2)  # the rollback: v2 serves again
    traffic.ticks(t + 60_000)
    traffic.send(stack.broker_url)
    after = wait_counts(stack, ns, worker, traffic)
    assert after[("v2", "*")].map_version == 200 and after[("v2", "*")].model_version == "v2"
    assert read(stack, ns, "rb", "v3", "*") == v3_map  # v3's map untouched by v2's traffic
    worker.wait_for(lambda s: versions_hash(stack, ns, "rb")["v2"]["state"] == "live", 30, "v2 live again")
    with MapReader(stack.redis_url, prefix=ns) as reader:
        assert reader.lookup("rb", {}, "v2").map_version == 200


def test_junk_versions_beyond_the_cap_are_dead_lettered(stack, versioned):
    ns, worker = versioned
    traffic = Traffic(ns, "capped")
    t = traffic.impressions("v1", 50, T0 + 3 * HOUR)
    t = traffic.impressions("v2", 50, t)
    junk = [traffic.add(f"junk-{k}", t + k, True) for k in range(5)]
    for k in range(5):  # the labels they would have had: none
        for seg in ("placement=search", "*"):
            del traffic.labels[(f"junk-{k}", seg)]
    t = traffic.impressions("v1", 50, t + 100)
    traffic.ticks(t + 60_000)
    traffic.send(stack.broker_url)
    maps = wait_counts(stack, ns, worker, traffic)
    assert maps[("v1", "*")].map_version == 100 and maps[("v2", "*")].map_version == 50
    letters = consume_all(stack.broker_url, f"{ns}-deadletter", len(junk))
    capped = [r for r in letters if dict(r.headers)["recal-reason"] == b"too_many_versions"]
    assert sorted(r.key.decode() for r in capped) == sorted(junk)
    assert worker.stats()["dead_letters"]["too_many_versions"] == len(junk)
    assert versions_hash(stack, ns, "capped").keys() == {"v1", "v2"}
    fields = {f.decode() for f in redis.Redis.from_url(stack.redis_url).hkeys(RedisKeys(ns).index)}
    assert not any(f.startswith("capped:junk") for f in fields)


def _gate_ids(traffic: Traffic, held: bool, n: int) -> list[str]:
    """Impression ids the join holds back (or fits on), so each side's labels are chosen by the test."""
    ids = (f"{traffic.ns}-{traffic.model}-{next(traffic._ids)}" for _ in itertools.count())
    return list(itertools.islice((i for i in ids if is_holdout(i, HOLDOUT) == held), n))


def test_gate_equal_within_noise_publishes(stack, versioned):
    ns, worker = versioned
    traffic = Traffic(ns, "gate")
    rng = random.Random(3)
    t = T0 + 4 * HOUR
    for _ in range(3):  # the same 20% CTR three times: each batch's candidate differs from the live map by noise
        for i in range(400):
            traffic.add("v1", t + 10 * i, rng.random() < 0.2)
        t += 4_000
        traffic.ticks(t + 60_000)
        traffic.send(stack.broker_url)
        wait_counts(stack, ns, worker, traffic)  # published: the map version reached every label
        t += 120_000
    assert "gate:v1:*" not in worker.stats()["gate_refused"]


def test_gate_holds_a_clearly_worse_candidate_then_publishes_when_it_is_not(stack, versioned):
    """gate2 fits with a 1 min half-life, so the fitted side forgets; the holdout (1 h) does not."""
    ns, worker = versioned
    traffic = Traffic(ns, "gate2")
    t = T0 + 5 * HOUR
    for i, iid in enumerate(_gate_ids(traffic, False, 800) + _gate_ids(traffic, True, 200)):
        traffic.add("v1", t + 10 * i, i % 20 == 0, iid=iid)  # 5% CTR on both sides
    t += 10_000
    traffic.ticks(t + 60_000)
    traffic.send(stack.broker_url)
    first = wait_counts(stack, ns, worker, traffic)[("v1", "*")]

    # The fitted side turns to 50% CTR while the held-back side stays at 5%: a candidate fitted on this is
    # clearly worse on the held-back examples, and is held.
    t += 120_000
    for i, iid in enumerate(_gate_ids(traffic, False, 800) + _gate_ids(traffic, True, 800)):
        traffic.add("v1", t + 5 * i, (i % 2 == 0) if i < 800 else (i % 20 == 0), iid=iid)
    t += 8_000
    traffic.ticks(t + 60_000)
    traffic.send(stack.broker_url)
    stats = worker.wait_for(lambda s: "gate2:v1:*" in s.get("gate_refused", {}), 60, "the gate holds gate2")
    assert "significantly worse" in stats["gate_refused"]["gate2:v1:*"]
    time.sleep(3)  # several refreshes later: still held
    held = read(stack, ns, "gate2", "v1", "*")
    assert first.map_version <= held.map_version < 1000 + 1600
    stats = worker.stats()
    assert stats["gate_held"] >= 1 and "gate2:v1:*" in stats["gate_refused"]

    # Ten half-lives later, 5% on both sides again: the candidate is no longer worse, and it is published.
    t += 600_000
    for i, iid in enumerate(_gate_ids(traffic, False, 2_000) + _gate_ids(traffic, True, 400)):
        traffic.add("v1", t + 5 * i, i % 20 == 0, iid=iid)
    t += 12_000
    traffic.ticks(t + 60_000)
    traffic.send(stack.broker_url)
    final = wait_counts(stack, ns, worker, traffic, timeout_s=90)[("v1", "*")]
    assert final.map_version == 1000 + 1600 + 2400
    assert "gate2:v1:*" not in worker.stats()["gate_refused"]
