"""Replay throughput of the labeled topic in one process against the embedded broker (Tansu).

    .venv/bin/python bench/bench_replay.py                 # ~1 min
    .venv/bin/python bench/bench_replay.py --records 400 --examples 2000

1. Start a DevStack and write a labeled topic directly (4 partitions): `--records` labeled records of
   `--examples` examples each, as `streams.pipeline.records.pack_examples` builds them (ctr + cvr, 24 segments of
   platform x placement, seq/durable as a live worker writes them, one simulated crash per partition so
   supersession is exercised).
2. Raw ceiling: a group-less aiokafka consumer `getmany`s every record of the topic (no decoding).
3. Replay: `streams.replay.replay_labeled` (decode, supersession, `PartialCalibrators.learn` per record,
   merge + metrics + gate per map) - the same work `recal replay` does, minus the Redis publish.
Prints examples/s of both and their ratio.

With `--worker`, the labeled topic is instead written by a real `recal worker` (streams/dev/demo.toml) on
`recal simulate` traffic (`--rate` impressions/s for `--duration` s, demo speed), so record sizes are
the live ones; the replay then also runs against the worker's own config.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.dev.demo import DEMO_CONFIG
from streams.dev.devstack import DevStack, WorkerProcess
from streams.pipeline.config import Config, load_config
from streams.pipeline.records import pack_examples
from streams.replay import Progress, end_offsets, replay_labeled
from streams.replay.offsets import replay_consumer

T0 = 1_790_000_000_000
PARTITIONS = 4
PLATFORMS = ("ios", "android", "web")
PLACEMENTS = ("search", "feed", "related", "video", "article", "home", "cart", "checkout")
SEGMENTS = [{"platform": a, "placement": b} for a in PLATFORMS for b in PLACEMENTS]


def make_record(rng: np.random.Generator, partition: int, seq: int, durable: int, n: int, t: int) -> bytes:
    model = (rng.uniform(size=n) < 0.1).astype(np.uint16)  # 10% cvr
    score = np.clip(rng.beta(1.2, 30, n), 1e-4, 1 - 1e-4)
    columns = {
        "model": model,
        "version": np.zeros(n, np.uint16),
        "segment": rng.integers(0, len(SEGMENTS), n).astype(np.uint32),
        "score": score,
        "label": (rng.uniform(size=n) < score * 1.3).astype(np.uint8),
        "ts": t + np.sort(rng.integers(0, 1_000, n)).astype(np.int64),
        "holdout": rng.uniform(size=n) < 0.1,
    }
    header = {
        "type": "examples",
        "partition": partition,
        "seq": seq,
        "durable": durable,
        "models": ["ctr", "cvr"],
        "versions": ["v1"],
        "segments": SEGMENTS,
    }
    return pack_examples(header, columns)


async def write_topic(broker: str, topic: str, records_per_partition: int, n: int) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=5, max_batch_size=1 << 20, max_request_size=8 << 20)
    await producer.start()
    rng = np.random.default_rng(7)
    written = 0
    try:
        for p in range(PARTITIONS):
            seq = durable = 0
            crash_at = records_per_partition // 2
            futures = []
            for i in range(records_per_partition):
                if i == crash_at:  # a crash: the worker restarts from its last snapshot (3 records back)
                    seq = durable
                seq += 1
                if seq % 5 == 0:
                    durable = seq - 2  # a snapshot every few records
                futures.append(
                    await producer.send(topic, make_record(rng, p, seq, durable, n, T0 + i * 1_000), partition=p)
                )
                written += n
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return written


async def raw_ceiling(config: Config) -> tuple[int, int, float]:
    """Every record of the labeled topic through the replay's own consumer, nothing decoded."""
    consumer = replay_consumer(config)
    await consumer.start()
    try:
        tps = [TopicPartition(config.topics.labeled, p) for p in range(PARTITIONS)]
        ends = await end_offsets(consumer, tps)
        consumer.assign(tps)
        for tp in tps:
            await consumer.seek_to_beginning(tp)
        records = size = 0
        started = time.perf_counter()
        todo = {tp for tp in tps if ends[tp] > 0}
        while todo:
            for tp, messages in (await consumer.getmany(*todo, timeout_ms=500, max_records=2_000)).items():
                records += len(messages)
                size += sum(len(m.value) for m in messages)
                if messages[-1].offset >= ends[tp] - 1:
                    todo.discard(tp)
        return records, size, time.perf_counter() - started
    finally:
        await consumer.stop()


def run_worker(stack: DevStack, rate: float, duration: float) -> tuple[str, int]:
    """A live worker on simulator traffic; returns its config path once it consumed everything."""
    import subprocess
    import tempfile

    cfg = Path(tempfile.mkdtemp()) / "recal.toml"
    cfg.write_text(DEMO_CONFIG.read_text())
    worker = WorkerProcess(cfg, stack.broker_url, stack.redis_url, cfg.parent / "worker.log")
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "streams.cli.main",
                "simulate",
                "--broker",
                stack.broker_url,
                "--rate",
                str(rate),
                "--duration",
                str(duration),
                "--speed",
                "600",
                "--create-topics",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        last, still = -1, 0
        while still < 4:  # consumed everything: no new events for 2 s
            time.sleep(0.5)
            n = sum(worker.stats().get("events_in", {}).values())
            still = still + 1 if n == last else 0
            last = n
        labeled = sum(worker.stats().get("labeled", {}).values())
    finally:
        worker.stop()
    return str(cfg), labeled


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=250, help="labeled records per partition")
    parser.add_argument("--examples", type=int, default=1_000, help="examples per record")
    parser.add_argument("--worker", action="store_true", help="labeled topic written by a live worker")
    parser.add_argument("--rate", type=float, default=30_000.0, help="--worker: impressions per second")
    parser.add_argument("--duration", type=float, default=20.0, help="--worker: seconds of traffic")
    args = parser.parse_args()
    with DevStack() as stack:
        t = time.perf_counter()
        if args.worker:
            path, labeled = run_worker(stack, args.rate, args.duration)
            config = load_config(path, env={}, broker=stack.broker_url, redis=stack.redis_url)
            topic = config.topics.labeled
            print(
                f"worker labeled {labeled:,} examples from {args.rate * args.duration:,.0f} impressions "
                f"in {time.perf_counter() - t:.1f}s"
            )
        else:
            topic = "bench-labeled"
            written = asyncio.run(write_topic(stack.broker_url, topic, args.records, args.examples))
            print(
                f"wrote {PARTITIONS * args.records:,} labeled records ({written:,} examples) "
                f"in {time.perf_counter() - t:.1f}s"
            )
            config = load_config(
                None,
                env={},
                broker=stack.broker_url,
                redis=stack.redis_url,
                topics=load_config(None, env={}).topics.__class__(labeled=topic),
            )
        records, size, raw_s = asyncio.run(raw_ceiling(config))
        progress = Progress(0, stream=open("/dev/null", "w"))  # noqa: SIM115
        result = asyncio.run(replay_labeled(config, progress=progress))
    per_record = result.examples / max(result.records - result.superseded, 1)
    raw_examples_s = records * per_record / raw_s
    replay_s = result.examples / result.seconds
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| labeled records read (raw getmany) | {records:,} ({size / 1e6:.1f} MB) in {raw_s:.2f} s |")
    print(
        f"| raw ceiling | {records / raw_s:,.0f} records/s = {raw_examples_s:,.0f} examples/s "
        f"({size / raw_s / 1e6:.0f} MB/s) |"
    )
    print(
        f"| replay (decode + supersession + learn + merge/metrics/gate) | {result.examples:,} examples applied "
        f"({result.records:,} records, {result.superseded} superseded) in {result.seconds:.2f} s |"
    )
    print(f"| replay throughput | {replay_s:,.0f} examples/s |")
    print(f"| replay / raw ceiling | {replay_s / raw_examples_s:.0%} |")
    print(f"| examples per labeled record (mean) | {per_record:,.0f} |")
    print(f"| maps built | {len(result.maps)} |")
    return 0 if replay_s >= 200_000 else 1


if __name__ == "__main__":
    sys.exit(main())
