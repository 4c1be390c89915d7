"""Fast start: from `recal worker` starting to its first joined record, on an empty state, against the
embedded broker (Tansu), with the seconds of each start-up phase (`streams/pipeline/startup.py`).

    .venv/bin/python bench/bench_startup.py                 # 3 fresh workers, ~1 min
    .venv/bin/python bench/bench_startup.py --processes 2 --runs 5

Each run uses a new app id (no snapshots, no internal topics, a new consumer group), so the worker
creates its internal topics, joins a new group and restores nothing. The source topics exist and hold a
few impressions and clicks already (the producers own them). Beside the worker, in the same run, the
reference: a plain aiokafka consumer in a new group of its own, from its start to its first record
(what the broker's group join alone costs), and the Python interpreter's bare start.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.dev.devstack import BROKER_IMPLS, DevStack, WorkerProcess, namespace_toml
from streams.pipeline.config import load_config

CONFIG_TOML = """
[defaults]
label = "click"
window = "60s"
allowed_lateness = "5s"
refresh_interval = "1s"
segment_by = [["placement"]]

[models.ctr]
label = "click"
"""


def sources(ns: str) -> tuple[str, str, str]:
    return (f"{ns}-impressions", f"{ns}-clicks", f"{ns}-conversions")


async def seed(broker: str, ns: str) -> None:
    """The source topics of namespace `ns`, with 40 impressions and 4 clicks waiting (so the first fetch
    has records)."""
    SOURCES = sources(ns)
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 4, 1) for t in SOURCES])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=broker)
    await producer.start()
    try:
        now = int(time.time() * 1000)
        for i in range(40):
            imp = {
                "impression_id": f"i{i}",
                "ts": now,
                "segment": {"placement": "feed"},
                "predictions": [{"model": "ctr", "version": "v1", "score": 0.1}],
            }
            await producer.send(SOURCES[0], orjson.dumps(imp), key=f"i{i}".encode())
            if i % 10 == 0:
                click = {"click_id": f"c{i}", "impression_id": f"i{i}", "ts": now + 10}
                await producer.send(SOURCES[1], orjson.dumps(click), key=f"i{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()


async def plain_consumer_first_record(broker: str, ns: str, session_timeout_ms: int) -> float:
    """A new group's plain aiokafka consumer: seconds from its start to its first record."""
    started = time.perf_counter()
    consumer = AIOKafkaConsumer(
        *sources(ns)[:2],
        bootstrap_servers=broker,
        group_id=f"plain-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        session_timeout_ms=session_timeout_ms,
    )
    await consumer.start()
    try:
        while not await consumer.getmany(timeout_ms=100):
            pass
        return time.perf_counter() - started
    finally:
        await consumer.stop()


def interpreter_start() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - started


def is_ready(worker: WorkerProcess) -> bool:
    try:
        with urllib.request.urlopen(worker.url("/readyz"), timeout=0.5):
            return True
    except OSError:  # 503 (HTTPError) while not ready, or no answer yet
        return False


def one_worker(stack: DevStack, tmp: Path, processes: int, run: int) -> tuple[float, float, dict[str, float]]:
    """(seconds to /readyz 200, seconds to the first event counted in /stats, the worker's own phases)."""
    ns = f"startup-{uuid.uuid4().hex[:8]}"
    asyncio.run(seed(stack.broker_url, ns))
    config_path = tmp / f"worker{run}.toml"
    config_path.write_text(CONFIG_TOML + namespace_toml(ns, partitions=4, processes=processes))
    started = time.perf_counter()
    worker = WorkerProcess(config_path, stack.broker_url, stack.redis_url, tmp / f"worker{run}.log")
    ready = first = None
    try:
        while first is None or ready is None:
            if not worker.alive():
                print((tmp / f"worker{run}.log").read_text()[-3000:])
                raise RuntimeError("worker exited")
            if time.perf_counter() - started > 90:
                raise RuntimeError("no first event in 90 s")
            s = worker.stats(timeout_s=0.5)
            now = time.perf_counter()
            if first is None and sum(s.get("events_in", {}).values()) > 0:
                first = now - started
            if ready is None and is_ready(worker):
                ready = time.perf_counter() - started
            time.sleep(0.05)
        return ready, first, worker.stats(timeout_s=1.0).get("startup_s", {})
    finally:
        worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--broker-impl", choices=BROKER_IMPLS, default="tansu")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="speed-startup-")
    with DevStack(broker_impl=args.broker_impl) as stack:
        ns = f"plain-{uuid.uuid4().hex[:8]}"
        asyncio.run(seed(stack.broker_url, ns))
        session_ms = load_config(None).session_timeout_ms  # the worker's default, for the same hold
        plain = [asyncio.run(plain_consumer_first_record(stack.broker_url, ns, session_ms)) for _ in range(args.runs)]
        bare = [interpreter_start() for _ in range(args.runs)]
        runs = [one_worker(stack, Path(tmp), args.processes, i) for i in range(args.runs)]
    phases = list(dict.fromkeys(p for _, _, ph in runs for p in ph))
    print(f"\nworker start ({args.broker_impl}, --processes {args.processes}, empty state), {args.runs} runs")
    print(f"| phase (s since process start) | {' | '.join(f'run {i + 1}' for i in range(args.runs))} |")
    print("|---|" + "---|" * args.runs)
    for p in phases:
        print(f"| {p} | " + " | ".join(f"{ph.get(p, float('nan')):.2f}" for _, _, ph in runs) + " |")
    print("| /readyz 200 (bench clock) | " + " | ".join(f"{r:.2f}" for r, _, _ in runs) + " |")
    print("| first event in /stats (bench clock) | " + " | ".join(f"{f:.2f}" for _, f, _ in runs) + " |")
    print(
        f"| reference: plain aiokafka consumer, new group, session {session_ms / 1000:g} s, to first record | "
        + " | ".join(f"{p:.2f}" for p in plain)
        + " |"
    )
    print("| reference: bare `python -c pass` | " + " | ".join(f"{b:.2f}" for b in bare) + " |")
    first = statistics.median(f for _, f, _ in runs)
    print(
        f"\nmedian start to first event: {first:.2f} s (target <= 5 s: {'met' if first <= 5 else 'NOT met'}); "
        f"median plain consumer: {statistics.median(plain):.2f} s"
    )


if __name__ == "__main__":
    main()
