"""The worker's surface (#13 items 15, 17; #10 item 3): broker addresses in every form, Redis passwords kept
out of reprs and command lines, the bind address and bearer token of the web endpoints, the dashboard cache."""

from __future__ import annotations

import argparse
import logging

import pytest

from streams.cli import connect
from streams.pipeline.config import Config, load_config
from streams.pipeline.urls import parse_brokers, redact, with_password
from streams.pipeline.web import PageCache, bearer_ok

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("127.0.0.1:9092", "127.0.0.1:9092"),
        ("kafka://127.0.0.1:9092", "127.0.0.1:9092"),
        ("KAFKA://broker-1:9092/", "broker-1:9092"),
        ("a:1,b:2", "a:1,b:2"),
        ("kafka://a:1;kafka://b:2", "a:1,b:2"),
        ("kafka://a:1,b:2", "a:1,b:2"),
        (" a:1 , kafka://b:2 ", "a:1,b:2"),
        (["a:1", "kafka://b:2"], "a:1,b:2"),
        ("[::1]:9092", "[::1]:9092"),
        ("broker", "broker"),
    ],
)
def test_every_broker_form_is_accepted(given, expected):
    assert parse_brokers(given) == expected


@pytest.mark.parametrize("bad", ["", " , ", "http://a:1", "a:1/x", "user@a:1", 9092, ["a:1", 2]])
def test_bad_broker_addresses_are_refused_clearly(bad):
    with pytest.raises(ValueError):
        parse_brokers(bad)


def test_broker_from_env_toml_and_cli(tmp_path):
    toml = tmp_path / "w.toml"
    toml.write_text('[worker]\nbroker = ["kafka://t1:9092", "t2:9092"]\n')
    assert load_config(toml, env={}).broker == "t1:9092,t2:9092"
    assert load_config(toml, env={"RECAL_BROKER": "kafka://e:1"}).broker == "e:1"
    assert load_config(toml, env={"RECAL_BROKER": "e:1"}, broker="kafka://c:1;kafka://d:2").broker == "c:1,d:2"
    args = argparse.ArgumentParser()
    connect.add_broker_argument(args)
    assert connect.broker(args.parse_args(["--broker", "kafka://x:1"]).broker, env={}) == "x:1"
    assert connect.broker(None, env={"RECAL_BROKER": "kafka://y:2"}) == "y:2"
    assert connect.broker(None, env={}) == "localhost:9092"


def test_redis_password_never_in_repr_or_str(tmp_path):
    url = f"redis://:{SECRET}@cache.internal:6379/0"
    for config in (
        load_config(env={"RECAL_REDIS": url}),
        load_config(env={"RECAL_REDIS_PASSWORD": SECRET}),
        Config(redis=f"redis://user:{SECRET}@h/1", web_token=SECRET),
    ):
        assert SECRET not in repr(config) and SECRET not in str(config)
        assert "***" in repr(config)
    assert redact(url) == "redis://:***@cache.internal:6379/0"


def test_password_from_env_or_secret_file_joins_a_passwordless_url(tmp_path):
    secret = tmp_path / "redis_password"
    secret.write_text(SECRET + "\n")
    from_file = load_config(env={"RECAL_REDIS_PASSWORD_FILE": str(secret)}, redis="redis://cache:6379/0")
    assert from_file.redis == f"redis://:{SECRET}@cache:6379/0"
    # a URL that has its own password keeps it
    assert with_password("redis://:own@h/0", {"RECAL_REDIS_PASSWORD": SECRET}) == "redis://:own@h/0"
    assert connect.redis_url(None, env={"RECAL_REDIS_PASSWORD": "p@ss"}) == "redis://:p%40ss@localhost:6379/0"
    assert connect.redis_url("redis://r:1/2", env={"RECAL_REDIS": "redis://e:1/0"}) == "redis://r:1/2"
    assert connect.redis_url(None, env={"RECAL_REDIS": "redis://e:1/0"}) == "redis://e:1/0"


def test_a_password_on_the_command_line_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="recal.cli"):
        connect.redis_url(f"redis://:{SECRET}@h:1/0", env={})
    assert "RECAL_REDIS" in caplog.text and SECRET not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="recal.cli"):
        connect.redis_url("redis://h:1/0", env={})
    assert caplog.text == ""


def test_web_endpoints_bind_loopback_unless_told():
    assert Config().web_host == "127.0.0.1"
    assert load_config(env={"RECAL_WEB_HOST": "0.0.0.0"}).web_host == "0.0.0.0"
    assert load_config(env={"RECAL_WEB_TOKEN": SECRET}).web_token == SECRET


def test_create_app_binds_the_configured_address_and_leaves_kafka_to_aiokafka():
    from streams.pipeline.app import create_app

    app = create_app(Config(broker="kafka://127.0.0.1:1", web_port=1))
    assert app.conf.web_bind == "127.0.0.1"  # Faust binds web_bind (default 0.0.0.0), not web_host
    boot = app.boot_strategy  # no Faust consumer, producer or tables: the join and the partials consumer are ours
    assert [*boot.kafka_consumer(), *boot.kafka_producer(), *boot.tables()] == []


def test_bearer_token_check():
    assert bearer_ok(None, "")  # no token configured: open
    assert bearer_ok(f"Bearer {SECRET}", SECRET) and bearer_ok(f"bearer {SECRET}", SECRET)
    for header in (None, "", SECRET, f"Basic {SECRET}", "Bearer wrong", f"Bearer {SECRET}x"):
        assert not bearer_ok(header, SECRET)


def test_page_cache_renders_once_per_ttl_and_stays_bounded():
    now = [0.0]
    renders = []
    cache = PageCache(ttl=5.0, size=2, clock=lambda: now[0])

    def render(name):
        def draw():
            renders.append(name)
            return f"<p>{name}</p>"

        return draw

    assert cache.get("a", render("a")) == cache.get("a", render("a")) == "<p>a</p>"
    assert renders == ["a"]
    now[0] = 5.0
    cache.get("a", render("a"))
    assert renders == ["a", "a"]
    cache.get("b", render("b"))
    cache.get("c", render("c"))
    assert len(cache._pages) == 2 and "a" not in cache._pages
