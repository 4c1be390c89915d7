"""Map freshness: from the event that makes labels final to the updated map in Redis.

    .venv/bin/python bench/bench_freshness.py [--rounds 20] [--refresh 1s] [--broker-impl tansu|apache]

A `recal worker` runs against a dev broker (embedded Tansu by default, or Apache Kafka) and Redis. Each round
produces 100 impressions at a new event time, then one "tick" impression per partition far enough ahead to
close their window: the worker emits the 100 labels, and the round's latency is the wall time from sending the
ticks until the model-wide map in Redis counts them. Target: refresh interval + 1 s.

Beside it, the broker's raw ceiling in the same run: the wall time from `send_and_wait` of one record until a
consumer that is already polling the topic holds it (the floor of any latency through that broker).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import orjson
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from recalibrators.calibration_map import CalibrationMap
from streams.dev.devstack import BROKER_IMPLS, DevStack, WorkerProcess
from streams.pipeline.config import parse_duration_ms
from streams.pipeline.topics import ids_covering_partitions

PARTITIONS = 4
WINDOW_S = 10


def config(refresh: str) -> str:
    return f"""
[defaults]
window = "{WINDOW_S}s"
allowed_lateness = "1s"
segment_by = []
half_life = "100000d"
refresh_interval = "{refresh}"
min_samples = 1

[worker]
partitions = {PARTITIONS}
checkpoint_interval = "5s"
holdout_percent = 0
max_future_skew = "100000d"
session_timeout = "6s"
"""


def impression(iid: str, ts: int) -> bytes:
    return orjson.dumps(
        {"impression_id": iid, "ts": ts, "predictions": [{"model": "ctr", "version": "v1", "score": 0.02}]}
    )


def map_n(cache: redis.Redis) -> float:
    raw = cache.get("recal:map:ctr:*")
    return CalibrationMap.from_json(raw).n if raw else 0.0


async def raw_round_trips(broker: str, n: int = 50) -> list[float]:
    """Produce one record, wait until a polling group-less consumer has it; n times."""
    topic = f"freshness-raw-{time.time_ns()}"
    producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=0, acks="all")
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False, fetch_max_wait_ms=10)
    await producer.start()
    await consumer.start()
    try:
        await producer.send_and_wait(topic, b"warm-up", partition=0)
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        times = []
        for i in range(n + 1):
            sent = time.perf_counter()
            await producer.send_and_wait(topic, b"%d" % i, partition=0)
            while not (await consumer.getmany(tp, timeout_ms=100)).get(tp):
                pass
            if i:  # the first one also joins the fetch session
                times.append(time.perf_counter() - sent)
        return sorted(times)
    finally:
        await consumer.stop()
        await producer.stop()


async def run(rounds: int, refresh: str, broker_impl: str) -> tuple[list[float], list[float]]:
    latencies = []
    with DevStack(broker_impl=broker_impl) as stack, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recal.toml"
        path.write_text(config(refresh))
        worker = WorkerProcess(path, stack.broker_url, stack.redis_url, Path(tmp) / "worker.log")
        try:
            worker.wait_ready()
            cache = redis.Redis.from_url(stack.redis_url)
            producer = AIOKafkaProducer(bootstrap_servers=stack.broker_url, linger_ms=0)
            await producer.start()
            t0, expected = 1_790_000_000_000, 0
            for r in range(rounds + 1):  # round 0 warms up (first map, gate)
                base = t0 + r * 3 * WINDOW_S * 1000
                for i in range(100):
                    iid = f"r{r}-{i}"
                    await producer.send("ad-impressions", impression(iid, base), key=iid.encode())
                await producer.flush()
                await asyncio.sleep(0.5)
                sent = time.perf_counter()
                for iid in ids_covering_partitions(f"tick-{r}", PARTITIONS):
                    await producer.send(
                        "ad-impressions", impression(iid, base + (WINDOW_S + 3) * 1000), key=iid.encode()
                    )
                await producer.flush()
                expected += 100 + (PARTITIONS if r else 0)  # earlier ticks close with this round too
                while map_n(cache) < expected - 0.5:
                    await asyncio.sleep(0.005)
                    if time.perf_counter() - sent > 30:
                        raise TimeoutError(f"round {r}: map n {map_n(cache)} < {expected}")
                if r:
                    latencies.append(time.perf_counter() - sent)
            await producer.stop()
        finally:
            worker.stop()
        raw = await raw_round_trips(stack.broker_url)
    return latencies, raw


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--refresh", default="1s")
    parser.add_argument("--broker-impl", choices=BROKER_IMPLS, default="tansu")
    args = parser.parse_args()
    latencies, raw = asyncio.run(run(args.rounds, args.refresh, args.broker_impl))
    latencies.sort()
    target = parse_duration_ms(args.refresh) / 1000 + 1
    p50 = statistics.median(latencies)
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    print(f"{'measure':<38}{'value':>10}")
    print(f"{'broker':<38}{args.broker_impl:>10}")
    print(f"{'refresh interval':<38}{args.refresh:>10}")
    print(f"{'label final -> map in Redis, p50':<38}{p50:>9.2f}s")
    print(f"{'label final -> map in Redis, p95':<38}{p95:>9.2f}s")
    print(f"{'label final -> map in Redis, max':<38}{latencies[-1]:>9.2f}s")
    print(f"{'raw ceiling: produce -> consumer, p50':<38}{statistics.median(raw) * 1000:>8.1f}ms")
    print(f"{'raw ceiling: produce -> consumer, max':<38}{raw[-1] * 1000:>8.1f}ms")
    print(f"{'target (refresh + 1 s)':<38}{target:>9.2f}s  {'met' if latencies[-1] <= target else 'MISSED'}")


if __name__ == "__main__":
    main()
