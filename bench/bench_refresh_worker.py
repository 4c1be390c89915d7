"""Flat under many keys, in a real worker: `recal worker` with 10,000 segment keys x 3 models, refresh 1 s,
under live traffic for `--minutes` (default 5), on the embedded broker.

    nice .venv/bin/python bench/bench_refresh_worker.py                # ~7 min
    .venv/bin/python bench/bench_refresh_worker.py --minutes 1 --rate 200

1. A backlog touching every site (`--sites`, default 10,000) once for each of the 3 click-labeled
   models, with event times a minute old: every key gets a map, the state the run starts from.
2. Live traffic at `--rate` impressions/s (uniform sites, 5% clicked, event time = now; window 5 s): about
   `3 x distinct sites per second` keys change per refresh tick.
3. Every second the worker's /stats: refresh building time (last, max), keys waiting for a tick, the
   longest event-loop stall since start. At the end: consumer-group rebalances during the run (the
   worker's log: joins after its first one of each group) and the backlog trend.

Printed beside the worker's numbers, as the reference measured in the same run: the refresh budget
(half the interval) and the interval, and the rate of keys changed per tick.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.dev.devstack import DevStack, WorkerProcess, namespace_toml
from streams.dev.simulator import send_batched
from streams.pipeline.partitioners import partition_of

MODELS = ("ctr", "ctr_b", "ctr_c")
PARTITIONS = 4
STALL_LOG = "100ms"  # the worker logs every stall beyond the bound, with what held the loop (counted below)
CONFIG_TOML = """
[defaults]
label = "click"
window = "5s"
allowed_lateness = "1s"
refresh_interval = "1s"
segment_by = [["site"]]
min_samples = 1
""" + "".join(f'\n[models.{m}]\nlabel = "click"\n' for m in MODELS)


def impression(i: int, site: int, ts: int, rng: random.Random) -> tuple[bytes, bytes]:
    iid = f"i{i}".encode()
    preds = [{"model": m, "version": "v1", "score": round(rng.uniform(0.01, 0.3), 4)} for m in MODELS]
    return iid, orjson.dumps(
        {"impression_id": iid.decode(), "ts": ts, "segment": {"site": f"s{site:05d}"}, "predictions": preds}
    )


def messages(ns: str, ids: range, sites, ts: int, rng: random.Random) -> list:
    out = []
    for i, site in zip(ids, sites, strict=True):
        key, value = impression(i, site, ts, rng)
        part = partition_of(key, PARTITIONS)
        out.append((f"{ns}-impressions", part, key, value, ts))
        if rng.random() < 0.05:
            click = orjson.dumps({"click_id": f"c{i}", "impression_id": f"i{i}", "ts": ts + 100})
            out.append((f"{ns}-clicks", part, key, click, ts + 100))
    return out


async def traffic(broker: str, ns: str, sites: int, rate: float, seconds: float) -> int:
    """The backlog over every site, then `rate` impressions/s for `seconds`; returns impressions sent."""
    rng = random.Random(0)
    producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        now = int(time.time() * 1000)
        await asyncio.gather(*await send_batched(producer, messages(ns, range(sites), range(sites), now - 60_000, rng)))
        sent, started = sites, time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            due = sites + int(elapsed * rate)
            if due > sent:
                ids = range(sent, due)
                batch = messages(ns, ids, [rng.randrange(sites) for _ in ids], int(time.time() * 1000), rng)
                await asyncio.gather(*await send_batched(producer, batch))
                sent = due
            await asyncio.sleep(0.05)
        return sent
    finally:
        await producer.stop()


def rebalances(log: str, ns: str) -> int:
    """Group joins beyond each group's first: the worker's two groups ({ns}-join and {ns}-aggregate)."""
    joins = re.findall(r"Joined group '([^']+)'", log)
    return sum(max(0, joins.count(group) - 1) for group in set(joins))


STALL_LINE = re.compile(r"^\[(\S+ \S+?),\d+\] .*(event loop held|garbage collection)", re.M)


def stall_counts(log: str, traffic_started: float) -> str:
    """The worker's stall log (`stall_log`): stalls in the first minute of traffic (the backlog's 30,000 new
    keys) and after it, and how many of all were garbage collections."""
    first = after = gcs = 0
    for m in STALL_LINE.finditer(log):
        at = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
        first, after = (first + 1, after) if at - traffic_started < 60 else (first, after + 1)
        gcs += m.group(2) == "garbage collection"
    return f"{first} / {after} / {gcs}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--sites", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=350.0, help="live impressions per second")
    args = parser.parse_args()
    ns = f"refresh-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-refresh-"))
    config_path = tmp / "worker.toml"
    config_path.write_text(CONFIG_TOML + namespace_toml(ns, partitions=PARTITIONS, stall_log=STALL_LOG))
    samples: list[dict] = []
    with DevStack() as stack:
        worker = WorkerProcess(config_path, stack.broker_url, stack.redis_url, tmp / "worker.log")
        try:
            worker.wait_ready()
            loop = asyncio.new_event_loop()
            sender = loop.run_in_executor(
                None, lambda: asyncio.run(traffic(stack.broker_url, ns, args.sites, args.rate, args.minutes * 60))
            )
            started, wall = time.monotonic(), time.time()
            while not sender.done():
                loop.run_until_complete(asyncio.sleep(1.0))
                s = worker.stats(timeout_s=2.0)
                if s:
                    s["t"] = time.monotonic() - started
                    samples.append(s)
                    print(
                        f"t={s['t']:5.0f}s refresh last {s['refresh_last_s']:.2f} s max {s['refresh_max_s']:.2f} s, "
                        f"waiting {s['refresh_backlog_keys']:,} keys, carried {s['refresh_carried_keys']:,}, "
                        f"maps {s['maps_published']:,}, "
                        f"loop lag max {s['loop_lag_max_ms']:.0f} ms",
                        flush=True,
                    )
            sent = loop.run_until_complete(sender)
        finally:
            worker.stop()
    log = (tmp / "worker.log").read_text()
    warm = [s for s in samples if s["t"] >= 60]  # the first minute builds the 30,000 starting maps
    backlog = [s["refresh_backlog_keys"] for s in warm] or [0]
    third = max(1, len(backlog) // 3)
    print(f"\n{args.sites:,} sites x {len(MODELS)} models, refresh 1 s, {args.minutes:g} min, {sent:,} impressions")
    last = samples[-1]
    early, late = statistics.mean(backlog[:third]), statistics.mean(backlog[-third:])
    rows = [
        ("refresh building time, max over the run", f"{last['refresh_max_s']:.2f} s", "interval 1 s, budget 0.5 s"),
        (
            "changed keys waiting for a tick, after the first minute: first / last third",
            f"{early:,.0f} / {late:,.0f}",
            "flat",
        ),
        ("maps published", f"{last['maps_published']:,}", f"{3 * args.sites:,} keys"),
        ("event loop stall, max since start", f"{last['loop_lag_max_ms']:.0f} ms", "100 ms"),
        ("consumer-group rebalances during the run", str(rebalances(log, ns)), "0"),
        ("stalls over 100 ms: first minute / after / of them garbage collections", stall_counts(log, wall), "0"),
    ]
    print("| measure | worker | reference / bound |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
