"""`recal maps`: list, show, plot, promote and roll back the calibration maps in Redis (schema-2 keys:
every map is named by MODEL MODEL_VERSION SEGMENT_KEY); `versions` lists a model's versions."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import redis

from recalibrators.calibration_map import CalibrationMap
from recalibrators.serving.keys import MapField
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

    versions = sub.add_parser("versions", parents=[common], help="a model's versions: live or retired")
    versions.add_argument("model")
    versions.set_defaults(func=cmd_versions)

    show = sub.add_parser("show", parents=[common], help="one map as pretty JSON")
    _map_arguments(show)
    show.set_defaults(func=cmd_show)

    plot = sub.add_parser("plot", parents=[common], help="one map's reliability diagram as a PNG (matplotlib)")
    _map_arguments(plot)
    plot.add_argument("-o", "--out", required=True, help="output file (.png, or any format matplotlib writes)")
    plot.set_defaults(func=cmd_plot)

    promote = sub.add_parser("promote", parents=[common], help="copy a namespace's maps into the live one")
    promote.add_argument("--from", dest="from_prefix", required=True, help="source namespace (prefix)")
    promote.add_argument("--to", dest="to_prefix", default=None, help="target namespace (default: --prefix)")
    promote.add_argument("--force", action="store_true", help="replace live maps even when not older")
    promote.set_defaults(func=cmd_promote)

    rollback = sub.add_parser("rollback", parents=[common], help="republish an earlier map from history")
    _map_arguments(rollback)
    rollback.add_argument("--steps", type=int, default=1, help="how many publishes back (default: 1)")
    rollback.set_defaults(func=cmd_rollback)
    return maps


def _map_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model")
    parser.add_argument("model_version", help="the model version the map calibrates, e.g. 'v2'")
    parser.add_argument("segment_key", help="e.g. 'placement=search|platform=ios' or '*'")


def _field(args: argparse.Namespace) -> MapField:
    return MapField(args.model, args.model_version, args.segment_key)


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


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def cmd_list(args: argparse.Namespace) -> int:
    rows = [("MODEL", "MODEL_VERSION", "SEGMENT", "MAP_VERSION", "METHOD", "N", "AGE")]
    with _publisher(args) as pub:
        listed = pub.list_maps()
        _, legacy = pub.fields()
    for field, m in listed.items():
        model, model_version, segment = MapField.parse(field)
        if m is None:
            rows.append((model, model_version, segment, "?", "<unreadable>", "", ""))
        else:
            rows.append((model, model_version, segment, str(m.map_version), m.method, f"{m.n:.0f}", _age(m.updated_at)))
    _table(rows)
    if legacy:
        print(f"({len(legacy)} schema-1 keys left untouched; see docs/serving.md, Migrating from schema 1)")
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    rows = [("MODEL_VERSION", "STATE", "EXAMPLES", "FIRST_EVENT_MS", "LAST_EVENT_MS")]
    with _publisher(args) as pub:
        versions = pub.list_versions(args.model)
    for version, info in sorted(versions.items(), key=lambda kv: -int(kv[1].get("last_event_ms", 0))):
        fields = ("state", "examples", "first_event_ms", "last_event_ms")
        rows.append((version, *(str(info.get(name)) for name in fields)))
    _table(rows)
    return 0


def _read_map(args: argparse.Namespace) -> CalibrationMap | None:
    """The map named by the arguments, or None after telling stderr why there is none."""
    try:
        field = _field(args)
        with _publisher(args) as pub:
            m = pub.get_map(field)
    except ValueError as exc:
        print(f"invalid map {args.model} {args.model_version} {args.segment_key}: {exc}", file=sys.stderr)
        return None
    if m is None:
        print(f"no map {field} under prefix {args.prefix!r}", file=sys.stderr)
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
            result = pub.rollback(args.model, args.model_version, args.segment_key, steps=args.steps)
    except (LookupError, ValueError) as exc:
        print(f"rollback failed: {exc}", file=sys.stderr)
        return 1
    print(f"{result.field}: {result.status} map_version={result.map_version}")
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
