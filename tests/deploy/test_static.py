"""Static checks of the deployment files (no Docker engine, no cluster): docker-compose.yml,
deploy/Dockerfile, deploy/requirements.lock and the Kubernetes manifests under deploy/k8s/.

Commands are checked by parsing them with the real CLI parser, environment variables by feeding
them to the real config loader, the embedded TOML by loading it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
import subprocess
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml  # pyyaml, in the dev extra
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from streams.cli.main import build_parser
from streams.dev.devstack import free_port, redis_server_binary
from streams.pipeline import urls
from streams.pipeline.config import ENV, Config, KafkaSecurity, Topics, load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
LOCK = ROOT / "deploy" / "requirements.lock"
K8S = ROOT / "deploy" / "k8s"
EXAMPLE_CONFIG = ROOT / "deploy" / "recal.toml"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

WEB_PORT = Config().web_port  # 6066
CONNECTION_VARS = set(ENV.values()) | {urls.REDIS_PASSWORD_ENV, urls.REDIS_PASSWORD_FILE_ENV}
KNOWN_VARS = CONNECTION_VARS | set(KafkaSecurity.ENV.values())


# --- helpers -------------------------------------------------------------------------------------


def parse_cli(argv: list[str]):
    """The real `recal` parser; argparse errors (unknown flags, ...) fail the test, and so do abbreviated
    flags (argparse would accept `--conf` for `--config`; a later `--config-dir` would make it ambiguous)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on errors
        pytest.fail(f"`recal {shlex.join(argv)}` does not parse with streams.cli.main.build_parser(): exit {exc.code}")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[argv[0]]
    flags = {token.split("=", 1)[0] for token in argv if token.startswith("--")}
    inexact = flags - set(sub._option_string_actions)
    assert not inexact, f"`recal {argv[0]}`: abbreviated or unknown flags {sorted(inexact)}"
    return args


def as_argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def env_dict(env: dict | list | None) -> dict[str, str]:
    if env is None:
        return {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def assert_vars_read_by_config(names: set[str], where: str) -> None:
    """Every RECAL_* name must be one streams/pipeline/config.py reads, and setting it must change the Config."""
    names = {n for n in names if n.startswith("RECAL_")}
    unknown = names - KNOWN_VARS
    assert not unknown, f"{where}: RECAL_* variables that streams/pipeline/config.py does not read: {sorted(unknown)}"
    base = load_config(None, env={})
    for name in names:
        value = "sentinel-value"
        if name.endswith("_FILE"):  # names a file holding the value (a mounted secret)
            secret = Path(tempfile.mkdtemp()) / "secret"
            secret.write_text(value)
            value = str(secret)
        assert load_config(None, env={name: value}) != base, f"{where}: {name} has no effect on Config"


def image_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return out


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def workers(services) -> dict[str, dict[str, Any]]:
    found = {n: s for n, s in services.items() if s.get("command") and as_argv(s["command"])[0] == "worker"}
    assert len(found) >= 2, f"expected at least two `recal worker` services, found {sorted(found)}"
    return found


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        path = K8S / resource
        assert path.is_file(), f"kustomization.yaml lists {resource}, which does not exist"
        docs.extend(load_yaml_docs(path))
    return docs


def kind(manifests, kind_name: str, name: str | None = None) -> dict[str, Any]:
    found = [m for m in manifests if m["kind"] == kind_name and (name is None or m["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind_name} {name or ''}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def deployment(manifests) -> dict[str, Any]:
    return kind(manifests, "Deployment")


@pytest.fixture(scope="module")
def container(deployment) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


# --- docker-compose.yml --------------------------------------------------------------------------


def test_compose_images_are_pinned(services):
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "image" in service and "build" not in service:
            assert image_pinned(service["image"]), f"{name}: image {service['image']!r} is not pinned"
        if "build" in service:
            assert service["build"]["dockerfile"] == "deploy/Dockerfile", name
            assert (ROOT / service["build"].get("context", ".") / service["build"]["dockerfile"]).is_file()


def test_compose_kafka_is_single_node_kraft_with_a_compose_network_listener(services):
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:") and image_pinned(kafka["image"])
    env = env_dict(kafka["environment"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in k for k in env)
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert "kafka:9092" in advertised.values(), "the compose network must reach the broker at kafka:9092"
    inter = env["KAFKA_INTER_BROKER_LISTENER_NAME"]
    assert advertised[inter] == "kafka:9092"
    assert set(advertised) | {"CONTROLLER"} == {
        item.split(":")[0] for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    }
    assert "healthcheck" in kafka


def test_compose_redis_is_pinned_and_checked(services):
    redis = services["redis"]
    assert redis["image"].startswith("redis:") and image_pinned(redis["image"])
    health = " ".join(as_argv(redis["healthcheck"]["test"]))
    assert "redis-cli" in health and "REDISCLI_AUTH" in health and "/run/secrets/redis_password" in health


def test_compose_redis_requires_the_secret_password_and_keeps_it_out_of_argv(compose, services, tmp_path):
    """Runs the compose Redis command itself (secret path and binary substituted) against a real redis-server:
    no password, no access; the secret's password works; the password is never in the process's argv."""
    import redis as redis_py

    service = services["redis"]
    assert service["secrets"] == ["redis_password"] and "redis_password" in compose["secrets"]
    assert all(str(p).startswith("127.0.0.1:") for p in service["ports"]), "Redis published on loopback only"
    secret = tmp_path / "redis_password"
    secret.write_text("compose-test-pw\n")
    script = service["command"][0].replace("$$", "$").replace("/run/secrets/redis_password", str(secret))
    script = script.replace("/tmp/redis.conf", str(tmp_path / "redis.conf"))
    port = free_port()
    script = script.replace("exec redis-server", f"exec {redis_server_binary()}") + f" --port {port} --dir {tmp_path}"
    proc = subprocess.Popen(["/bin/sh", "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        client = redis_py.Redis(port=port, socket_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                pytest.fail("Redis answered without a password")
            except redis_py.AuthenticationError:
                break
            except redis_py.ConnectionError:
                assert time.monotonic() < deadline, "the compose Redis command did not start"
                time.sleep(0.1)
        assert redis_py.Redis(port=port, password="compose-test-pw", socket_timeout=1).ping()
        assert "compose-test-pw" not in Path(f"/proc/{proc.pid}/cmdline").read_text()
    finally:
        proc.terminate()
        proc.wait(10)


def test_compose_workers_authenticate_with_the_secret(workers):
    for name, service in workers.items():
        env = env_dict(service["environment"])
        assert "redis_password" in service["secrets"], name
        assert env["RECAL_REDIS_PASSWORD_FILE"] == "/run/secrets/redis_password", name
        assert not urls.has_password(env["RECAL_REDIS"]), f"{name}: the password belongs in the secret"
        assert env["RECAL_WEB_HOST"] == "0.0.0.0", f"{name}: probes and the published port reach the container"
        assert all(str(p).startswith("127.0.0.1:") for p in service["ports"]), f"{name}: host port on loopback"


def test_compose_topic_step_creates_the_co_partitioned_sources(services, workers):
    step = services["topics"]
    assert step["image"] == services["kafka"]["image"]
    assert step["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert step.get("restart", "no") == "no"
    env = env_dict(step["environment"])
    assert env["TOPICS"].split() == list(Topics().sources[:3]), (
        "the three source topics of streams.pipeline.config.Topics"
    )
    partitions = int(env["PARTITIONS"])
    assert partitions >= len(workers), "replicas beyond the partition count would sit idle"
    script = " ".join(as_argv(step["entrypoint"]) + as_argv(step["command"]))
    assert "kafka-topics.sh" in script and "--create" in script
    assert '--partitions "$$PARTITIONS"' in script and "$$TOPICS" in script, "one count for all three topics"
    assert "--bootstrap-server kafka:9092" in script
    # Anything auto-created gets the same count.
    assert int(env_dict(services["kafka"]["environment"])["KAFKA_NUM_PARTITIONS"]) == partitions


def test_compose_workers_run_the_real_worker_command(workers):
    host_ports = set()
    for name, service in workers.items():
        args = parse_cli(as_argv(service["command"]))
        assert args.command == "worker"
        assert args.config, f"{name}: worker without --config"
        mounts = {m.split(":")[1]: m.split(":")[0] for m in service["volumes"]}
        assert args.config in mounts, f"{name}: --config {args.config} is not mounted"
        assert (ROOT / mounts[args.config]).resolve() == EXAMPLE_CONFIG.resolve()
        load_config(EXAMPLE_CONFIG, env={})
        assert args.web_port in (None, WEB_PORT)
        env = env_dict(service["environment"])
        assert env["RECAL_BROKER"] == "kafka:9092"
        assert env["RECAL_REDIS"].startswith("redis://redis:6379")
        assert_vars_read_by_config(set(env), f"compose {name}")
        health = " ".join(as_argv(service["healthcheck"]["test"]))
        assert f"127.0.0.1:{WEB_PORT}/healthz" in health
        depends = service["depends_on"]
        assert depends["topics"]["condition"] == "service_completed_successfully"
        assert depends["kafka"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        for mapping in service.get("ports", []):
            host, container = str(mapping).rsplit(":", 1)
            assert int(container) == WEB_PORT
            host_ports.add(host)
    assert len(host_ports) == sum(len(s.get("ports", [])) for s in workers.values()), "host ports collide"


def test_compose_simulator_is_an_optional_profile(services):
    sim = services["simulator"]
    assert sim["profiles"] == ["sim"]
    argv = as_argv(sim["command"])
    args = parse_cli(argv)
    assert args.command == "simulate"
    assert args.broker == "kafka:9092"
    assert "--rate" in argv and "--duration" in argv and args.rate > 0 and args.duration > 0
    assert not args.create_topics, "the topic step owns the source topics (and their partition count)"
    assert sim["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert sim["healthcheck"]["disable"] is True, "the image's HEALTHCHECK is for workers"
    assert_vars_read_by_config(set(env_dict(sim.get("environment"))), "compose simulator")


def test_compose_every_recal_variable_is_read_by_config():
    names = set(re.findall(r"\bRECAL_[A-Z_]+", COMPOSE.read_text()))
    assert {"RECAL_BROKER", "RECAL_REDIS"} <= names
    assert_vars_read_by_config(names, "docker-compose.yml")


# --- deploy/Dockerfile ---------------------------------------------------------------------------


def test_dockerfile_base_images_are_pinned_slim_python_311(dockerfile):
    args = {}
    for instruction, rest in dockerfile:
        if instruction == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value
    bases = []
    for instruction, rest in dockerfile:
        if instruction == "FROM":
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], rest.split()[0])
            bases.append(image)
    assert bases, "no FROM"
    for image in bases:
        assert image_pinned(image), image
        assert re.match(r"^python:3\.11(\.\d+)?-slim", image), image


def test_dockerfile_entrypoint_is_the_console_script(dockerfile):
    entry = [json.loads(rest) for i, rest in dockerfile if i == "ENTRYPOINT"]
    assert entry[-1] == ["recal"]
    assert PYPROJECT["project"]["scripts"]["recal"] == "streams.cli.main:main"
    cmd = json.loads([rest for i, rest in dockerfile if i == "CMD"][-1])
    args = parse_cli(cmd)
    assert args.command == "worker" and args.config == "/etc/recal/recal.toml"
    copies = [rest for i, rest in dockerfile if i == "COPY"]
    assert any(c.split()[-1] == args.config and "deploy/recal.toml" in c for c in copies)


def test_dockerfile_runs_as_non_root_and_exposes_the_web_port(dockerfile):
    users = [rest for i, rest in dockerfile if i == "USER"]
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, "numeric non-root UID (Kubernetes runAsNonRoot verifies it)"
    assert [i for i, _ in dockerfile].index("USER") > [i for i, _ in dockerfile].index("FROM")
    assert str(WEB_PORT) in " ".join(rest for i, rest in dockerfile if i == "EXPOSE").split()
    health = [rest for i, rest in dockerfile if i == "HEALTHCHECK"]
    assert health and f"127.0.0.1:{WEB_PORT}/healthz" in health[-1]


def test_dockerfile_installs_the_lock_without_resolving(dockerfile):
    runs = " ".join(rest for i, rest in dockerfile if i == "RUN")
    copies = " ".join(rest for i, rest in dockerfile if i == "COPY")
    assert "deploy/requirements.lock" in copies
    assert re.search(r"pip install --no-deps -r \S*requirements\.lock", runs)
    assert re.search(r"pip install --no-deps /src", runs)
    assert "pip check" in runs
    for package in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert package.rstrip("*") in copies, f"the image must contain the {package} package"


def test_dockerfile_workdir_is_writable_by_the_user(dockerfile):
    workdir = [rest for i, rest in dockerfile if i == "WORKDIR"][-1]
    uid = [rest for i, rest in dockerfile if i == "USER"][-1].split(":")[0]
    runs = " ".join(rest for i, rest in dockerfile if i == "RUN")
    assert f"--home-dir {workdir}" in runs and "--create-home" in runs and f"--uid {uid}" in runs


# --- deploy/requirements.lock --------------------------------------------------------------------


def lock_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
        assert match, f"requirements.lock: {line!r} is not an exact pin (name==version)"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"requirements.lock pins {name} twice"
        pins[name] = match.group(2)
    return pins


def test_lock_pins_every_dependency_exactly():
    pins = lock_pins()
    for name in ("faust-streaming", "aiokafka", "redis", "numpy", "orjson"):
        assert name in pins, f"requirements.lock misses {name}"
    project = PYPROJECT["project"]
    for line in project["dependencies"] + project["optional-dependencies"]["stream"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"requirements.lock misses {req}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} violates {req}"


def test_lock_excludes_dev_tools():
    pins = lock_pins()
    dev = {canonicalize_name(Requirement(r).name) for r in PYPROJECT["project"]["optional-dependencies"]["dev"]}
    leaked = (dev - {"recal"}) & set(pins)
    assert not leaked, f"dev tools in the image lock: {sorted(leaked)}"


def test_lock_is_closed_under_the_installed_metadata():
    """Where the venv has the pinned version, that version's own requirements must be pinned too."""
    from importlib.metadata import PackageNotFoundError, distribution

    pins = lock_pins()
    for name, version in pins.items():
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        if dist.version != version:
            continue
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            dep = canonicalize_name(req.name)
            assert dep in pins, f"{name}=={version} needs {req}, not in requirements.lock"
            assert req.specifier.contains(pins[dep], prereleases=True), f"{name} needs {req}, lock has {pins[dep]}"


# --- deploy/k8s ----------------------------------------------------------------------------------


def test_k8s_manifests_parse_and_cover_the_required_kinds(manifests):
    kinds = {m["kind"] for m in manifests}
    assert {"Namespace", "ConfigMap", "Deployment", "PodDisruptionBudget", "Service"} <= kinds
    assert "Secret" not in kinds, "example Secrets must not be applied with the kustomization"
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == kind(manifests, "Namespace")["metadata"]["name"]
    for m in manifests:
        assert m.get("apiVersion") and m["metadata"].get("name"), m


def test_k8s_every_yaml_file_parses():
    for path in sorted(K8S.glob("*.yaml")):
        assert load_yaml_docs(path), f"{path.name} is empty"


def test_k8s_configmap_toml_loads_and_matches_the_example(manifests, tmp_path):
    config_map = kind(manifests, "ConfigMap", "recal-config")
    toml_path = tmp_path / "recal.toml"
    toml_path.write_text(config_map["data"]["recal.toml"])
    loaded = load_config(toml_path, env={})
    assert loaded.models, "no models in the ConfigMap's recal.toml"
    assert loaded.replication_factor == 3, "production topics need replicas: [worker] replication_factor = 3"
    example = load_config(EXAMPLE_CONFIG, env={})
    assert loaded == dataclasses.replace(example, replication_factor=3), (
        "ConfigMap recal.toml drifted from deploy/recal.toml"
    )


def test_k8s_deployment_runs_the_worker_with_the_configmap(manifests, deployment, container):
    args = parse_cli(as_argv(container.get("command", [])) + as_argv(container["args"]))
    assert args.command == "worker" and args.web_port in (None, WEB_PORT)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    config_dir, _, key = args.config.rpartition("/")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    config_map_name = volumes[mounts[config_dir]]["configMap"]["name"]
    assert key in kind(manifests, "ConfigMap", config_map_name)["data"]
    assert image_pinned(container["image"])
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    image_name = container["image"].rsplit(":", 1)[0]
    assert any(i["name"] == image_name and i["newTag"] != "latest" for i in kustomization["images"])


def test_k8s_probes_hit_healthz_and_readyz_on_the_web_port(container):
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert WEB_PORT in ports.values()

    def target(probe: str) -> tuple[str, int]:
        get = container[probe]["httpGet"]
        port = get["port"]
        return get["path"], ports[port] if isinstance(port, str) else port

    assert target("readinessProbe") == ("/readyz", WEB_PORT)
    assert target("livenessProbe") == ("/healthz", WEB_PORT)
    if "startupProbe" in container:
        assert target("startupProbe") == ("/healthz", WEB_PORT)


def test_k8s_pod_is_non_root_read_only_and_bounded(deployment, container, dockerfile):
    pod = deployment["spec"]["template"]["spec"]
    sc = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True or sc.get("runAsNonRoot") is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert "ALL" in sc["capabilities"]["drop"]
    uid = [rest for i, rest in dockerfile if i == "USER"][-1].split(":")[0]
    assert str(pod["securityContext"].get("runAsUser", uid)) == uid
    for section in ("requests", "limits"):
        assert container["resources"][section].get("memory"), f"resources.{section}.memory"
    assert container["resources"]["requests"].get("cpu")
    # A read-only root needs writable mounts where the worker writes: its WORKDIR (Faust's data
    # dir) and /tmp.
    workdir = [rest for i, rest in dockerfile if i == "WORKDIR"][-1]
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {
        m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly") and "emptyDir" in volumes[m["name"]]
    }
    assert {workdir, "/tmp"} <= writable


def test_k8s_pdb_and_service_select_the_workers(manifests, deployment):
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pdb = kind(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]
    service = kind(manifests, "Service", "recal-worker")
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["port"] for p in service["spec"]["ports"]} == {WEB_PORT}


def test_k8s_environment_comes_from_known_variables(manifests, container):
    env_cm = kind(manifests, "ConfigMap", "recal-env")
    refs = container["envFrom"]
    assert refs[0]["configMapRef"]["name"] == "recal-env"
    assert refs[-1]["secretRef"]["name"] == "recal-secrets", "secrets last: they override recal-env"
    names = set(env_cm["data"]) | {e["name"] for e in container.get("env", [])}
    assert {"RECAL_BROKER", "RECAL_REDIS"} <= names
    assert_vars_read_by_config(names, "k8s recal-env")
    assert env_cm["data"]["RECAL_KAFKA_SECURITY_PROTOCOL"] in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


def test_k8s_secret_examples_use_known_variables_and_placeholders(container, deployment):
    secrets = {d["metadata"]["name"]: d for d in load_yaml_docs(K8S / "secrets.example.yaml")}
    assert {d["kind"] for d in secrets.values()} == {"Secret"}
    env_secret = secrets["recal-secrets"]["stringData"]
    assert_vars_read_by_config(set(env_secret), "secrets.example.yaml")
    assert {"RECAL_KAFKA_SASL_USERNAME", "RECAL_KAFKA_SASL_PASSWORD", "RECAL_REDIS"} <= set(env_secret)
    assert env_secret["RECAL_REDIS"].startswith("rediss://"), "the example shows Redis TLS + AUTH"
    assert all("CHANGE_ME" in str(v) for k, v in env_secret.items() if "PASSWORD" in k or k == "RECAL_REDIS")
    security = KafkaSecurity.from_env(env_secret)
    assert security.security_protocol == "SASL_SSL" and security.sasl_password == "CHANGE_ME"
    # The CA Secret is what the kafka-ca volume mounts (optional: the workers start without it).
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    ca_volume = next(v for v in volumes.values() if v.get("secret", {}).get("secretName") == "recal-kafka-ca")
    assert ca_volume["secret"]["optional"] is True
    assert "ca.crt" in secrets["recal-kafka-ca"]["stringData"]


def test_k8s_redis_requires_the_secret_and_the_workers_send_it(manifests, container):
    redis = kind(manifests, "StatefulSet", "redis")
    pod = redis["spec"]["template"]["spec"]
    script = " ".join(pod["containers"][0]["command"] + pod["containers"][0]["args"])
    assert "requirepass" in script and "exec redis-server" in script
    secret_volumes = [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
    assert secret_volumes == ["recal-redis"]
    assert kind(manifests, "Service", "redis")["spec"]["ports"][0]["port"] == 6379
    env = {e["name"]: e for e in container["env"]}
    ref = env["RECAL_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("recal-redis", "password") and not ref.get("optional")
    recal_env = kind(manifests, "ConfigMap", "recal-env")["data"]
    assert not urls.has_password(recal_env["RECAL_REDIS"]) and recal_env["RECAL_WEB_HOST"] == "0.0.0.0"
    example = {d["metadata"]["name"]: d for d in load_yaml_docs(K8S / "secrets.example.yaml")}
    assert example["recal-redis"]["stringData"]["password"] == "CHANGE_ME"
