"""The worker's surface against a real broker and Redis (#13 items 15, 17): `recal worker --broker
kafka://host:port` (Faust's own URL form; before, the join's aiokafka clients died with `Unable connect to
"kafka://..."`), the bearer token on every endpoint but the probes, loopback by default (it listened on
every interface)."""

from __future__ import annotations

import urllib.error
import urllib.request

import orjson
import psutil
import pytest

from streams.dev.devstack import WorkerProcess
from tests.support.kit import config_text, new_ns

TOKEN = "fault-suite-token"


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.slow
def test_kafka_url_broker_and_bearer_token(stack, tmp_path):
    ns = new_ns()
    config = tmp_path / "recal.toml"
    config.write_text(config_text(ns))
    broker = f"kafka://{stack.broker_url};kafka://{stack.broker_url}"  # a list in Faust's form
    worker = WorkerProcess(config, broker, stack.redis_url, tmp_path / "worker.log", {"RECAL_WEB_TOKEN": TOKEN})
    try:
        worker.wait_ready()  # /readyz needs no token (probes carry none)
        assert get(worker.url("/healthz"))[0] == 200
        status, body = get(worker.url("/readyz"))
        assert status == 200 and orjson.loads(body)["broker"] is True
        for path in ("/stats", "/metrics", "/dashboard"):
            assert get(worker.url(path))[0] == 401, path
            assert get(worker.url(path), token="wrong")[0] == 401, path
            assert get(worker.url(path), token=TOKEN)[0] == 200, path
        listening = {
            c.laddr.ip for c in psutil.Process(worker.proc.pid).net_connections("tcp") if c.laddr.port == worker.port
        }
        assert listening == {"127.0.0.1"}, "the web server must bind loopback by default (it bound 0.0.0.0)"
        stats = orjson.loads(get(worker.url("/stats"), token=TOKEN)[1])
        assert stats["partitions"] == [0, 1]
        assert TOKEN not in worker.log_path.read_text()
    finally:
        worker.stop()
