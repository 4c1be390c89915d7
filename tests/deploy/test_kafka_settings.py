"""One configuration of truth for the broker: docker-compose.yml deploys the Kafka release and the KRaft settings
that the dev/CI broker (streams.dev.kafka) runs, i.e. deploy/kafka/pom.xml and deploy/kafka/server.properties."""

from __future__ import annotations

from pathlib import Path

import yaml

from streams.dev import kafka

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def compose_settings(service: str = "kafka") -> dict[str, str]:
    """The apache/kafka image's KAFKA_* variables as server.properties keys (KAFKA_NUM_PARTITIONS: num.partitions)."""
    env = COMPOSE["services"][service]["environment"]
    return {k[len("KAFKA_") :].lower().replace("_", "."): str(v) for k, v in env.items() if k.startswith("KAFKA_")}


def test_compose_sets_every_shared_setting_to_the_dev_brokers_value():
    shared, deployed = kafka.shared_settings(), compose_settings()
    assert shared, "deploy/kafka/server.properties is empty"
    assert {k: deployed.get(k) for k in shared} == shared


def test_compose_runs_the_release_the_pom_pins():
    services = COMPOSE["services"].items()
    images = {name: s["image"] for name, s in services if s.get("image", "").startswith("apache/kafka")}
    assert images, "no apache/kafka service in docker-compose.yml"
    assert set(images.values()) == {f"apache/kafka:{kafka.kafka_version()}"}, images


def test_the_dev_broker_adds_only_per_deployment_settings():
    broker = kafka.apache(port=19092)
    broker.controller_port, broker.data_dir = 19093, "/tmp/x"
    written = dict(line.split("=", 1) for line in broker.properties().splitlines())
    assert {k: written[k] for k in kafka.shared_settings()} == kafka.shared_settings()
    assert set(written) - set(kafka.shared_settings()) == {
        "listeners",
        "advertised.listeners",
        "listener.security.protocol.map",
        "inter.broker.listener.name",
        "controller.quorum.voters",
        "log.dirs",
    }
    assert written["controller.quorum.voters"] == "1@127.0.0.1:19093"


def test_random_cluster_ids_look_like_kafkas():
    ids = {kafka.random_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 22 and not i.startswith("-") and set(i) <= set(_B64URL) for i in ids)


_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
