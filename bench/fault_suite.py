"""The fault-injection suite from one command, with a summary table (issue #6).

    .venv/bin/python bench/fault_suite.py                 # tests/faults with the production-length faults
    .venv/bin/python bench/fault_suite.py --soak 600      # ... then a 10-minute soak against a worker
    .venv/bin/python bench/fault_suite.py --soak 600 --skip-tests   # the soak alone
    .venv/bin/python bench/fault_suite.py --broker apache -- -k producers   # one file, on Apache Kafka

The fault scenarios are the pytest tests in tests/faults (each starts its own broker, Redis and `recal worker`
processes): the issue #6 faults (crash, Redis, broker, hostile input) and the producer-side ones of issue #13
(impressions dated 1-23 h ahead, a CRC32-partitioned producer, 20,000 distinct segment values against the
cardinality cap, models listed twice in one impression, a calibrator config change between two restarts,
duplicated and fenced snapshots, kafka:// broker URLs with a bearer token). This script runs them with a
results file (FAULT_RESULTS) and the full fault lengths (Redis down 30 s, broker frozen 15 s, 100,000 hostile
messages, the default cardinality cap of 10,000), then prints one row per scenario: faults injected, events
sent, labeled examples and positives (one number where expected and observed agree, both and MISMATCH where
not), dead letters by reason expected and observed, max worker RSS, PASS/FAIL (the test's outcome: its
assertions are the exact checks).

The soak drives `streams.dev.simulator.run_simulation` at a steady rate against one worker, samples the worker's
RSS and /stats every 10 s, and reports the RSS slope after warm-up, the pending join state against
rate x window, and what the worker exposes about its event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import orjson
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streams.dev.devstack import DevStack, WorkerProcess, namespace_toml  # noqa: E402
from streams.dev.simulator import TrafficScenario, run_simulation  # noqa: E402
from streams.pipeline.config import load_config  # noqa: E402


# -- the pytest scenarios ----------------------------------------------------------------------------------
def run_tests(args: argparse.Namespace, results: Path) -> tuple[int, dict[str, str]]:
    junit = results.with_suffix(".xml")
    env = {
        **os.environ,
        "FAULT_RESULTS": str(results),
        "FAULT_REDIS_OUTAGE_S": str(args.redis_outage),
        "FAULT_BROKER_PAUSE_S": str(args.broker_pause),
        "FAULT_HOSTILE_N": str(args.hostile),
        "FAULT_SEED": str(args.seed),
        "FAULT_MAX_SEGMENTS": str(args.max_segments),
        **({"RECAL_TEST_BROKER": args.broker} if args.broker else {}),
    }
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "tests/faults",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        f"--basetemp={tempfile.mkdtemp(prefix='recal-faults-')}",
        *args.pytest_args,
    ]
    print("$", " ".join(cmd), flush=True)
    started = time.monotonic()
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    print(f"pytest exit code {rc} after {time.monotonic() - started:.0f} s", flush=True)
    outcomes: dict[str, str] = {}
    if junit.exists():
        for case in ET.parse(junit).iter("testcase"):
            tags = {child.tag for child in case}
            outcome = (
                "failed"
                if tags & {"failure", "error"}
                else "xfail"
                if "skipped" in tags and "xfail" in ET.tostring(case, "unicode")
                else "skipped"
                if "skipped" in tags
                else "passed"
            )
            outcomes[case.get("name", "")] = outcome
    return rc, outcomes


# -- the soak ----------------------------------------------------------------------------------------------
SOAK_DEFAULTS = """
[defaults]
window = "10m"
allowed_lateness = "30s"
segment_by = [["platform", "placement"], ["placement"]]
half_life = "6h"
refresh_interval = "5s"

[models.ctr]
label = "click"

[models.cvr]
label = "conversion"
population = "click"
click_window = "10m"
window = "30m"
segment_by = [["placement"]]

"""

# Pending join state: an unclicked impression is final once ctr's window (and cvr's click window) closes,
# 10 min + 30 s lateness of event time; a clicked one waits for cvr's 30 min window.
UNCLICKED_HORIZON_S = 10 * 60 + 30
CLICKED_HORIZON_S = 30 * 60 + 30
CLICK_SHARE = 0.03  # the simulator's mean CTR is about 2-3%


def soak(duration_s: float, rate: float, speed: float, sample_s: float = 10.0) -> dict:
    ns = f"soak{uuid.uuid4().hex[:6]}"
    workdir = Path(tempfile.mkdtemp(prefix="recal-soak-"))
    config = workdir / "soak.toml"
    config.write_text(SOAK_DEFAULTS + namespace_toml(ns, partitions=2, checkpoint_interval="5s"))
    topics = load_config(config, env={}).topics
    samples: list[tuple[float, float, dict]] = []
    with DevStack() as stack:
        worker = WorkerProcess(config, stack.broker_url, stack.redis_url, workdir / "worker.log")
        proc = worker.proc
        try:
            worker.wait_for(lambda stats: stats.get("partitions"), 90, "partitions assigned", poll_s=0.5)
            ps = psutil.Process(proc.pid)
            stop = threading.Event()
            started = time.monotonic()

            def sample() -> None:
                while not stop.wait(sample_s):
                    if proc.poll() is not None:
                        return
                    rss = ps.memory_info().rss / 2**20
                    samples.append((time.monotonic() - started, rss, {**worker.stats(), "threads": ps.num_threads()}))
                    print(
                        f"  soak t={samples[-1][0]:5.0f}s rss={rss:6.1f} MB pending={samples[-1][2].get('pending')}"
                        f" events_in={sum(samples[-1][2].get('events_in', {}).values())}",
                        flush=True,
                    )

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            scenario = TrafficScenario(
                seed=6,
                speed=speed,
                click_window_s=600,
                conversion_window_s=1800,
                conversion_delay_median_s=300,
                malformed_share=0.001,
            )
            result = asyncio.run(
                run_simulation(scenario, stack.broker_url, rate=rate, duration_s=duration_s, topics=topics)
            )
            time.sleep(sample_s + 1)
            stop.set()
            sampler.join()
            crashed = proc.poll() is not None
        finally:
            worker.stop()
    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples])
    warm = t >= min(120.0, duration_s / 3)
    slope = float(np.polyfit(t[warm] / 60, rss[warm], 1)[0]) if warm.sum() >= 3 else float("nan")
    last = samples[-1][2] if samples else {}
    achieved = result.impressions_per_s
    return {
        "duration_s": duration_s,
        "rate_target": rate,
        "rate_achieved": round(achieved),
        "speed": speed,
        "impressions": result.counters.impressions,
        "messages": sum(result.counters.sent.values()),
        "malformed_sent": sum(result.counters.malformed.values()),
        "rss_start_mb": round(float(rss[0]), 1) if rss.size else None,
        "rss_max_mb": round(float(rss.max()), 1) if rss.size else None,
        "rss_slope_mb_per_min": round(slope, 2),
        "pending_last": last.get("pending"),
        "pending_max": max((s[2].get("pending") or 0) for s in samples),
        "pending_expected (rate x window / speed)": round(
            achieved * ((1 - CLICK_SHARE) * UNCLICKED_HORIZON_S + CLICK_SHARE * CLICKED_HORIZON_S) / speed
        ),
        "events_in": sum(last.get("events_in", {}).values()),
        "labeled": last.get("labeled"),
        "dead_letters": last.get("dead_letters"),
        "threads_last": last.get("threads"),
        "asyncio_tasks": "not exposed by /stats (threads via psutil instead)",
        "crashed": crashed,
        "worker_log": str(workdir / "worker.log"),
    }


# -- the table ---------------------------------------------------------------------------------------------
def _count(expected, observed) -> str:
    """`expected / observed`, or one number where they agree, or '-' where the scenario defines none."""
    if expected is None or observed is None:
        return "-"
    return f"{expected:,}" if expected == observed else f"{expected:,} / {observed:,} (MISMATCH)"


def _letters(letters: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(letters.items(), key=lambda kv: -kv[1])) or "none"


def table(rows: list[dict], outcomes: dict[str, str]) -> str:
    """One row per scenario: expected and observed counts (one number where they agree) and PASS/FAIL,
    which is the test's outcome (its assertions are the exact checks)."""
    lines = [
        "| scenario | faults injected | events sent | labeled examples | positives | dead letters expected"
        " | dead letters observed | max RSS MB | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        letters = row.get("dead_letters") or {}
        expected = row.get("dead_letters_expected")
        outcome = outcomes.get(row["test"], "?")
        result = {"passed": "PASS", "failed": "FAIL"}.get(outcome, outcome)
        expected_text = "-" if expected is None else _letters(expected)
        observed_text = _letters(letters) if letters or expected is not None else "-"
        lines.append(
            f"| {row['scenario']} | {row.get('faults', 0):,} | {row.get('events_sent', 0):,} "
            f"| {_count(row.get('labels_expected'), row.get('labels_counted'))} "
            f"| {_count(row.get('positives_expected'), row.get('positives_counted'))} "
            f"| {expected_text} | {observed_text} "
            f"| {row.get('max_rss_mb', '-')} | {result} |"
        )
    other = [f"{name}: {o}" for name, o in outcomes.items() if name not in {r["test"] for r in rows}]
    if other:
        lines.append("")
        lines.append("other tests: " + "; ".join(other))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-outage", type=float, default=30.0, help="seconds Redis stays down")
    parser.add_argument("--broker-pause", type=float, default=15.0, help="seconds the broker is frozen")
    parser.add_argument("--hostile", type=int, default=100_000, help="malformed messages sent")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument(
        "--max-segments", type=int, default=10_000, help="the cardinality cap against 20,000 segment values"
    )
    parser.add_argument("--broker", default="", help="tansu | apache | both (default: $RECAL_TEST_BROKER or tansu)")
    parser.add_argument("--soak", type=float, default=0.0, help="seconds of soak traffic (0: no soak)")
    parser.add_argument("--soak-rate", type=float, default=2000.0, help="impressions per wall second")
    parser.add_argument("--soak-speed", type=float, default=60.0, help="event seconds per wall second")
    parser.add_argument("--skip-tests", action="store_true", help="only the soak")
    parser.add_argument("--results", default="", help="JSON-lines results file (default: a temp file)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args()

    results = Path(args.results or tempfile.mkstemp(prefix="recal-faults-", suffix=".jsonl")[1])
    results.write_text("")
    rc, outcomes = (0, {}) if args.skip_tests else run_tests(args, results)
    rows = [orjson.loads(line) for line in results.read_text().splitlines() if line.strip()]
    if rows or outcomes:
        print()
        print(table(rows, outcomes))
        for row in rows:
            if row.get("detail"):
                print(f"  {row['scenario']}: {orjson.dumps(row['detail']).decode()[:400]}")
    if args.soak > 0:
        print(
            f"\nsoak: {args.soak:.0f} s at {args.soak_rate:.0f} impressions/s (speed {args.soak_speed:.0f})", flush=True
        )
        report = soak(args.soak, args.soak_rate, args.soak_speed)
        print()
        print("| soak measure | value |")
        print("|---|---|")
        for key, value in report.items():
            print(f"| {key} | {value} |")
        if report["crashed"]:
            rc = rc or 1
    print(f"\nresults: {results}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
