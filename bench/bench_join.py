"""Benchmarks of the per-partition join: `.venv/bin/python bench/bench_join.py` (one core, ~30 s).

(a) memory per pending impression (tracemalloc, 200,000 pending impressions x 2 predictions, ids and
    segments like the simulator's), (b) pure join throughput on one core, as the worker runs it: per
    batch of 5,000 messages, `events.decode_batch` of the raw JSON bytes per kind, `PartitionJoin.process`,
    `expire`, `drain`. Beside it, the same messages through `orjson.loads` alone (the raw ceiling's decode).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.pipeline.config import ModelConfig
from streams.pipeline.events import CLICK, CONVERSION, IMPRESSION, Limits, as_action, decode_batch
from streams.pipeline.join import PartitionJoin

T0 = 1_767_225_600_000  # 2026-01-01
PLATFORMS = ("ios", "android", "web")
PLACEMENTS = ("search", "feed", "related")
SEGMENTS = [{"platform": p, "placement": q} for p in PLATFORMS for q in PLACEMENTS]
CONFIGS = {
    "ctr": ModelConfig(label="click", window_ms=60_000, allowed_lateness_ms=5_000),
    "cvr": ModelConfig(
        label="conversion", population="click", window_ms=300_000, click_window_ms=60_000, allowed_lateness_ms=5_000
    ),
}


def make_traffic(
    n: int,
    span_ms: int,
    *,
    click_rate: float = 0.02,
    conversion_rate: float = 0.1,
    seed: int = 1,
    t0_ms: int = T0,
    run: str = "5eed0001",
) -> list[tuple[int, bytes, bytes, int]]:
    """`n` impressions (2 predictions each) with event times spread over `span_ms`, plus clicks (~exp 5 s
    after) and post-click conversions (~exp 60 s after the click). Returns (kind, key, value, ts) in
    event-time order, one event per message, key = impression_id, JSON like the simulator's."""
    rng = np.random.default_rng(seed)
    ts = t0_ms + np.sort(rng.integers(0, span_ms, n))
    seg = rng.integers(0, len(SEGMENTS), n)
    ctr = np.round(rng.beta(1, 40, n), 6)
    cvr = np.round(rng.beta(2, 20, n), 6)
    ids = [f"imp-{run}-{i:012d}" for i in range(n)]
    ts_l, seg_l, ctr_l, cvr_l = ts.tolist(), seg.tolist(), ctr.tolist(), cvr.tolist()
    seg_json = [orjson.dumps(s).decode() for s in SEGMENTS]
    out: list[tuple[int, bytes, bytes, int]] = []
    for i in range(n):  # f-strings beat orjson.dumps(dict) 2x here; the bytes are identical in shape
        value = (
            f'{{"impression_id":"{ids[i]}","ts":{ts_l[i]},"segment":{seg_json[seg_l[i]]},"predictions":'
            f'[{{"model":"ctr","version":"v1","score":{ctr_l[i]!r}}},'
            f'{{"model":"cvr","version":"v1","score":{cvr_l[i]!r}}}]}}'
        ).encode()
        out.append((IMPRESSION, ids[i].encode(), value, ts_l[i]))
    clicked = np.flatnonzero(rng.random(n) < click_rate)
    click_ts = ts[clicked] + rng.exponential(5_000, clicked.size).astype(np.int64)
    for k, (i, cts) in enumerate(zip(clicked.tolist(), click_ts.tolist(), strict=True)):
        value = orjson.dumps({"click_id": f"clk-{run}-{k}", "impression_id": ids[i], "ts": cts})
        out.append((CLICK, ids[i].encode(), value, cts))
    converted = rng.random(clicked.size) < conversion_rate
    conv_ts = click_ts[converted] + rng.exponential(60_000, int(converted.sum())).astype(np.int64)
    for k, (i, vts) in enumerate(zip(clicked[converted].tolist(), conv_ts.tolist(), strict=True)):
        value = orjson.dumps({"conversion_id": f"cnv-{run}-{k}", "impression_id": ids[i], "ts": vts, "value": 1.0})
        out.append((CONVERSION, ids[i].encode(), value, vts))
    out.sort(key=lambda m: m[3])
    return out


def join_batch(join: PartitionJoin, messages, limits: Limits) -> None:
    """One fetched batch: decode per kind, join (impressions first, then actions)."""
    values: dict[int, list[bytes]] = {IMPRESSION: [], CLICK: [], CONVERSION: []}
    for kind, _key, value, _ts in messages:
        values[kind].append(value)
    impressions = decode_batch(values[IMPRESSION], IMPRESSION, limits).events
    actions = [as_action(e, k) for k in (CLICK, CONVERSION) for e in decode_batch(values[k], k, limits).events]
    join.process(impressions, actions)


def bytes_per_pending(n: int) -> tuple[float, int]:
    """tracemalloc bytes retained by a PartitionJoin per pending impression (ids decoded inside the window)."""
    messages = make_traffic(n, 3_600_000, click_rate=0.0)
    limits = Limits()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    join = PartitionJoin(CONFIGS.__getitem__, 60_000, 10)
    for lo in range(0, len(messages), 5_000):
        join_batch(join, messages[lo : lo + 5_000], limits)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(join.pending) == n, len(join.pending)
    return (after - before) / n, len(join.pending)


def throughput(n: int, span_ms: int, batch: int = 5_000) -> dict[str, float]:
    traffic = make_traffic(n, span_ms)
    limits = Limits()
    join = PartitionJoin(CONFIGS.__getitem__, 60_000, 10)
    examples = 0
    gc.collect()
    start = time.perf_counter()
    for lo in range(0, len(traffic), batch):
        join_batch(join, traffic[lo : lo + batch], limits)
        join.expire()
        examples += len(join.drain()[0])
    seconds = time.perf_counter() - start

    decode_start = time.perf_counter()
    for kind in (IMPRESSION, CLICK, CONVERSION):
        decode_batch([value for k, _, value, _ in traffic if k == kind], kind, limits)
    decode_s = time.perf_counter() - decode_start
    raw_start = time.perf_counter()
    for _kind, _key, value, _ts in traffic:
        orjson.loads(value)
    raw_s = time.perf_counter() - raw_start
    return {
        "events": len(traffic),
        "impressions": n,
        "seconds": seconds,
        "events_per_s": len(traffic) / seconds,
        "impressions_per_s": n / seconds,
        "examples": examples,
        "pending": len(join.pending),
        "decode_only_events_per_s": len(traffic) / decode_s,
        "orjson_events_per_s": len(traffic) / raw_s,
        "counters": dict(join.counters),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pending", type=int, default=200_000)
    parser.add_argument("--events", type=int, default=500_000, help="impressions for the throughput run")
    args = parser.parse_args()

    per_pending, pending = bytes_per_pending(args.pending)
    tp = throughput(args.events, span_ms=1_800_000)
    rows = [
        (
            "bytes per pending impression",
            f"{per_pending:,.0f} B",
            "<= 200 B",
            per_pending <= 200,
            f"{pending:,} pending, 2 predictions, tracemalloc",
        ),
        (
            "join throughput (decode+join+expire)",
            f"{tp['events_per_s']:,.0f} ev/s",
            "",
            None,
            f"{tp['events']:,} events in {tp['seconds']:.2f} s, one core",
        ),
        (
            "  as impressions/s",
            f"{tp['impressions_per_s']:,.0f} imp/s",
            ">= 30,000",
            tp["impressions_per_s"] >= 30_000,
            f"{tp['examples']:,} examples, {tp['pending']:,} still pending",
        ),
        ("  events.decode_batch alone", f"{tp['decode_only_events_per_s']:,.0f} ev/s", "", None, "strict structs"),
        ("  reference: orjson.loads alone", f"{tp['orjson_events_per_s']:,.0f} ev/s", "", None, "no validation"),
    ]
    print(f"{'measure':40} {'value':>18} {'target':>10}  ok  notes")
    for name, value, target, ok, note in rows:
        flag = "" if ok is None else ("yes" if ok else "NO")
        print(f"{name:40} {value:>18} {target:>10}  {flag:3} {note}")
    print("join counters:", tp["counters"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
