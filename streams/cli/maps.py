"""`recal maps`: list, show, plot, promote and roll back the calibration maps in Redis."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import redis

from recalibrators.calibration_map import CalibrationMap
from streams.cli import connect
from streams.dashboard.plots import map_png
from streams.pipeline.publisher import MapPublisher


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `maps` command; each leaf sets `func(args) -> int` (the exit code)."""
    common = argparse.ArgumentParser(add_help=False)
    connect.add_redis_argument(common)
    common.add_argument("--prefix", default="recal", help="key prefix (namespace) to act on (default: recal)")

    maps = subparsers.add_parser("maps", help="inspect and manage published calibration maps")
    sub = maps.add_subparsers(dest="maps_command", required=True)

    sub.add_parser("list", parents=[common], help="table of every map").set_defaults(func=cmd_list)

    show = sub.add_parser("show", parents=[common], help="one map as pretty JSON")
    show.add_argument("model")
    show.add_argument("segment_key", help="e.g. 'placement=search|platform=ios' or '*'")
    show.set_defaults(func=cmd_show)

    plot = sub.add_parser("plot", parents=[common], help="one map's reliability diagram as a PNG (matplotlib)")
    plot.add_argument("model")
    plot.add_argument("segment_key")
    plot.add_argument("-o", "--out", required=True, help="output file (.png, or any format matplotlib writes)")
    plot.set_defaults(func=cmd_plot)

    promote = sub.add_parser("promote", parents=[common], help="copy a namespace's maps into the live one")
    promote.add_argument("--from", dest="from_prefix", required=True, help="source namespace (prefix)")
    promote.add_argument("--to", dest="to_prefix", default=None, help="target namespace (default: --prefix)")
    promote.add_argument("--force", action="store_true", help="replace live maps even when not older")
    promote.set_defaults(func=cmd_promote)

    rollback = sub.add_parser("rollback", parents=[common], help="republish an earlier map from history")
    rollback.add_argument("model")
    rollback.add_argument("segment_key")
    rollback.add_argument("--steps", type=int, default=1, help="how many publishes back (default: 1)")
    rollback.set_defaults(func=cmd_rollback)
    return maps


@contextmanager
def _publisher(args: argparse.Namespace) -> Iterator[MapPublisher]:
    with redis.Redis.from_url(connect.redis_url(args.redis)) as client:
        yield MapPublisher(client, prefix=args.prefix)


def _age(updated_at_ms: int) -> str:
    if updated_at_ms <= 0:
        return "-"
    seconds = max(0.0, time.time() - updated_at_ms / 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def cmd_list(args: argparse.Namespace) -> int:
    rows = [("MODEL", "SEGMENT", "VERSION", "METHOD", "N", "AGE")]
    with _publisher(args) as pub:
        listed = pub.list_maps()
    for field, m in listed.items():
        model, segment = field.split(":", 1)
        if m is None:
            rows.append((model, segment, "?", "<unreadable>", "", ""))
        else:
            rows.append((model, segment, str(m.version), m.method, f"{m.n:.0f}", _age(m.updated_at)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _read_map(args: argparse.Namespace) -> CalibrationMap | None:
    """The map named by the arguments, or None after telling stderr why there is none."""
    try:
        with _publisher(args) as pub:
            m = pub.get_map(args.model, args.segment_key)
    except ValueError as exc:
        print(f"invalid map under {args.model}:{args.segment_key}: {exc}", file=sys.stderr)
        return None
    if m is None:
        print(f"no map {args.model}:{args.segment_key} under prefix {args.prefix!r}", file=sys.stderr)
    return m


def cmd_show(args: argparse.Namespace) -> int:
    m = _read_map(args)
    if m is None:
        return 1
    print(orjson.dumps(orjson.loads(m.to_json()), option=orjson.OPT_INDENT_2).decode())
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    with _publisher(args) as pub:
        counts = pub.promote(args.from_prefix, args.to_prefix or args.prefix, force=args.force)
    print(" ".join(f"{name}={count}" for name, count in counts.items()))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    try:
        with _publisher(args) as pub:
            result = pub.rollback(args.model, args.segment_key, steps=args.steps)
    except (LookupError, ValueError) as exc:
        print(f"rollback failed: {exc}", file=sys.stderr)
        return 1
    print(f"{result.field}: {result.status} version={result.version}")
    return 0 if result.published else 1


def cmd_plot(args: argparse.Namespace) -> int:
    m = _read_map(args)
    if m is None:
        return 1
    try:
        map_png(m, args.out)
    except ImportError as exc:  # the production image installs recal[stream] only
        print(f"maps plot needs matplotlib ({exc}): pip install 'recal[demo]'", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0
