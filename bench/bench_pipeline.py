"""End-to-end throughput of one `recal worker` against the embedded broker (Tansu) and Redis.

    .venv/bin/python bench/bench_pipeline.py            # ~2-3 min
    .venv/bin/python bench/bench_pipeline.py --profile  # also py-spy the worker during the backlog run
    .venv/bin/python bench/bench_pipeline.py --processes 2  # two join processes in the one worker

1. Start a DevStack, create the topics (4 partitions), pre-produce N impressions (one event per message,
   key = impression_id, ~2% clicks, ~10% of those converted; event times spread so windows close).
2. Raw ceiling: a group-less aiokafka consumer reads every message and orjson-decodes it.
3. Backlog: start `recal worker` as a subprocess; from its first consumed event until `/stats` shows all
   events consumed (labels are emitted in the same batch); impressions/s and the ratio to the ceiling.
4. Live: a producer at a target rate (default 30,000 impressions/s for 20 s) while the same worker runs;
   the lag (produced - consumed) each second and at the end, and how long the tail takes to drain.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_join import join_batch, make_traffic

from streams.dev.devstack import BROKER_IMPLS, DevStack, WorkerProcess
from streams.dev.simulator import kafka_partition, murmur2, send_batched
from streams.pipeline.config import load_config
from streams.pipeline.events import CLICK, CONVERSION, IMPRESSION, Limits
from streams.pipeline.join import PartitionJoin
from streams.pipeline.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]

CONFIG_TOML = """
[defaults]
label = "click"
window = "60s"
allowed_lateness = "5s"
refresh_interval = "2s"
segment_by = [["platform", "placement"], ["placement"]]

[models.ctr]
label = "click"

[models.cvr]
label = "conversion"
population = "click"
click_window = "60s"
window = "300s"
segment_by = [["placement"]]

[worker]
grace = "60s"
checkpoint_interval = "5s"
partials_interval = "1s"
holdout_percent = 10
max_future_skew = "1h"
"""


def consumed(s: dict) -> int:
    return sum(s.get("events_in", {}).values())


def labeled(s: dict) -> int:
    return sum(s.get("labeled", {}).values())


def with_partitions(traffic, topics, partitions: int):
    """(topic, partition, key, value, ts) with the Java client's default partitioner over the key."""
    keys = np.frombuffer(b"".join(k for _, k, _, _ in traffic), dtype=np.uint8).reshape(len(traffic), -1)
    parts = kafka_partition(murmur2(keys), partitions).tolist()
    names = {IMPRESSION: topics.impressions, CLICK: topics.clicks, CONVERSION: topics.conversions}
    return [(names[kind], p, key, value, ts) for (kind, key, value, ts), p in zip(traffic, parts, strict=True)]


async def produce_all(broker: str, messages) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=broker, linger_ms=5, max_batch_size=1 << 20, max_request_size=4 << 20, acks=1
    )
    await producer.start()
    try:
        start = time.perf_counter()
        pending: list[asyncio.Future] = []
        for lo in range(0, len(messages), 20_000):
            futures = await send_batched(producer, messages[lo : lo + 20_000])
            await asyncio.gather(*pending)
            pending = futures
        await asyncio.gather(*pending)
        return time.perf_counter() - start
    finally:
        await producer.stop()


async def raw_ceiling(broker: str, topics: list[str], partitions: int, total: int) -> float:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker,
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 << 20,
        fetch_max_bytes=32 << 20,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        n, start = 0, time.perf_counter()
        while n < total:
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for messages in batch.values():
                for message in messages:
                    orjson.loads(message.value)
                n += len(messages)
        return n / (time.perf_counter() - start)
    finally:
        await consumer.stop()


def expected_examples(messages, configs, partitions: int) -> int:
    """What the worker should emit once everything is read: the pure join, per partition, in event
    order, in batches (labels do not depend on the cuts, only on event times)."""
    kinds = {"ad-impressions": IMPRESSION, "ad-clicks": CLICK, "ad-conversions": CONVERSION}
    per_partition: list[list] = [[] for _ in range(partitions)]
    for topic, partition, key, value, ts in messages:
        per_partition[partition].append((kinds[topic], key, value, ts))
    total = 0
    for traffic in per_partition:
        join = PartitionJoin(configs, 60_000, 10)
        for lo in range(0, len(traffic), 5_000):
            join_batch(join, traffic[lo : lo + 5_000], Limits())
        join.expire()
        total += len(join.drain()[0])
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impressions", type=int, default=600_000)
    parser.add_argument("--span", type=float, default=1200.0, help="event seconds the backlog spans")
    parser.add_argument("--rate", type=float, default=30_000.0, help="live mode: impressions per wall second")
    parser.add_argument("--live-seconds", type=float, default=20.0)
    parser.add_argument("--live-speed", type=float, default=10.0, help="live mode: event seconds per wall second")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--processes", type=int, default=1, help="join processes of the worker ([worker] processes)")
    parser.add_argument("--broker-impl", choices=BROKER_IMPLS, default="tansu", help="the dev broker to measure on")
    parser.add_argument("--profile", action="store_true", help="py-spy the worker during the backlog run")
    args = parser.parse_args()

    rows: list[tuple[str, str, str]] = []
    now_ms = int(time.time() * 1000)
    t0 = now_ms - int(args.span * 1000) - 600_000  # the backlog ends 10 min ago (future-skew check passes)
    t = time.perf_counter()
    backlog = make_traffic(args.impressions, int(args.span * 1000), t0_ms=t0, run="b0000001")
    live_n = int(args.rate * args.live_seconds)
    live_span = int(args.live_seconds * args.live_speed * 1000)
    live = make_traffic(live_n, live_span, t0_ms=t0 + int(args.span * 1000), run="l0000001", seed=2)
    print(f"generated {len(backlog):,} + {len(live):,} messages in {time.perf_counter() - t:.1f} s", flush=True)

    with DevStack(broker_impl=args.broker_impl) as stack, tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "bench.toml"
        config_path.write_text(CONFIG_TOML + f"processes = {args.processes}\n")
        config = load_config(
            config_path, env={}, broker=stack.broker_url, redis=stack.redis_url, partitions=args.partitions
        )
        asyncio.run(ensure_topics(config, create_sources=True))
        topics = config.topics
        backlog_msgs = with_partitions(backlog, topics, args.partitions)
        live_msgs = with_partitions(live, topics, args.partitions)
        total = len(backlog_msgs)

        t = time.perf_counter()
        expected = expected_examples(backlog_msgs, config.model, args.partitions)
        print(
            f"pure join over the backlog (expected examples {expected:,}) in {time.perf_counter() - t:.1f} s",
            flush=True,
        )

        produce_s = asyncio.run(produce_all(stack.broker_url, backlog_msgs))
        rows.append(
            (
                "produce backlog (create_batch/send_batch)",
                f"{total / produce_s:,.0f} msg/s",
                f"{total:,} messages ({args.impressions:,} impressions) in {produce_s:.1f} s",
            )
        )
        print(rows[-1], flush=True)

        ceiling = asyncio.run(raw_ceiling(stack.broker_url, list(topics.sources[:3]), args.partitions, total))
        rows.append(
            (
                "raw ceiling: aiokafka getmany + orjson.loads",
                f"{ceiling:,.0f} rec/s",
                f"group-less, 1 process; the worker runs {args.processes} join process(es)",
            )
        )
        print(rows[-1], flush=True)

        log_path = Path(tmp) / "worker.log"
        worker = WorkerProcess(config_path, stack.broker_url, stack.redis_url, log_path)
        spy = None
        try:
            started = time.perf_counter()
            first = None
            last_zero = started
            last_n, last_change = 0, started
            # Done: everything consumed and nothing more for 1 s (the events_in row checks for re-reads).
            while True:
                if not worker.alive():
                    print(log_path.read_text()[-3000:])
                    raise RuntimeError(f"worker exited with {worker.proc.returncode}")
                s = worker.stats(timeout_s=1.0)
                n = consumed(s)
                now = time.perf_counter()
                if n == 0:
                    last_zero = now
                elif first is None:
                    first = last_zero  # consumption began between the last zero and now
                    if args.profile:
                        spy = subprocess.Popen(
                            [
                                str(Path(sys.executable).parent / "py-spy"),
                                "record",
                                "-p",
                                str(worker.proc.pid),
                                "-d",
                                "20",
                                "-r",
                                "200",
                                "-f",
                                "raw",
                                "-o",
                                str(ROOT / "artifacts/worker.pyspy.txt"),
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                if n != last_n:
                    last_n, last_change = n, now
                elif n >= total and now - last_change >= 1.0:
                    done = last_change
                    break
                if now - started > 240:
                    raise RuntimeError(f"worker consumed only {n:,}/{total:,} in 240 s")
                time.sleep(0.1)
            backlog_s = done - first
            time.sleep(1.5)
            s = worker.stats(timeout_s=1.0)
            got = labeled(s)
            rate = args.impressions / backlog_s
            startup = first - started
            rows.append(
                (
                    "worker startup to first event",
                    f"{startup:.1f} s",
                    f"faust + assignment + restore; target <= 5 s: {'met' if startup <= 5 else 'NOT met'}",
                )
            )
            rows.append(
                (
                    "worker backlog: impressions/s",
                    f"{rate:,.0f} imp/s",
                    f"{total:,} messages in {backlog_s:.1f} s = {total / backlog_s:,.0f} msg/s = "
                    f"{total / backlog_s / ceiling:.2f} of the raw ceiling "
                    f"(target >= 0.40: {'met' if total / backlog_s >= 0.40 * ceiling else 'NOT met'})",
                )
            )
            rows.append(
                ("labeled examples emitted", f"{got:,}", f"pure join expects {expected:,}; by model {s.get('labeled')}")
            )
            rows.append(
                (
                    "worker events_in (re-reads included)",
                    f"{consumed(s):,}",
                    f"{consumed(s) - total:,} more than the {total:,} messages produced",
                )
            )
            rows.append(("worker join counters", "", str(s.get("join"))))
            rows.append(("worker dead letters", "", str(s.get("dead_letters"))))
            print(*rows[-6:], sep="\n", flush=True)
            if spy is not None:
                spy.wait(60)

            # -- live -----------------------------------------------------------------------------
            base = consumed(s)
            lags = []

            async def live_run() -> float:
                producer = AIOKafkaProducer(
                    bootstrap_servers=stack.broker_url,
                    linger_ms=5,
                    max_batch_size=1 << 20,
                    max_request_size=4 << 20,
                    acks=1,
                )
                await producer.start()
                try:
                    loop = asyncio.get_running_loop()
                    start = loop.time()
                    sent, in_flight, next_sample = 0, [], 1.0
                    total_live = len(live_msgs)
                    while sent < total_live:
                        elapsed = loop.time() - start
                        due = min(total_live, int(total_live * elapsed / args.live_seconds))
                        if due > sent:
                            futures = await send_batched(producer, live_msgs[sent:due])
                            sent = due
                            await asyncio.gather(*in_flight)
                            in_flight = futures
                        if elapsed >= next_sample:
                            n = await asyncio.to_thread(lambda: consumed(worker.stats(timeout_s=1.0)))
                            lags.append((round(elapsed), sent - (n - base)))
                            next_sample += 1.0
                        await asyncio.sleep(0.02)
                    await asyncio.gather(*in_flight)
                    return loop.time() - start
                finally:
                    await producer.stop()

            live_wall = asyncio.run(live_run())
            end = time.perf_counter()
            lag_end = len(live_msgs) - (consumed(worker.stats(timeout_s=1.0)) - base)
            while consumed(worker.stats(timeout_s=1.0)) - base < len(live_msgs) and time.perf_counter() - end < 60:
                time.sleep(0.1)
            drain_s = time.perf_counter() - end
            caught = consumed(worker.stats(timeout_s=1.0)) - base >= len(live_msgs)
            achieved = live_n / live_wall
            rows.append(
                (
                    "live: producer rate achieved",
                    f"{achieved:,.0f} imp/s",
                    f"{live_n:,} impressions ({len(live_msgs):,} messages) in {live_wall:.1f} s",
                )
            )
            rows.append(
                (
                    "live: lag at end of production",
                    f"{lag_end:,} msgs",
                    f"drained in {drain_s:.1f} s" if caught else "NOT drained within 60 s",
                )
            )
            rows.append(("live: lag per second", "", " ".join(f"{t_}s:{lag:,}" for t_, lag in lags)))
            keeps_up = caught and lag_end < args.rate  # less than a second of input behind
            rows.append(
                (
                    "live: worker keeps up",
                    "yes" if keeps_up else "NO",
                    f"sustained ~{len(live_msgs) / (live_wall + drain_s):,.0f} msg/s incl. drain",
                )
            )
        finally:
            worker.stop()
            (ROOT / "artifacts").mkdir(exist_ok=True)
            (ROOT / "artifacts/bench_pipeline_worker.log").write_bytes(log_path.read_bytes())

    print()
    print(f"{'measure':46} {'value':>16}  notes")
    for name, value, note in rows:
        print(f"{name:46} {value:>16}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
