"""`recal simulate`: synthetic impressions, clicks and conversions into Kafka, at a chosen rate."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from streams.cli import connect
from streams.dev.simulator import Counters, SimulationResult, TrafficScenario, create_missing_topics, run_simulation
from streams.pipeline.config import Topics


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `simulate` command; it sets `func(args) -> int` (the exit code)."""
    defaults, topics = TrafficScenario(), Topics()
    p = subparsers.add_parser("simulate", help="produce synthetic ad traffic with known true probabilities")
    connect.add_broker_argument(p)
    p.add_argument("--rate", type=float, default=10_000.0, help="impressions per wall second (default 10000)")
    p.add_argument("--duration", type=float, default=60.0, help="wall seconds of traffic (default 60)")
    p.add_argument(
        "--speed",
        type=float,
        default=defaults.speed,
        help=f"event seconds per wall second (default {defaults.speed:g})",
    )
    p.add_argument(
        "--t0-ms",
        type=int,
        default=None,
        help="event time of the start, epoch ms (default: duration*speed before now, so the run ends at now: "
        "brokers reject record timestamps far ahead of their clock, Kafka 4 beyond 1h by default, and the "
        "workers beyond max_future_skew)",
    )
    p.add_argument("--malformed", type=float, default=0.0, help="malformed messages per impression (0..1)")
    p.add_argument("--batched", type=float, default=0.0, help="share of impressions sent in JSON arrays")
    p.add_argument(
        "--drift-at",
        type=float,
        default=None,
        help="event seconds after the start when every miscalibration changes (default: never)",
    )
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--create-topics", action="store_true", help="create the three topics if missing")
    p.add_argument("--partitions", type=int, default=4, help="partitions of created topics (default 4)")
    p.add_argument("--impressions-topic", default=topics.impressions)
    p.add_argument("--clicks-topic", default=topics.clicks)
    p.add_argument("--conversions-topic", default=topics.conversions)
    p.set_defaults(func=cmd_simulate)
    return p


def _progress(c: Counters, event_ms: int, wall_s: float) -> None:
    print(
        f"[{wall_s:5.0f}s] impressions {c.impressions:>10,}  clicks {c.clicks:>8,}  "
        f"conversions {c.conversions:>7,}  malformed {sum(c.malformed.values()):>6,}",
        file=sys.stderr,
    )


def summary(result: SimulationResult) -> str:
    c = result.counters
    hours = (result.end_event_ms - result.t0_ms) / 3_600_000
    lines = [
        f"wall {result.wall_s:.1f}s, event time {hours:.2f}h from t0={result.t0_ms}",
        f"impressions {c.impressions:,} ({result.impressions_per_s:,.0f}/s), "
        f"messages {sum(c.sent.values()):,} ({result.messages_per_s:,.0f}/s)",
        f"clicks {c.clicks:,} (duplicates {c.duplicates:,}, sent before their impression {c.reordered:,}, "
        f"late {c.late_clicks:,}), conversions {c.conversions:,} (beyond the window {c.late_conversions:,})",
        f"array messages {c.array_messages:,}; still scheduled at the end {result.pending:,}",
        "sent by topic: " + ", ".join(f"{t} {n:,}" for t, n in sorted(c.sent.items())),
        "malformed: " + (", ".join(f"{k} {n:,}" for k, n in sorted(c.malformed.items())) or "none"),
    ]
    return "\n".join(lines)


def cmd_simulate(args: argparse.Namespace) -> int:
    topics = Topics(impressions=args.impressions_topic, clicks=args.clicks_topic, conversions=args.conversions_topic)
    t0_ms = args.t0_ms if args.t0_ms is not None else int((time.time() - args.duration * args.speed) * 1000)
    try:
        args.broker = connect.broker(args.broker)
        if args.rate <= 0 or args.duration <= 0:
            raise ValueError("--rate and --duration must be positive")
        scenario = TrafficScenario(
            seed=args.seed,
            t0_ms=t0_ms,
            speed=args.speed,
            malformed_share=args.malformed,
            batched_share=args.batched,
            drift_at_s=args.drift_at,
        )
    except ValueError as exc:
        print(f"recal simulate: {exc}", file=sys.stderr)
        return 2
    if args.create_topics:
        names = [topics.impressions, topics.clicks, topics.conversions]
        created = asyncio.run(create_missing_topics(args.broker, names, args.partitions))
        print(f"created topics: {', '.join(created) or 'none (all exist)'}", file=sys.stderr)
    result = asyncio.run(
        run_simulation(
            scenario, args.broker, rate=args.rate, duration_s=args.duration, topics=topics, progress_cb=_progress
        )
    )
    print(summary(result))
    return 0
