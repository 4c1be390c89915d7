"""`recal`: the command line of the stream workers, the simulator, the maps in Redis and the demo."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from streams.cli import connect, dashboard, maps, replay, simulate
from streams.pipeline import logsafe


def _worker(args: argparse.Namespace) -> int:
    from streams.pipeline import startup

    startup.mark("cli")
    import faust

    from streams.pipeline.app import create_app
    from streams.pipeline.config import load_config
    from streams.pipeline.topics import ensure_topics

    startup.mark("imports")

    config = load_config(
        args.config,
        broker=args.broker,
        redis=connect.checked_redis(args.redis),
        web_port=args.web_port,
        web_host=args.web_host,
        processes=args.processes,
    )
    asyncio.run(ensure_topics(config, create_sources=args.create_topics))
    startup.mark("topics")
    app = create_app(config)
    startup.mark("app")
    worker = faust.Worker(app, loglevel=args.loglevel)
    worker.execute_from_commandline()
    return 0


def _demo(args: argparse.Namespace) -> int:
    from streams.dev.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recal", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="run a stream worker (join, calibrate, publish)")
    worker.add_argument("--config", help="TOML config file (models, topics, worker settings)")
    connect.add_broker_argument(worker)
    connect.add_redis_argument(worker)
    worker.add_argument("--web-port", type=int, help="health/metrics port (default 6066)")
    worker.add_argument(
        "--web-host",
        help="bind address of the web endpoints (default 127.0.0.1; env RECAL_WEB_HOST; 0.0.0.0 in a container)",
    )
    worker.add_argument("--create-topics", action="store_true", help="create missing source topics (dev)")
    worker.add_argument(
        "--processes",
        type=int,
        help=(
            "join processes in this worker, one consumer group (default: [worker] processes, else 1; "
            "0: one per CPU this process may run on)"
        ),
    )
    worker.add_argument("--loglevel", default="info")
    worker.set_defaults(func=_worker)

    demo = sub.add_parser("demo", help="dev broker + Redis + worker + simulator, then a report")
    demo.add_argument(
        "--broker-impl",
        choices=("tansu", "apache"),
        default="tansu",
        help="tansu: embedded, no JVM (default); apache: Apache Kafka from Maven jars (needs java and mvn)",
    )
    demo.add_argument("--rate", type=float, default=3000.0, help="impressions per wall second")
    demo.add_argument("--duration", type=float, default=75.0, help="wall seconds of traffic")
    demo.add_argument("--speed", type=float, default=120.0, help="event seconds per wall second")
    demo.add_argument("--out", default="artifacts", help="where the report and the PNG go")
    demo.add_argument("--keep-running", action="store_true", help="keep the stack up for the dashboard")
    demo.set_defaults(func=_demo)

    simulate.register(sub)
    maps.register(sub)
    replay.register(sub)
    dashboard.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logsafe.install()
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
