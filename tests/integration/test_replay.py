"""Replay against the real broker and Redis: byte-identical maps (live vs replayed, replayed twice, resumed
after an interruption), raw-topic replay counts, and event-time offsets (the broker's answer, checked)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid

import redis
from aiokafka import AIOKafkaProducer, TopicPartition

from recalibrators.calibration_map import CalibrationMap
from recalibrators.serving.keys import map_field
from streams.pipeline.config import load_config
from streams.pipeline.publisher import MapPublisher
from streams.replay import Progress, ReplayRange, normalized_json, offset_for_time, replay_labeled, replay_raw
from streams.replay.offsets import replay_consumer
from tests.integration.test_pipeline import traffic
from tests.support.kit import T0, config_text, produce_then_ticks, wait_for_map


def stable_maps(redis_url: str, prefix: str, settle_s: float = 2.0) -> dict[str, CalibrationMap]:
    """The namespace's maps once nothing changed for `settle_s` (the worker's last refreshes are done)."""
    client = redis.Redis.from_url(redis_url)
    last: dict = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        current = client.hgetall(f"{prefix}:maps")
        if current and current == last:
            break
        last = current
        time.sleep(settle_s)
    return {k: v for k, v in MapPublisher(client, prefix=prefix).list_maps().items() if v is not None}


def normalized(maps) -> dict[str, bytes]:
    return {k: normalized_json(m) for k, m in maps.items()}


class StopAfter(Progress):
    """Sets `stop` once `after` records were read: an interruption at a deterministic point."""

    def __init__(self, stop: asyncio.Event, after: int) -> None:
        super().__init__(0, every=3600)
        self.stop, self.after = stop, after

    def update(self, records: int, examples: int, force: bool = False) -> None:
        super().update(records, examples, force)
        if self.done >= self.after:
            self.stop.set()


def test_replayed_maps_are_byte_identical_to_live_ones(stack, start_worker, tmp_path):
    ns = f"r{uuid.uuid4().hex[:8]}"
    scenario = traffic(ns)
    text = config_text(ns)
    worker = start_worker(text)
    worker.wait_ready()
    produce_then_ticks(stack.broker_url, scenario.messages, scenario.ticks(T0 + 60_000))
    wait_for_map(stack, ns, "ctr", "*", scenario.n, scenario.ctr_positives, worker)
    wait_for_map(stack, ns, "cvr", "*", scenario.cvr_examples, scenario.cvr_positives, worker)
    live = stable_maps(stack.redis_url, ns)
    assert {"ctr:v1:*", "ctr:v1:placement=search", "cvr:v1:*", "cvr:v1:placement=search"} <= set(live)

    path = tmp_path / "recal.toml"
    path.write_text(text)
    config = load_config(path, broker=stack.broker_url, redis=stack.redis_url)

    # 1. in process, into a namespace of its own
    result = asyncio.run(replay_labeled(config))
    replayed = {map_field(m): m for m in result.maps}
    assert normalized(replayed) == normalized(live)
    assert result.examples == scenario.n + scenario.cvr_examples

    # 2. through the CLI, twice (and the CLI's summary table)
    for run in ("a", "b"):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "streams.cli.main",
                "replay",
                "--config",
                str(path),
                "--broker",
                stack.broker_url,
                "--redis",
                stack.redis_url,
                "--prefix",
                f"{ns}-replay-{run}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert "ctr      v1         *" in out.stdout and "replay:" in out.stderr
        assert normalized(stable_maps(stack.redis_url, f"{ns}-replay-{run}", 0.1)) == normalized(live)

    # 3. interrupted, then resumed from the checkpoint
    checkpoint = str(tmp_path / "replay.ckpt")

    async def interrupted():
        stop = asyncio.Event()
        return await replay_labeled(config, checkpoint=checkpoint, progress=StopAfter(stop, 1), stop=stop)

    first = asyncio.run(interrupted())
    assert first.interrupted and not first.maps
    resumed = asyncio.run(replay_labeled(config, checkpoint=checkpoint))
    assert not resumed.interrupted
    assert {normalized_json(m) for m in resumed.maps} == set(normalized(live).values())

    # 4. promote: the live maps have the same versions, so only --force replaces them (as version + 1)
    client = redis.Redis.from_url(stack.redis_url)
    counts = MapPublisher(client, prefix=ns).promote(f"{ns}-replay-a", ns)
    assert counts["published"] == 0 and counts["refused_stale"] == len(live)

    # 5. from the raw topics: the same labels (counts), batch boundaries of its own
    raw = asyncio.run(replay_raw(config))
    by_key = {map_field(m): m for m in raw.maps}
    for key in ("ctr:v1:*", "ctr:v1:placement=search", "cvr:v1:*"):
        assert round(by_key[key].n) == round(live[key].n) and round(by_key[key].positives) == round(live[key].positives)

    # 6. an event-time range on the labeled topic (the examples' ts column), one model: impressions
    # i = 0..199 are at T0 + 10 i, so [T0, T0 + 1 s) holds the first 100 of them
    result = asyncio.run(replay_labeled(config, ReplayRange(from_ms=T0, to_ms=T0 + 1_000), models={"ctr"}))
    maps = {map_field(m): m for m in result.maps}
    assert set(maps) == {"ctr:v1:*", "ctr:v1:placement=search"}
    assert round(maps["ctr:v1:*"].n) == 100 and round(maps["ctr:v1:*"].positives) == 25


def test_offsets_for_event_times(stack):
    topic = f"ts-{uuid.uuid4().hex[:8]}"

    async def run():
        producer = AIOKafkaProducer(bootstrap_servers=stack.broker_url)
        await producer.start()
        try:
            for i in range(40):
                await producer.send_and_wait(topic, b"x", partition=0, timestamp_ms=T0 + i * 1_000)
        finally:
            await producer.stop()
        config = load_config(None, env={}, broker=stack.broker_url)
        consumer = replay_consumer(config)
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            return [
                await offset_for_time(consumer, tp, ts, 0, 40)
                for ts in (T0 - 5, T0, T0 + 500, T0 + 17_000, T0 + 39_000, T0 + 99_000)
            ]
        finally:
            await consumer.stop()

    assert asyncio.run(run()) == [0, 0, 1, 17, 39, 40]
