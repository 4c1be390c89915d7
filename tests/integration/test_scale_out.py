"""Scale-out: two `recal worker` processes in one consumer group (4 partitions); one of them is stopped
mid-stream (SIGTERM, or SIGKILL) and the survivor takes over its partitions. The final maps must hold
exactly the single-worker label counts, map versions in Redis must only ever increase, and a replay of
the labeled topic (which then contains superseded records after a SIGKILL) must rebuild the same maps."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path

import orjson
import pytest
import redis

from recalibrators.serving.keys import map_field
from streams.pipeline.config import load_config
from streams.pipeline.publisher import MapPublisher
from streams.pipeline.topics import ids_covering_partitions
from streams.replay import normalized_json, replay_labeled
from tests.integration.test_pipeline import traffic
from tests.support.kit import T0, config_text, impression, produce, produce_then_ticks, wait_for_map

PARTITIONS = 4


class VersionWatch(threading.Thread):
    """Polls the map index and records every version decrease it sees."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(redis_url)
        self.index = f"{prefix}:maps"
        self.seen: dict[bytes, int] = {}
        self.decreases: list[tuple[bytes, int, int]] = []
        self.polls = 0
        self.done = threading.Event()

    def run(self) -> None:
        while True:
            stopping = self.done.wait(0.05)
            for field, version in self.client.hgetall(self.index).items():
                v = int(version)
                if v < self.seen.get(field, -1):
                    self.decreases.append((field, self.seen[field], v))
                self.seen[field] = max(v, self.seen.get(field, -1))
            self.polls += 1
            if stopping:  # one last poll after `done`: the maps the test waited for are in the index by then
                return


def events_in(*workers) -> int:
    return sum(sum(w.stats().get("events_in", {}).values()) for w in workers if w.proc.poll() is None)


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_two_workers_one_stopped_mid_stream_exact_counts(stack, start_worker, tmp_path: Path, stop: str):
    ns = f"s{uuid.uuid4().hex[:8]}"
    scenario = traffic(ns)
    text = config_text(ns, worker={"partitions": PARTITIONS})
    first, second = start_worker(text), start_worker(text)
    first.wait_ready(90)
    second.wait_ready(90)
    second.wait_for(lambda s: len(s.get("partitions", [])) == PARTITIONS // 2, 60, "the group to split 2 + 2")
    watch = VersionWatch(stack.redis_url, ns)
    watch.start()

    half = len(scenario.messages) // 2
    produce(stack.broker_url, scenario.messages[:half])
    first.wait_for(lambda s: events_in(first, second) >= half, 30, "first half consumed by both")
    second.wait_for(lambda s: s["snapshots"] >= PARTITIONS, 30, "a checkpoint on the worker to be stopped")
    if stop == "sigterm":
        second.stop()
    else:
        second.kill()

    ticks = [
        (f"{ns}-impressions", iid, orjson.dumps(impression(iid, T0 + 60_000, placement="tick")))
        for iid in ids_covering_partitions(f"{ns}-tick", PARTITIONS)
    ]
    produce_then_ticks(stack.broker_url, scenario.messages[half:], ticks)
    first.wait_for(lambda s: len(s.get("partitions", [])) == PARTITIONS, 60, "the survivor to own every partition")
    live_ctr = wait_for_map(stack, ns, "ctr", "*", scenario.n, scenario.ctr_positives, first, timeout_s=60)
    wait_for_map(stack, ns, "ctr", "placement=search", scenario.n, scenario.ctr_positives, first, timeout_s=30)
    live_cvr = wait_for_map(stack, ns, "cvr", "*", scenario.cvr_examples, scenario.cvr_positives, first, timeout_s=30)
    watch.done.set()
    watch.join()
    assert watch.polls > 10 and watch.seen
    assert watch.decreases == []

    # exactly the single-worker counts: nothing lost, nothing counted twice
    assert live_ctr.n == pytest.approx(scenario.n, rel=1e-9)
    assert live_ctr.positives == pytest.approx(scenario.ctr_positives, rel=1e-9)
    assert live_cvr.positives == pytest.approx(scenario.cvr_positives, rel=1e-9)

    # the labeled topic replays to the same counts (superseded records dropped after a SIGKILL)
    path = tmp_path / "scale.toml"
    path.write_text(text)
    config = load_config(path, broker=stack.broker_url, redis=stack.redis_url)
    result = asyncio.run(replay_labeled(config))
    replayed = {map_field(m): m for m in result.maps}
    assert (
        round(replayed["ctr:v1:*"].n) == scenario.n and round(replayed["ctr:v1:*"].positives) == scenario.ctr_positives
    )
    assert round(replayed["cvr:v1:*"].positives) == scenario.cvr_positives
    live = MapPublisher(redis.Redis.from_url(stack.redis_url), prefix=ns).list_maps()
    assert normalized_json(replayed["ctr:v1:*"]) == normalized_json(live["ctr:v1:*"])
