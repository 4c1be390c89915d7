"""Connection arguments shared by every `recal` command: `--broker` and `--redis`, their environment
variables and defaults, in one place.

    --broker   host:port, a comma-separated list or kafka:// URLs; else $RECAL_BROKER; else localhost:9092
    --redis    a Redis URL; else $RECAL_REDIS; else redis://localhost:6379/0

Passwords: prefer the environment. A command line is visible to every user of the machine (`ps`), so a
`--redis` URL carrying a password logs a warning; put the whole URL in RECAL_REDIS, or only the password in
RECAL_REDIS_PASSWORD / RECAL_REDIS_PASSWORD_FILE (applied to a URL without one). Kafka SASL passwords are
read from RECAL_KAFKA_SASL_PASSWORD only.
"""

from __future__ import annotations

import argparse
import logging
import os

from streams.pipeline import urls

log = logging.getLogger("recal.cli")


def add_broker_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker",
        default=None,
        help=f"Kafka bootstrap servers: host:port[,host:port] or kafka:// URLs "
        f"(default: ${urls.BROKER_ENV} or {urls.DEFAULT_BROKER})",
    )


def add_redis_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis",
        default=None,
        help=f"Redis URL (default: ${urls.REDIS_ENV} or {urls.DEFAULT_REDIS}); "
        f"keep passwords in ${urls.REDIS_ENV} or ${urls.REDIS_PASSWORD_ENV}, not on the command line",
    )


def checked_redis(value: str | None) -> str | None:
    """A `--redis` value as given, after warning when it carries a password."""
    if value and urls.has_password(value):
        log.warning(
            "the --redis URL carries a password, visible to every user of this machine (ps): set %s or %s instead",
            urls.REDIS_ENV,
            urls.REDIS_PASSWORD_ENV,
        )
    return value


def broker(value: str | None, env: dict[str, str] | None = None) -> str:
    """The bootstrap servers from `--broker`, else the environment, else the default; normalised."""
    env = os.environ if env is None else env
    return urls.parse_brokers(value or env.get(urls.BROKER_ENV) or urls.DEFAULT_BROKER)


def redis_url(value: str | None, env: dict[str, str] | None = None) -> str:
    """The Redis URL from `--redis`, else the environment, else the default; with the environment's password."""
    env = os.environ if env is None else env
    return urls.with_password(checked_redis(value) or env.get(urls.REDIS_ENV) or urls.DEFAULT_REDIS, env)
