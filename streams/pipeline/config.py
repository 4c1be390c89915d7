"""Worker configuration: one TOML file (`--config`), environment variables override connections.

Per model: which label it predicts, which impressions are its population, the attribution window,
the segment fallback chain and the calibrator's parameters. A model that is not in the file gets
``[defaults]`` (the worker logs that once).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from streams.pipeline.partitioners import check_partitioner
from streams.pipeline.urls import (
    BROKER_ENV,
    DEFAULT_BROKER,
    DEFAULT_REDIS,
    REDIS_ENV,
    parse_brokers,
    redact,
    with_password,
)

_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")


def parse_duration_ms(value: str | int | float) -> int:
    """'30s' -> 30000. Bare numbers are milliseconds.

    >>> parse_duration_ms("1.5h"), parse_duration_ms("7d"), parse_duration_ms(250)
    (5400000, 604800000, 250)
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return int(value)
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"not a duration: {value!r} (expected a number with a unit: ms, s, m, h, d)")
    return int(float(match.group(1)) * _UNITS_MS[match.group(2)])


@dataclass(frozen=True)
class ModelConfig:
    label: str = "click"  # click | conversion
    population: str = "impression"  # impression | click
    window_ms: int = 3_600_000  # attribution window, measured from the impression
    click_window_ms: int = 3_600_000  # population=click: the click must land within this
    segment_by: tuple[tuple[str, ...], ...] = (("platform", "placement"), ("placement",))
    half_life_ms: int = 6 * 3_600_000
    refresh_interval_ms: int = 5_000
    allowed_lateness_ms: int = 30_000
    method: str = "isotonic"
    n_bins: int = 0  # 0: the calibrator's default
    prior_strength: float = 0.0  # 0: the calibrator's default
    min_samples: float = 200.0  # quality gate: effective samples before a first publish
    max_change: float = 0.0  # quality gate: max relative change per refresh, 0 = unbounded
    max_loss_increase: float = 0.01  # quality gate: relative holdout log-loss increase tolerated
    gate_min_z: float = 2.0  # quality gate: refuse only a loss increase beyond the tolerance this significant
    gate_evidence_growth: float = 2.0  # quality gate: this many times the live map's examples waive max_change
    on_new_version: str = "warm_start"  # warm_start | reset
    warm_start_from: str = ""  # model version a new version's prior comes from; "": the most recently active
    max_versions: int = 8  # live model versions per model; events of one more are dead-lettered
    version_idle_ms: int = 0  # a version without events for this event time retires; 0: 2 x window + half-life
    drift_ratio_low: float = 0.9  # drift alert when the raw model's ratio on recent data leaves this band
    drift_ratio_high: float = 1.1
    drift_max_ece: float = 0.01  # ... or its ECE on recent data exceeds this
    drift_min_weight: float = 500.0  # recent (held-back) weight needed before drift is judged
    max_segments: int = 10_000  # cardinality cap: distinct segment keys per fallback level (0: no cap)
    shrink_to_parent: bool = False  # fit each segment toward its fallback parent's map (recalibrators.hierarchy)
    drift_detector: str = ""  # "" | page_hinkley | adwin: forget faster on a silent drift (streams.pipeline.drift)
    label_delay: str = "corrected"  # conversion models: corrected (early, delay-corrected examples) | wait

    def __post_init__(self) -> None:
        if self.label not in ("click", "conversion"):
            raise ValueError(f"label must be 'click' or 'conversion', not {self.label!r}")
        if self.population not in ("impression", "click"):
            raise ValueError(f"population must be 'impression' or 'click', not {self.population!r}")
        if self.population == "click" and self.label == "click":
            raise ValueError("population='click' needs label='conversion' (a clicked impression is clicked)")
        if self.on_new_version not in ("warm_start", "reset"):
            raise ValueError(f"on_new_version must be 'warm_start' or 'reset', not {self.on_new_version!r}")
        if self.drift_detector not in ("", "page_hinkley", "adwin"):
            raise ValueError(f"drift_detector must be '', 'page_hinkley' or 'adwin', not {self.drift_detector!r}")
        if self.label_delay not in ("corrected", "wait"):
            raise ValueError(f"label_delay must be 'corrected' or 'wait', not {self.label_delay!r}")
        if not isinstance(self.shrink_to_parent, bool):
            raise ValueError(f"shrink_to_parent must be true or false, not {self.shrink_to_parent!r}")
        for name in ("window_ms", "click_window_ms", "half_life_ms", "refresh_interval_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.removesuffix('_ms')} must be positive")
        if isinstance(self.max_segments, bool) or not isinstance(self.max_segments, int) or self.max_segments < 0:
            raise ValueError(f"max_segments must be a non-negative integer, not {self.max_segments!r}")
        if self.max_versions < 1 or self.version_idle_ms < 0 or self.gate_evidence_growth <= 1.0:
            raise ValueError("max_versions must be >= 1, version_idle >= 0 and gate_evidence_growth > 1")

    @property
    def version_idle(self) -> int:
        """Event time (ms) without an event after which a model version retires."""
        return self.version_idle_ms or 2 * self.horizon_ms + self.half_life_ms

    @property
    def corrected(self) -> bool:
        """Whether open windows enter the maps early, delay-corrected (streams.pipeline.delayed): conversion
        models with label_delay = "corrected"; click labels come within seconds and always wait."""
        return self.label == "conversion" and self.label_delay == "corrected"

    @property
    def horizon_ms(self) -> int:
        """How long after the impression this model may still change its label."""
        return self.window_ms if self.population == "impression" else max(self.window_ms, self.click_window_ms)


_DURATION_KEYS = {
    "window": "window_ms",
    "click_window": "click_window_ms",
    "half_life": "half_life_ms",
    "refresh_interval": "refresh_interval_ms",
    "allowed_lateness": "allowed_lateness_ms",
    "version_idle": "version_idle_ms",
}
_MODEL_KEYS = {f.name for f in fields(ModelConfig)}


def _model_kwargs(table: dict[str, Any], where: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key in _DURATION_KEYS:
            kwargs[_DURATION_KEYS[key]] = parse_duration_ms(value)
        elif key == "segment_by":
            if not all(isinstance(dims, list) and all(isinstance(d, str) for d in dims) for dims in value):
                raise ValueError(f"{where}.segment_by must be a list of lists of dimension names")
            kwargs[key] = tuple(tuple(dims) for dims in value)
        elif key in _MODEL_KEYS and not key.endswith("_ms"):
            kwargs[key] = value
        else:
            raise ValueError(f"unknown key {where}.{key}")
    return kwargs


@dataclass(frozen=True)
class Topics:
    impressions: str = "ad-impressions"
    clicks: str = "ad-clicks"
    conversions: str = "ad-conversions"
    rekeyed: str = "recal-rekeyed"
    labeled: str = "recal-labeled"
    state: str = "recal-join-state"
    partials: str = "recal-partials"
    deadletter: str = "recal-deadletter"

    @property
    def sources(self) -> tuple[str, str, str, str]:
        """The join's inputs, co-partitioned by impression_id."""
        return (self.impressions, self.clicks, self.conversions, self.rekeyed)


@dataclass(frozen=True)
class KafkaSecurity:
    """Kafka TLS/SASL; set from RECAL_KAFKA_* environment variables (secrets never go in the file)."""

    security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    sasl_mechanism: str = ""  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    ssl_cafile: str = ""

    ENV: ClassVar[dict[str, str]] = {
        "security_protocol": "RECAL_KAFKA_SECURITY_PROTOCOL",
        "sasl_mechanism": "RECAL_KAFKA_SASL_MECHANISM",
        "sasl_username": "RECAL_KAFKA_SASL_USERNAME",
        "sasl_password": "RECAL_KAFKA_SASL_PASSWORD",
        "ssl_cafile": "RECAL_KAFKA_SSL_CAFILE",
    }

    @classmethod
    def from_env(cls, env: dict[str, str]) -> KafkaSecurity:
        return cls(**{name: env[var] for name, var in cls.ENV.items() if env.get(var)})

    def _ssl_context(self):
        import ssl

        return ssl.create_default_context(cafile=self.ssl_cafile or None)

    def client_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"security_protocol": self.security_protocol}
        if "SSL" in self.security_protocol:
            args["ssl_context"] = self._ssl_context()
        if self.security_protocol.startswith("SASL"):
            args.update(
                sasl_mechanism=self.sasl_mechanism or "PLAIN",
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        return args


@dataclass(frozen=True)
class Config:
    broker: str = DEFAULT_BROKER  # normalised: "host:port,host:port" (see streams.pipeline.urls)
    redis: str = DEFAULT_REDIS  # shown redacted by repr()
    prefix: str = "recal"
    app_id: str = "recal"
    topics: Topics = field(default_factory=Topics)
    partitions: int = 4  # for the internal topics the worker creates
    replication_factor: int = 1  # of the topics the worker creates: 3 on a production cluster
    defaults: ModelConfig = field(default_factory=ModelConfig)
    models: dict[str, ModelConfig] = field(default_factory=dict)
    max_models: int = 1_000  # cardinality cap: distinct models per worker (0: no cap)
    max_message_bytes: int = 1_000_000
    deadletter_max_bytes: int = 1_000_000  # dead letters are cut to this: at most the topic's max.message.bytes
    max_predictions: int = 64
    max_future_skew_ms: int = 86_400_000  # events further ahead of the wall clock are rejected
    grace_ms: int = 60_000  # how long a click waits (event time) for an impression it beat
    clock_skew_ms: int = 1_000  # the join clock's allowance ahead of wall time (join/clock.py, #13 item 1)
    partitioner: str = "murmur2"  # the producers': murmur2 | crc32 | consistent_random (docs/pipeline.md)
    # Join processes of one worker (`recal worker --processes`); 0: the CPUs of its affinity mask. Default 1:
    # a deployment scales by workers, each sized by its own CPU limit (docs/pipeline.md, `--processes`).
    processes: int = 1
    max_label_lag: int = 0  # records: while a click/conversion partition lags more, windows stay open
    holdout_percent: int = 10  # examples held back from fitting, for the quality gate
    checkpoint_interval_ms: int = 5_000  # join state snapshots
    partials_interval_ms: int = 500  # how often changed partial calibrators go to the aggregator
    # The smallest Apache Kafka accepts by default (group.min.session.timeout.ms); a new group's first join
    # can be held up to half of it (the embedded broker), so it bounds the start of a new worker.
    session_timeout_ms: int = 6_000
    rebalance_timeout_ms: int = 0  # 0: max(60 s, 3 x session_timeout); revoke snapshots must fit in half of it
    snapshot_read_timeout_ms: int = 60_000  # bound on reading one partition's snapshot back
    stall_log_ms: int = 1_000  # log what held the event loop when held longer (stalls.py); 0: off
    on_lost_snapshot: str = "fail"  # fail | start_empty: a partition whose snapshots are unreadable
    web_port: int = 6066
    web_host: str = "127.0.0.1"  # bind address of the web endpoints: 0.0.0.0 in a container (env RECAL_WEB_HOST)
    web_token: str = field(default="", repr=False)  # bearer token for the web endpoints but probes (RECAL_WEB_TOKEN)
    kafka: KafkaSecurity = field(default_factory=KafkaSecurity)

    def __post_init__(self) -> None:
        check_partitioner(self.partitioner)
        object.__setattr__(self, "broker", parse_brokers(self.broker))
        if not self.rebalance_timeout_ms:
            object.__setattr__(self, "rebalance_timeout_ms", max(60_000, 3 * self.session_timeout_ms))
        if self.on_lost_snapshot not in ("fail", "start_empty"):
            raise ValueError(f"on_lost_snapshot must be 'fail' or 'start_empty', not {self.on_lost_snapshot!r}")

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.repr} | {"redis": redact(self.redis)}
        return f"Config({', '.join(f'{name}={value!r}' for name, value in shown.items())})"

    def kafka_client_args(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka clients: bootstrap servers plus TLS/SASL settings."""
        return {"bootstrap_servers": self.broker, **self.kafka.client_args()}

    def model(self, name: str) -> ModelConfig:
        return self.models.get(name, self.defaults)

    @property
    def refresh_interval_ms(self) -> int:
        return min([m.refresh_interval_ms for m in self.models.values()] + [self.defaults.refresh_interval_ms])


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None, **overrides: Any) -> Config:
    """Read the TOML file (if any), then environment variables, then explicit overrides."""
    env = dict(os.environ if env is None else env)
    data: dict[str, Any] = tomllib.loads(Path(path).read_text()) if path else {}
    defaults = ModelConfig(**_model_kwargs(data.pop("defaults", {}), "defaults"))
    models = {
        name: ModelConfig(**{**_asdict(defaults), **_model_kwargs(table, f"models.{name}")})
        for name, table in data.pop("models", {}).items()
    }
    for name in models:
        if ":" in name:
            raise ValueError(f"model name {name!r} must not contain ':'")
    topics = Topics(**data.pop("topics", {}))
    worker = data.pop("worker", {})
    for key in (
        "grace",
        "checkpoint_interval",
        "partials_interval",
        "max_future_skew",
        "session_timeout",
        "clock_skew",
        "rebalance_timeout",
        "snapshot_read_timeout",
        "stall_log",
    ):
        if key in worker:
            worker[f"{key}_ms"] = parse_duration_ms(worker.pop(key))
    if data:
        raise ValueError(f"unknown top-level keys in config: {sorted(data)}")
    settings: dict[str, Any] = {
        **worker,
        "defaults": defaults,
        "models": models,
        "topics": topics,
        "kafka": KafkaSecurity.from_env(env),
    }
    for key, var in ENV.items():
        if env.get(var):
            settings[key] = env[var]
    settings.update({k: v for k, v in overrides.items() if v is not None})
    settings["redis"] = with_password(settings.get("redis", DEFAULT_REDIS), env)
    return Config(**settings)


# Connections and secrets from the environment override the file (command-line values override both).
ENV = {
    "broker": BROKER_ENV,
    "redis": REDIS_ENV,
    "prefix": "RECAL_PREFIX",
    "web_host": "RECAL_WEB_HOST",
    "web_token": "RECAL_WEB_TOKEN",
}


def _asdict(model: ModelConfig) -> dict[str, Any]:
    return {f.name: getattr(model, f.name) for f in fields(model)}
