"""Connection strings: Kafka bootstrap servers in every form users type, Redis URLs and their passwords.

Brokers (CLI `--broker`, `RECAL_BROKER`, TOML `[worker] broker`, a string or an array) may be `host:port`,
a comma- or semicolon-separated list, or Faust's own `kafka://host:port` URLs (also `kafka://a:1;kafka://b:2`);
they are normalised to aiokafka's `host:port,host:port`.

Redis passwords belong in the environment, not on a command line (`ps` shows it to every user of the
machine): `RECAL_REDIS_PASSWORD`, or `RECAL_REDIS_PASSWORD_FILE` (a mounted secret), is applied to a
password-less URL. A URL's password is never shown: `redact` replaces it in every repr and log line.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

BROKER_ENV = "RECAL_BROKER"
REDIS_ENV = "RECAL_REDIS"
REDIS_PASSWORD_ENV = "RECAL_REDIS_PASSWORD"
REDIS_PASSWORD_FILE_ENV = "RECAL_REDIS_PASSWORD_FILE"
DEFAULT_BROKER = "localhost:9092"
DEFAULT_REDIS = "redis://localhost:6379/0"

_SEPARATORS = re.compile(r"[,;\s]+")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(:\d{1,5})?$")


def parse_brokers(value: str | list[str] | tuple[str, ...]) -> str:
    """Bootstrap servers in any accepted form -> "host:port,host:port".

    >>> parse_brokers("kafka://127.0.0.1:9092")
    '127.0.0.1:9092'
    >>> parse_brokers("kafka://a:9092;kafka://b:9093"), parse_brokers(" a:1, b:2 "), parse_brokers(["a:1", "kafka://b:2"])
    ('a:9092,b:9093', 'a:1,b:2', 'a:1,b:2')
    """
    items = list(value) if isinstance(value, list | tuple) else [value]
    hosts = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"broker must be a string or a list of strings, not {item!r}")
        for part in _SEPARATORS.split(item.strip()):
            if not part:
                continue
            if "://" in part:
                scheme, _, part = part.partition("://")
                if scheme.lower() != "kafka":
                    raise ValueError(f"broker URL scheme must be kafka://, not {scheme}:// ({item!r})")
                part = part.rstrip("/")
            if not _HOST_PORT.match(part):
                raise ValueError(f"not a broker address: {part!r} (expected host:port or kafka://host:port)")
            hosts.append(part)
    if not hosts:
        raise ValueError("no broker address given")
    return ",".join(hosts)


def has_password(url: str) -> bool:
    return bool(urlsplit(url).password)


def with_password(url: str, env: dict[str, str]) -> str:
    """`url` with the environment's Redis password when it has none (`RECAL_REDIS_PASSWORD`, else the file
    `RECAL_REDIS_PASSWORD_FILE` names, trailing newline stripped)."""
    password = env.get(REDIS_PASSWORD_ENV) or ""
    if not password and env.get(REDIS_PASSWORD_FILE_ENV):
        password = Path(env[REDIS_PASSWORD_FILE_ENV]).read_text().rstrip("\r\n")
    if not password or has_password(url):
        return url
    parts = urlsplit(url)
    user = quote(parts.username or "", safe="")
    netloc = f"{user}:{quote(password, safe='')}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


def redact(url: str) -> str:
    """The URL with its password replaced by ***.

    >>> redact("redis://:s3cret@cache:6379/0"), redact("redis://user:p%40ss@cache/1"), redact("redis://cache")
    ('redis://:***@cache:6379/0', 'redis://user:***@cache/1', 'redis://cache')
    """
    parts = urlsplit(url)
    if not parts.password:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
