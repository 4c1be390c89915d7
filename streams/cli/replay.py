"""`recal replay`: rebuild calibration maps from history into a namespace of their own (docs/replay.md)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import UTC, datetime

import redis

from streams.cli import connect
from streams.pipeline.publisher import MapPublisher
from streams.replay import Progress, ReplayRange, format_summary, replay_labeled, replay_raw, summarize


def parse_time_ms(text: str) -> int:
    """'2026-11-01T00:00Z' (ISO 8601; naive times are UTC) or epoch milliseconds -> epoch ms."""
    if text.isdigit():
        return int(text)
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("replay", help="rebuild calibrators from history (labeled or raw topics)")
    p.add_argument("--config", help="TOML config file (models, topics, worker settings)")
    connect.add_broker_argument(p)
    connect.add_redis_argument(p)
    p.add_argument(
        "--source",
        choices=("labeled", "raw"),
        default="labeled",
        help="labeled: the join's output, byte-identical maps (default); raw: re-join the sources",
    )
    p.add_argument("--from", dest="from_time", type=parse_time_ms, help="event time, inclusive (ISO or epoch ms)")
    p.add_argument("--to", dest="to_time", type=parse_time_ms, help="event time, exclusive (ISO or epoch ms)")
    p.add_argument("--start-offset", type=int, help="first offset of every partition")
    p.add_argument("--end-offset", type=int, help="end offset (exclusive) of every partition (default: the end)")
    p.add_argument("--partitions", help="comma-separated partitions of the labeled topic (default: all)")
    p.add_argument("--models", help="comma-separated models (default: all)")
    p.add_argument("--prefix", help="Redis namespace for the rebuilt maps (default: recal-replay-<UTC time>)")
    p.add_argument("--promote", action="store_true", help="then copy the rebuilt maps into the live prefix")
    p.add_argument("--force", action="store_true", help="with --promote: replace live maps even when not older")
    p.add_argument("--no-publish", action="store_true", help="only print the summary")
    p.add_argument("--checkpoint", help="file for the replay's progress; an interrupted replay resumes from it")
    p.add_argument("--checkpoint-every", type=float, default=10.0, help="seconds between checkpoints")
    p.set_defaults(func=cmd_replay)
    return p


def cmd_replay(args: argparse.Namespace) -> int:
    from streams.pipeline.config import load_config

    config = load_config(args.config, broker=args.broker, redis=connect.checked_redis(args.redis))
    rng = ReplayRange(args.start_offset, args.end_offset, args.from_time, args.to_time)
    models = {m.strip() for m in args.models.split(",") if m.strip()} if args.models else None
    partitions = [int(p) for p in args.partitions.split(",")] if args.partitions else None
    prefix = args.prefix or f"{config.prefix}-replay-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
    if prefix == config.prefix:
        print(f"refusing to replay into the live prefix {prefix!r}; use --promote", file=sys.stderr)
        return 2
    if args.source == "raw" and (args.checkpoint or partitions):
        print("--checkpoint and --partitions apply to --source labeled only", file=sys.stderr)
        return 2

    async def run():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        progress = Progress(0)
        if args.source == "raw":
            return await replay_raw(config, rng, models, progress=progress)
        return await replay_labeled(
            config,
            rng,
            models,
            checkpoint=args.checkpoint,
            checkpoint_every_s=args.checkpoint_every,
            progress=progress,
            stop=stop,
            partitions=partitions,
        )

    result = asyncio.run(run())
    if result.interrupted:
        where = f"; resume with the same command (checkpoint {args.checkpoint})" if args.checkpoint else ""
        print(f"replay interrupted after {result.seconds:.1f}s{where}", file=sys.stderr)
        return 130
    client = redis.Redis.from_url(config.redis)
    statuses: dict[str, str] = {}
    try:
        live = MapPublisher(client, prefix=config.prefix).list_maps()
        if not args.no_publish:
            publisher = MapPublisher(client, prefix=prefix)
            for r in publisher.publish_many(result.maps):
                statuses[r.field] = r.status
        rows = summarize(result.maps, result.aggregator, live, statuses)
        print(format_summary(rows))
        rate = result.examples / result.seconds if result.seconds else 0.0
        print(
            f"\n{result.records:,} records, {result.examples:,} examples in {result.seconds:.2f}s "
            f"({rate:,.0f} examples/s); {result.superseded} superseded records dropped"
            + (f", {result.conflicts} CONFLICTS (see log)" if result.conflicts else "")
            + ("" if args.no_publish else f"; {len(result.maps)} maps in prefix {prefix!r}")
        )
        if args.promote and not args.no_publish:
            counts = MapPublisher(client, prefix=config.prefix).promote(prefix, config.prefix, force=args.force)
            print(f"promoted into {config.prefix!r}: {counts}")
    finally:
        client.close()
    return 0
