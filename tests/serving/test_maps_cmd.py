"""`recal maps` subcommands, through argparse and the handlers, against a real Redis."""

from __future__ import annotations

import argparse

import orjson

from streams.cli.maps import register
from streams.pipeline.publisher import MapPublisher


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="recal")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_list_and_show(r, redis_url, make_map, capsys):
    MapPublisher(r).publish_many([make_map(segment={"p": "a"}, version=4), make_map(model="cvr", updated_at=0)])
    r.hset("recal:maps", "ctr:p=broken", 1)
    assert run(["maps", "list", "--redis", redis_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["MODEL", "SEGMENT", "VERSION", "METHOD", "N", "AGE"]
    assert lines[1].split()[:5] == ["ctr", "p=a", "4", "isotonic", "1000"]
    assert lines[1].split()[5].endswith("d")  # updated_at in 2023
    assert lines[2].split() == ["ctr", "p=broken", "?", "<unreadable>"]
    assert lines[3].split() == ["cvr", "*", "1", "isotonic", "1000", "-"]

    assert run(["maps", "show", "ctr", "p=a", "--redis", redis_url]) == 0
    shown = orjson.loads(capsys.readouterr().out)
    assert shown["version"] == 4 and shown["segment"] == {"p": "a"}
    assert run(["maps", "show", "ctr", "p=zzz", "--redis", redis_url]) == 1
    assert "no map" in capsys.readouterr().err


def test_env_default_and_prefix(r, redis_url, make_map, capsys, monkeypatch):
    MapPublisher(r, prefix="shadow").publish(make_map())
    monkeypatch.setenv("RECAL_REDIS", redis_url)
    assert run(["maps", "list", "--prefix", "shadow"]) == 0
    assert "ctr" in capsys.readouterr().out


def test_promote_and_rollback(r, redis_url, make_map, capsys):
    MapPublisher(r, prefix="shadow").publish(make_map(version=2, lift=0.1))
    MapPublisher(r).publish(make_map(version=5))
    assert run(["maps", "promote", "--from", "shadow", "--redis", redis_url]) == 0
    assert capsys.readouterr().out.strip() == "published=0 refused_stale=1 invalid=0"
    assert run(["maps", "promote", "--from", "shadow", "--force", "--redis", redis_url]) == 0
    assert capsys.readouterr().out.strip() == "published=1 refused_stale=0 invalid=0"
    assert r.hget("recal:maps", "ctr:*") == b"6"

    assert run(["maps", "rollback", "ctr", "*", "--redis", redis_url]) == 0
    assert capsys.readouterr().out.strip() == "ctr:*: published version=7"
    assert MapPublisher(r).get_map("ctr", "*").apply_one(0.5) == 0.25  # the v5 content again
    assert run(["maps", "rollback", "ctr", "*", "--steps", "50", "--redis", redis_url]) == 1
    assert "rollback failed" in capsys.readouterr().err
