"""`recal maps` subcommands, through argparse and the handlers, against a real Redis."""

from __future__ import annotations

import argparse

import orjson

from recalibrators.serving.keys import MapField
from streams.cli.maps import register
from streams.pipeline.publisher import MapPublisher


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="recal")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_list_and_show(r, redis_url, make_map, capsys):
    MapPublisher(r).publish_many([make_map(segment={"p": "a"}, map_version=4), make_map(model="cvr", updated_at=0)])
    r.hset("recal:maps", "ctr:v1:p=broken", 1)
    r.hset("recal:maps", "ctr:p=a", 3)  # a schema-1 key: listed as left untouched, never read
    assert run(["maps", "list", "--redis", redis_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["MODEL", "MODEL_VERSION", "SEGMENT", "MAP_VERSION", "METHOD", "N", "AGE"]
    assert lines[1].split()[:6] == ["ctr", "v1", "p=a", "4", "isotonic", "1000"]
    assert lines[1].split()[6].endswith("d")  # updated_at in 2023
    assert lines[2].split() == ["ctr", "v1", "p=broken", "?", "<unreadable>"]
    assert lines[3].split() == ["cvr", "v1", "*", "1", "isotonic", "1000", "-"]
    assert "1 schema-1 keys left untouched" in lines[4]

    assert run(["maps", "show", "ctr", "v1", "p=a", "--redis", redis_url]) == 0
    shown = orjson.loads(capsys.readouterr().out)
    assert shown["version"] == 4 and shown["model_version"] == "v1" and shown["segment"] == {"p": "a"}
    assert run(["maps", "show", "ctr", "v2", "p=a", "--redis", redis_url]) == 1  # never another version's
    assert "no map" in capsys.readouterr().err


def test_versions(r, redis_url, capsys):
    MapPublisher(r).publish_versions(
        "ctr",
        {
            "v1": {"first_event_ms": 1, "last_event_ms": 5, "examples": 10, "state": "retired"},
            "v2": {"first_event_ms": 4, "last_event_ms": 9, "examples": 7, "state": "live"},
        },
    )
    assert run(["maps", "versions", "ctr", "--redis", redis_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines[1:]] == [["v2", "live", "7", "4", "9"], ["v1", "retired", "10", "1", "5"]]


def test_env_default_and_prefix(r, redis_url, make_map, capsys, monkeypatch):
    MapPublisher(r, prefix="shadow").publish(make_map())
    monkeypatch.setenv("RECAL_REDIS", redis_url)
    assert run(["maps", "list", "--prefix", "shadow"]) == 0
    assert "ctr" in capsys.readouterr().out


def test_promote_and_rollback(r, redis_url, make_map, capsys):
    MapPublisher(r, prefix="shadow").publish(make_map(map_version=2, lift=0.1))
    MapPublisher(r).publish(make_map(map_version=5))
    assert run(["maps", "promote", "--from", "shadow", "--redis", redis_url]) == 0
    assert capsys.readouterr().out.strip() == "published=0 refused_stale=1 invalid=0 error=0"
    assert run(["maps", "promote", "--from", "shadow", "--force", "--redis", redis_url]) == 0
    assert capsys.readouterr().out.strip() == "published=1 refused_stale=0 invalid=0 error=0"
    assert r.hget("recal:maps", "ctr:v1:*") == b"6"

    assert run(["maps", "rollback", "ctr", "v1", "*", "--redis", redis_url]) == 0
    assert capsys.readouterr().out.strip() == "ctr:v1:*: published map_version=7"
    assert MapPublisher(r).get_map(MapField("ctr", "v1", "*")).apply_one(0.5) == 0.25  # the v5 content again
    assert run(["maps", "rollback", "ctr", "v1", "*", "--steps", "50", "--redis", redis_url]) == 1
    assert "rollback failed" in capsys.readouterr().err
