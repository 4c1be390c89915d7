"""Serving-layer benchmark: reader hot path, pub/sub propagation, reader memory, publish throughput.

    .venv/bin/python -m bench.bench_serving [--maps 100000] [--knots 98]

Starts its own redis-server (streams.dev.devstack) on a free loopback port and prints one table. Lookups are
versioned (schema 2): every score names its model version; the namespace holds maps of two versions.
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np
import psutil
import redis

from recalibrators.calibration_map import CalibrationMap
from recalibrators.serving.reader import MapReader
from streams.dev import devstack
from streams.pipeline.publisher import MapPublisher

SEGMENT = {"platform": "ios", "placement": "search"}
VERSION = "v2"  # the model version the hot path asks for


def make_map(knots: int, segment: dict[str, str], map_version: int = 1, model_version: str = VERSION) -> CalibrationMap:
    x = np.linspace(0.0, 1.0, knots)
    return CalibrationMap(
        x=x,
        y=np.sqrt(x),
        method="isotonic",
        n=1e5,
        positives=1e3,
        last_event_ms=0,
        model="ctr",
        model_version=model_version,
        segment=segment,
        map_version=map_version,
        updated_at=int(time.time() * 1000),
    )


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def bench_hot_path(reader: MapReader, rows: list[tuple[str, str, str]]) -> None:
    scores = np.random.default_rng(0).random(100_000).tolist()
    calibrate_one, clock = reader.calibrate_one, time.perf_counter_ns
    for s in scores[:10_000]:  # warm the resolution cache and the interpreter
        calibrate_one("ctr", SEGMENT, s, model_version=VERSION)
    lat = []
    for s in scores:
        t0 = clock()
        calibrate_one("ctr", SEGMENT, s, model_version=VERSION)
        lat.append(clock() - t0)
    rows.append(
        (
            "calibrate_one latency p50 / p99",
            f"{pct(lat, 50) / 1e3:.2f} / {pct(lat, 99) / 1e3:.2f} us",
            "<= 2 / 10 us",
        )
    )
    t0 = time.perf_counter()
    for s in scores:
        calibrate_one("ctr", SEGMENT, s, model_version=VERSION)
    rows.append(("calibrate_one throughput", f"{len(scores) / (time.perf_counter() - t0) / 1e6:.2f} M/s", ""))

    batch = np.random.default_rng(1).random(10_000)
    reader.calibrate("ctr", SEGMENT, batch, model_version=VERSION)
    reps = 2000
    t0 = time.perf_counter()
    for _ in range(reps):
        reader.calibrate("ctr", SEGMENT, batch, model_version=VERSION)
    rate = reps * batch.size / (time.perf_counter() - t0)
    rows.append(("calibrate batch of 10,000", f"{rate / 1e6:.1f} M scores/s", ">= 20 M/s"))


def bench_propagation(client: redis.Redis, url: str, knots: int, rows: list[tuple[str, str, str]]) -> None:
    pub = MapPublisher(client, prefix="prop")
    pub.publish_many(make_map(knots, {"p": str(i)}) for i in range(1000))
    lat = []
    with MapReader(url, prefix="prop", check_interval=60) as reader:
        for map_version in range(2, 302):
            t0 = time.perf_counter()
            pub.publish(make_map(knots, SEGMENT, map_version))
            while (m := reader.lookup("ctr", SEGMENT, VERSION)) is None or m.map_version != map_version:
                time.sleep(0.0001)
            lat.append(time.perf_counter() - t0)
    rows.append(
        (
            "pub/sub propagation p50 / p99",
            f"{pct(lat, 50) * 1e3:.2f} / {pct(lat, 99) * 1e3:.2f} ms",
            "p99 <= 100 ms",
        )
    )


def bench_publish(client: redis.Redis, maps: list[CalibrationMap], rows: list[tuple[str, str, str]]) -> None:
    pub = MapPublisher(client)
    t0 = time.perf_counter()
    pub.publish_many(maps)
    elapsed = time.perf_counter() - t0
    rows.append((f"publish_many ({len(maps):,} maps)", f"{len(maps) / elapsed:,.0f} maps/s", ""))


def bench_memory(url: str, n: int, rows: list[tuple[str, str, str]]) -> None:
    gc.collect()
    proc = psutil.Process()
    before = proc.memory_info().rss
    t0 = time.perf_counter()
    reader = MapReader(url, check_interval=1.0, start_timeout=600)
    load = time.perf_counter() - t0
    gc.collect()
    rss = proc.memory_info().rss - before
    assert reader.status()["maps"] == n, reader.status()
    rows.append(
        (
            f"reader holding {n:,} maps: RSS delta",
            f"{rss / 2**20:.0f} MB ({rss / n / 1024:.1f} KiB/map)",
            "<= 500 MB",
        )
    )
    rows.append((f"reader full load of {n:,} maps", f"{load:.1f} s", ""))

    # The hot path while the sync thread re-reads a 100k-field index every second (GIL contention).
    lat, stop = [], time.monotonic() + 3.0
    clock, calibrate_one = time.perf_counter_ns, reader.calibrate_one
    while time.monotonic() < stop:
        t0 = clock()
        calibrate_one("ctr", SEGMENT, 0.3, model_version=VERSION)
        lat.append(clock() - t0)
    rows.append(
        (
            "calibrate_one p99 / max during 1 s index checks",
            f"{pct(lat, 99) / 1e3:.2f} us / {max(lat) / 1e6:.1f} ms",
            "",
        )
    )
    reader.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=100_000, help="maps for the memory and publish rows")
    parser.add_argument("--knots", type=int, default=98, help="knots per map (calibrator: n_bins + 2)")
    args = parser.parse_args()
    server = devstack.redis_server().start()
    url = f"redis://127.0.0.1:{server.port}/0"
    client = redis.Redis.from_url(url)
    rows: list[tuple[str, str, str]] = []
    try:
        bench_propagation(client, url, args.knots, rows)
        maps = [make_map(args.knots, {"p": str(i)}, model_version=f"v{i % 2 + 1}") for i in range(args.maps - 2)]
        maps += [make_map(args.knots, SEGMENT, model_version="v1"), make_map(args.knots, SEGMENT)]
        bench_publish(client, maps, rows)
        del maps
        bench_memory(url, args.maps, rows)
        with MapReader(url, check_interval=60, start_timeout=600) as reader:
            bench_hot_path(reader, rows)
    finally:
        client.close()
        server.stop()
    print(f"knots per map: {args.knots}")
    width = max(len(r[0]) for r in rows)
    print(f"{'metric'.ljust(width)}  {'measured':<28}  target")
    for name, value, target in rows:
        print(f"{name.ljust(width)}  {value:<28}  {target}")


if __name__ == "__main__":
    main()
