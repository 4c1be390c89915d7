"""A real Apache Kafka broker for the dev stack and CI: one KRaft node (broker + controller), from Maven jars.

`deploy/kafka/pom.xml` pins the release; `ensure_jars()` runs `mvn dependency:copy-dependencies` once to put the
broker and its runtime dependencies in `deploy/kafka/lib/` (git-ignored; Maven's download cache is ~/.m2).
`KafkaBroker.start()` formats a fresh storage directory under a random cluster id, writes `server.properties`
(the shared settings of `deploy/kafka/server.properties`, which docker-compose.yml also deploys, plus loopback
listeners on free ports), starts `kafka.Kafka` in its own process group with a bounded heap, and returns once
the broker answers a metadata request. `stop()` ends the process group and removes the data.

    >>> from streams.dev.devstack import DevStack
    >>> with DevStack(broker_impl="apache") as stack:  # doctest: +SKIP
    ...     print(stack.broker_url)
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from streams.dev.devstack import Server, free_port

KAFKA_DIR = Path(os.environ.get("RECAL_KAFKA_DIR", Path(__file__).resolve().parents[2] / "deploy" / "kafka"))
HEAP = os.environ.get("RECAL_KAFKA_HEAP", "-Xmx512m")
READY_TIMEOUT_S = 90.0


def kafka_version(pom: Path | None = None) -> str:
    """The release deploy/kafka/pom.xml pins."""
    text = (pom or KAFKA_DIR / "pom.xml").read_text()
    return re.search(r"<kafka\.version>([^<]+)</kafka\.version>", text).group(1)


def shared_settings(path: Path | None = None) -> dict[str, str]:
    """deploy/kafka/server.properties as a dict: the settings every deployment of the broker shares."""
    out = {}
    for line in (path or KAFKA_DIR / "server.properties").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def java_binary() -> str:
    java = Path(os.environ["JAVA_HOME"]) / "bin" / "java" if os.environ.get("JAVA_HOME") else None
    found = str(java) if java and java.exists() else shutil.which("java")
    if not found:
        raise RuntimeError("no `java` on PATH (the Apache broker needs a JDK 17+; .ci/run installs Debian's)")
    return found


def ensure_jars() -> Path:
    """deploy/kafka/lib with the pinned broker's jars, fetched through Maven on first use."""
    lib = KAFKA_DIR / "lib"
    if not (lib / f"kafka_2.13-{kafka_version()}.jar").exists():
        mvn = shutil.which("mvn")
        if not mvn:
            raise RuntimeError(f"no `mvn` on PATH to fetch the Kafka jars into {lib}")
        shutil.rmtree(lib, ignore_errors=True)  # another version's jars must not share the class path
        cmd = [mvn, "-q", "-B", "-f", str(KAFKA_DIR / "pom.xml"), "dependency:copy-dependencies"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{done.stdout}{done.stderr}")
    return lib


def random_cluster_id() -> str:
    """A KRaft cluster id as `kafka-storage random-uuid` prints it (URL-safe base64, no padding, no leading -)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


@dataclass
class KafkaBroker(Server):
    """`Server` for the Apache broker; `start_seconds` = format + start until it serves metadata."""

    controller_port: int = 0
    data_dir: str = ""
    start_seconds: float = 0.0
    format_seconds: float = 0.0

    def properties(self) -> str:
        settings = {
            **shared_settings(),
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.quorum.voters": f"{shared_settings()['node.id']}@127.0.0.1:{self.controller_port}",
            "log.dirs": f"{self.data_dir}/log",
        }
        return "".join(f"{k}={v}\n" for k, v in settings.items())

    def _java(self, main: str, *args: str, jvm: tuple[str, ...] = ()) -> list[str]:
        log4j = f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}"
        return [java_binary(), *jvm, log4j, "-cp", f"{ensure_jars()}/*", main, *args]

    def start(self) -> KafkaBroker:
        t0 = time.monotonic()
        self.controller_port = self.controller_port or free_port()
        self.data_dir = tempfile.mkdtemp(prefix="recal-kafka-")
        config = Path(self.data_dir) / "server.properties"
        config.write_text(self.properties())
        fmt = self._java(
            "kafka.tools.StorageTool",
            *("format", "--cluster-id", random_cluster_id(), "--config", str(config), "--ignore-formatted"),
            jvm=("-Xmx128m", "-XX:TieredStopAtLevel=1", "-Xshare:auto"),
        )
        done = subprocess.run(fmt, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"formatting {self.data_dir} failed:\n{done.stdout}{done.stderr}")
        self.format_seconds = time.monotonic() - t0
        self.argv = self._java("kafka.Kafka", str(config), jvm=(HEAP, "-Xms128m", "-Djava.awt.headless=true"))
        super().start()  # a new process group, listening on self.port
        _wait_for_metadata(self, READY_TIMEOUT_S)
        self.start_seconds = time.monotonic() - t0
        print(
            f"apache kafka {kafka_version()} on 127.0.0.1:{self.port}: formatted in {self.format_seconds:.1f} s,"
            f" serving metadata after {self.start_seconds:.1f} s",
            file=sys.stderr,
        )
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def apache(port: int | None = None) -> KafkaBroker:
    return KafkaBroker(name="kafka", port=port or free_port(), argv=[], new_session=True)


def _wait_for_metadata(broker: KafkaBroker, timeout_s: float) -> None:
    """Until a Metadata request lists a broker (KRaft: registered and unfenced, so topics can be created)."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import KafkaError

    async def serves() -> bool:
        client = AIOKafkaClient(bootstrap_servers=f"127.0.0.1:{broker.port}", request_timeout_ms=2000)
        try:
            await client.bootstrap()
            return bool(client.cluster.brokers())
        except KafkaError:
            return False
        finally:
            await client.close()

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not broker.running:
            raise RuntimeError(f"kafka exited with code {broker.proc.returncode}, see {broker.log_path}")
        with ThreadPoolExecutor(1) as pool:  # its own event loop: callers may be inside one (the benches)
            ready = pool.submit(asyncio.run, serves()).result()
        if ready:
            return
        time.sleep(0.2)
    broker.kill()
    raise RuntimeError(f"kafka served no metadata within {timeout_s:.0f} s, see {broker.log_path}")
