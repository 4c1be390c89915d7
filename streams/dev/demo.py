"""`recal demo`: the whole system on one machine, from nothing, with one command.

Starts a dev broker (embedded Tansu, or Apache Kafka with `--broker-impl apache`) and Redis, a `recal worker`
process, and the simulator; shows progress; then scores the published maps against the simulator's true
probabilities (ECE and calibration ratio before and after) and writes a reliability diagram.
Ctrl-C at any point shuts down cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import redis

from streams.dev.devstack import DevStack, WorkerProcess
from streams.dev.report import evaluate, reliability_png, render_table, resolve_maps
from streams.dev.simulator import TrafficScenario, run_simulation
from streams.pipeline.config import load_config
from streams.pipeline.publisher import MapPublisher
from streams.pipeline.topics import ensure_topics

DEMO_CONFIG = Path(__file__).with_name("demo.toml")


def _progress_line(sim, event_ms: int, wall_s: float, worker: WorkerProcess, client: redis.Redis) -> str:
    stats = worker.stats(timeout_s=0.5)
    try:
        maps = client.hlen("recal:maps")
    except redis.RedisError:
        maps = "?"
    return (
        f"\r[{wall_s:5.0f}s] impressions sent {sim.impressions:>8,}  clicks {sim.clicks:>6,}  "
        f"events in {sum(stats.get('events_in', {}).values()):>8,}  "
        f"labeled {sum(stats.get('labeled', {}).values()):>8,}  maps {maps:>3}  "
        f"dead letters {sum(stats.get('dead_letters', {}).values()):>5,}"
    )


def run_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    worker = None
    with DevStack(broker_impl=args.broker_impl) as stack:
        try:
            config = load_config(DEMO_CONFIG, env={}, broker=stack.broker_url, redis=stack.redis_url)
            asyncio.run(ensure_topics(config, create_sources=True))
            log_path = out / "worker.log"
            log_path.unlink(missing_ok=True)
            print(f"broker {args.broker_impl} {stack.broker_url}  redis {stack.redis_url}  worker log {log_path}")
            worker = WorkerProcess(DEMO_CONFIG, stack.broker_url, stack.redis_url, log_path)
            worker.wait_ready()
            print(f"worker ready: dashboard {worker.url('/dashboard')}  metrics {worker.url('/metrics')}")
            client = redis.Redis.from_url(stack.redis_url)
            t0 = int(time.time() * 1000 - args.duration * args.speed * 1000)
            scenario = TrafficScenario(
                t0_ms=t0,
                speed=args.speed,
                malformed_share=0.01,
                batched_share=0.02,
                conversion_window_s=config.model("cvr").window_ms / 1000,  # the truth is P(conversion in it)
            )
            result = asyncio.run(
                run_simulation(
                    scenario,
                    stack.broker_url,
                    rate=args.rate,
                    duration_s=args.duration,
                    progress_cb=lambda c, ms, s: print(_progress_line(c, ms, s, worker, client), end="", flush=True),
                )
            )
            print(f"\nsimulator done: {result.impressions_per_s:,.0f} impressions/s; letting the worker drain")
            time.sleep(2 * config.refresh_interval_ms / 1000 + config.partials_interval_ms / 1000 + 1)
            print(_progress_line(result.counters, result.end_event_ms, result.wall_s, worker, client).strip())
            published = [m for m in MapPublisher(client).list_maps().values() if m is not None]
            versions = {spec.name: spec.version for spec in scenario.models}
            maps = resolve_maps(
                published, result.truth, lambda model: config.model(model).segment_by, versions.__getitem__
            )
            rows = evaluate(result.truth, maps)
            table = render_table(rows)
            print(table)
            (out / "report.txt").write_text(table + "\n")
            png = reliability_png(out / "reliability.png", result.truth, maps)
            print(f"reliability diagram: {png}")
            if args.keep_running:
                print(f"dashboard: {worker.url('/dashboard')} (Ctrl-C to stop)")
                while worker.alive():
                    time.sleep(1)
            return 0
        except KeyboardInterrupt:
            print("\ninterrupted: shutting down")
            return 130
        finally:
            if worker is not None:
                worker.stop()
