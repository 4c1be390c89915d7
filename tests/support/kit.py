"""The test kit of the integration and fault suites: exact scenarios, produce/consume helpers, map reads and
the worker config, against whichever broker the fixtures (`tests.support.fixtures`) started.

Every test uses its own topics, consumer groups and Redis prefix (`new_ns()`). Half-lives are so long that a
published map's `n` and `positives` are exact label counts, so "zero labels lost, zero counted twice" is an
equality check.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from pathlib import Path

import orjson
import psutil
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from recalibrators.calibration_map import CalibrationMap
from recalibrators.segments import segment_key
from streams.dev import devstack
from streams.dev.devstack import DevStack, namespace_toml
from streams.pipeline.topics import ids_covering_partitions

T0 = 1_790_000_000_000
PARTITIONS = 2
PLACEMENTS = ("search", "feed", "related")
Message = tuple[str, "str | None", bytes]


# What every test worker shares: windows of seconds, half-lives of centuries (published counts are exact
# label counts), a refresh every second; fast checkpoints and partials; any event time admitted.
DEFAULTS: dict[str, object] = {
    "window": "10s",
    "allowed_lateness": "1s",
    "segment_by": [["placement"]],
    "half_life": "100000d",
    "refresh_interval": "1s",
    "min_samples": 1,
}
WORKER: dict[str, object] = {
    "partitions": PARTITIONS,
    "grace": "5s",
    "checkpoint_interval": "1s",
    "partials_interval": "500ms",
    "holdout_percent": 0,
    "max_future_skew": "100000d",
    "session_timeout": "6s",
}
CTR = """
[models.ctr]
label = "click"
"""
CTR_CVR = (
    CTR
    + """
[models.cvr]
label = "conversion"
population = "click"
click_window = "10s"
window = "20s"
"""
)


def config_text(ns: str, models: str = CTR_CVR, *, worker: dict[str, object] | None = None, **defaults: object) -> str:
    """A test worker's config owning namespace `ns`: `[defaults]` (`DEFAULTS`, updated by `defaults`), the
    `models` tables (TOML text), `[topics]` and `[worker]` (`WORKER`, updated by `worker`)."""
    lines = "\n".join(f"{key} = {orjson.dumps(value).decode()}" for key, value in {**DEFAULTS, **defaults}.items())
    return f"\n[defaults]\n{lines}\n{models}" + namespace_toml(ns, **{**WORKER, **(worker or {})})


def new_ns() -> str:
    return f"f{uuid.uuid4().hex[:8]}"


def impression(iid: str, ts: int, placement: str = "search", models=("ctr", "cvr")) -> dict:
    scores = {"ctr": 0.02, "cvr": 0.1}
    return {
        "impression_id": iid,
        "ts": ts,
        "segment": {"placement": placement, "platform": "ios"},
        "predictions": [{"model": m, "version": "v1", "score": scores.get(m, 0.05)} for m in models],
    }


class Scenario:
    """Hand-built traffic with exact expected labels per (model, segment key).

    Impression i (ts = T0 + i * step_ms, placement placements[i % len(placements)], ctr + cvr predictions):
    i % 4 == 0 clicked (i % 8 == 0: the click arrives first; else the click comes twice), and converted
    when i % 12 == 0; i % 4 == 1 gets a click after the 10 s window (late: a negative); others unclicked.
    With `closers` (see finish()) `expected` includes the closers' own labels.
    """

    def __init__(
        self, ns: str, n: int = 200, step_ms: int = 10, placements: tuple[str, ...] = PLACEMENTS, closers: bool = True
    ) -> None:
        self.ns, self.n, self.step_ms, self.placements = ns, n, step_ms, placements
        self.expected: dict[tuple[str, str], list[int]] = {}  # (model, segment key) -> [n, positives]
        self.messages: list[Message] = []
        for i in range(n):
            iid = f"{ns}-imp-{i}"
            ts = T0 + i * step_ms
            placement = placements[i % len(placements)]
            click = (f"{ns}-clicks", iid, orjson.dumps({"click_id": f"c{i}", "impression_id": iid, "ts": ts + 2000}))
            conversion = (
                f"{ns}-conversions",
                iid,
                orjson.dumps({"conversion_id": f"v{i}", "impression_id": iid, "ts": ts + 5000}),
            )
            imp = (f"{ns}-impressions", iid, orjson.dumps(impression(iid, ts, placement)))
            clicked, converted = i % 4 == 0, i % 12 == 0
            self._count("ctr", placement, 1, clicked)
            if clicked:
                self._count("cvr", placement, 1, converted)
                self.messages += [click, imp] if i % 8 == 0 else [imp, click, click]
                if converted:
                    self.messages.append(conversion)
            elif i % 4 == 1:
                late = orjson.dumps({"click_id": f"c{i}", "impression_id": iid, "ts": ts + 15_000})
                self.messages += [imp, (f"{ns}-clicks", iid, late)]
            else:
                self.messages.append(imp)
        self.end_ms = T0 + n * step_ms
        self.closer_models: tuple[str, ...] = ()
        for model in ("ctr", "cvr") if closers else ():
            self.add_closer_model(model)

    @property
    def ctr_positives(self) -> int:
        return self.expected[("ctr", "*")][1]

    @property
    def cvr_examples(self) -> int:
        return self.expected[("cvr", "*")][0]

    @property
    def cvr_positives(self) -> int:
        return self.expected[("cvr", "*")][1]

    def add_closer_model(self, model: str) -> None:
        """The closers (see finish()) carry a prediction of `model`: clicked, not converted."""
        self.closer_models += (model,)
        for placement in self.placements:
            for _ in range(PARTITIONS):
                self._count(model, placement, 1, model != "cvr")

    def _count(self, model: str, placement: str, n: int, positive: bool) -> None:
        for key in (segment_key({"placement": placement}), "*"):
            entry = self.expected.setdefault((model, key), [0, 0])
            entry[0] += n
            entry[1] += int(positive)

    @property
    def labels_expected(self) -> int:
        return sum(n for (model, key), (n, _) in self.expected.items() if key == "*")

    def closers(self) -> list[Message]:
        """Per placement and partition one clicked impression newer than all the traffic: reading them closes
        every traffic window, and their own labels (emitted by the ticks) give every map a newer event time.
        Without them a map can stay short: see test_fault_fence.py (the fence version bug)."""
        out: list[Message] = []
        ts = self.end_ms + 60_000
        for placement in self.placements:
            for iid in ids_covering_partitions(f"{self.ns}-closer-{placement}", PARTITIONS):
                doc = impression(iid, ts, placement, models=self.closer_models)
                out.append((f"{self.ns}-impressions", iid, orjson.dumps(doc)))
                out.append(
                    (
                        f"{self.ns}-clicks",
                        iid,
                        orjson.dumps({"click_id": f"k-{iid}", "impression_id": iid, "ts": ts + 1000}),
                    )
                )
        return out

    def finish(self, broker: str, worker: WorkerProcess) -> None:
        """Closers, then (once only they are pending and their older labels went out) the ticks."""
        produce(broker, self.closers())
        n_closers = len(self.placements) * PARTITIONS
        worker.wait_for(lambda s: s["pending"] == n_closers, 120, "only the closers pending", poll_s=0.3)
        time.sleep(2.5)  # partials_interval + refresh_interval: older labels merged before the closers' ones
        produce(broker, self.ticks())

    def ticks(self, ts: int | None = None) -> list[Message]:
        """Impressions far ahead in event time: they close every window (and are never labeled)."""
        ts = ts if ts is not None else self.end_ms + 120_000
        return [
            (f"{self.ns}-impressions", iid, orjson.dumps(impression(iid, ts, placement="tick")))
            for iid in ids_covering_partitions(f"{self.ns}-tick-{ts}", PARTITIONS)
        ]


# -- Kafka helpers -------------------------------------------------------------------------------------
async def produce_async(broker: str, messages: list[Message], linger_ms: int = 5, **producer_args) -> None:
    """`producer_args`: more AIOKafkaProducer settings (e.g. a `partitioner` other than murmur2)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=broker,
        linger_ms=linger_ms,
        max_request_size=4 << 20,
        max_batch_size=1 << 20,
        request_timeout_ms=60_000,
        **producer_args,
    )
    await producer.start()
    try:
        futures = []
        for topic, key, value in messages:
            futures.append(await producer.send(topic, value, key=key.encode() if key else None))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def produce(broker: str, messages: list[Message], **producer_args) -> None:
    asyncio.run(produce_async(broker, messages, **producer_args))


def produce_then_ticks(broker: str, messages: list[Message], ticks: list[Message]) -> None:
    """`messages`, every one acknowledged, then the `ticks` that close their windows. Sent together, a tick can
    land before a click or conversion of another partition (the producer sends per partition; on Apache Kafka
    this happened), and the label is then late by event time, as it would be in production."""
    produce(broker, messages)
    produce(broker, ticks)


class PacedProducer(threading.Thread):
    """Streams `messages` at `rate` messages/s from a thread, so faults happen while traffic flows."""

    def __init__(self, broker: str, messages: list[Message], rate: float) -> None:
        super().__init__(daemon=True, name="paced-producer")
        self.broker, self.messages, self.rate = broker, messages, rate
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # surfaced by finish()
            self.error = exc

    async def _run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.broker, linger_ms=5, request_timeout_ms=60_000)
        await producer.start()
        try:
            start = time.monotonic()
            chunk = max(1, int(self.rate / 20))
            for lo in range(0, len(self.messages), chunk):
                futures = [
                    await producer.send(t, v, key=k.encode() if k else None)
                    for t, k, v in self.messages[lo : lo + chunk]
                ]
                await asyncio.gather(*futures)
                self.sent = lo + len(futures)
                ahead = self.sent / self.rate - (time.monotonic() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        finally:
            await producer.stop()

    def finish(self, timeout: float = 120.0) -> None:
        self.join(timeout)
        assert not self.is_alive(), "producer did not finish"
        if self.error is not None:
            raise self.error


async def consume_all_async(broker: str, topic: str, expect: int, timeout_s: float = 30.0) -> list:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker,
        auto_offset_reset="earliest",
        group_id=f"check-{uuid.uuid4()}",
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=64 << 20,
    )
    await consumer.start()
    records: list = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        idle_until = None
        while loop.time() < deadline:
            got = await consumer.getmany(timeout_ms=500)
            for batch in got.values():
                records.extend(batch)
            if len(records) >= expect:  # then read a little longer: more than expected is a failure too
                idle_until = idle_until or loop.time() + 1.0
                if loop.time() >= idle_until:
                    break
    finally:
        await consumer.stop()
    return records


def consume_all(broker: str, topic: str, expect: int, timeout_s: float = 30.0) -> list:
    """Every record of `topic` once `expect` arrived (and a second passed without more), or at the timeout."""
    return asyncio.run(consume_all_async(broker, topic, expect, timeout_s))


# -- Redis helpers -------------------------------------------------------------------------------------
def read_map(redis_url: str, ns: str, model: str, segment: str) -> CalibrationMap | None:
    try:
        raw = redis.Redis.from_url(redis_url, socket_timeout=1).get(f"{ns}:map:{model}:v1:{segment}")
    except redis.RedisError:
        return None
    return CalibrationMap.from_json(raw) if raw else None


def wait_for_map(stack: DevStack, ns, model, segment, n, positives, worker, timeout_s=60.0) -> CalibrationMap:
    """Until the (model, segment) map holds exactly n labels, `positives` of them positive; returns that map."""
    last: CalibrationMap | None = None

    def done(_stats) -> bool:
        nonlocal last
        last = read_map(stack.redis_url, ns, model, segment)
        return last is not None and round(last.n) == n and round(last.positives) == positives

    try:
        worker.wait_for(done, timeout_s, f"{model}:{segment} map with n={n}, positives={positives}")
    except TimeoutError as exc:  # what Redis held tells a lost label from a map never published
        held = "none" if last is None else f"n={last.n:g}, positives={last.positives:g}, map_version={last.map_version}"
        raise TimeoutError(f"last {model}:{segment} map in Redis: {held}; {exc}") from None
    return last


def map_counts(redis_url: str, ns: str, keys) -> dict[tuple[str, str], list[int]]:
    out = {}
    for model, segment in keys:
        m = read_map(redis_url, ns, model, segment)
        out[(model, segment)] = [round(m.n), round(m.positives)] if m else None
    return out


def index_fields(redis_url: str, ns: str) -> set[str]:
    try:
        return {f.decode() for f in redis.Redis.from_url(redis_url, socket_timeout=1).hkeys(f"{ns}:maps")}
    except redis.RedisError:
        return set()


# -- the worker ----------------------------------------------------------------------------------------
class WorkerProcess(devstack.WorkerProcess):
    """A worker whose resident memory is sampled on every poll (`max_rss_mb`)."""

    def __init__(self, config_path: Path, stack: DevStack, log_path: Path, env: dict[str, str] | None = None):
        super().__init__(config_path, stack.broker_url, stack.redis_url, log_path, env)
        self.max_rss_mb = 0.0

    def rss_mb(self) -> float:
        try:
            rss = psutil.Process(self.proc.pid).memory_info().rss / 2**20
        except psutil.Error:
            return 0.0
        self.max_rss_mb = max(self.max_rss_mb, rss)
        return rss

    def sample(self) -> None:
        self.rss_mb()


def wait_for_counts(redis_url: str, ns: str, expected: dict, worker: WorkerProcess, timeout_s: float = 90.0) -> dict:
    """Until every expected (model, segment) map holds exactly [n, positives]; returns the last counts."""
    last: dict = {}

    def done(_stats) -> bool:
        nonlocal last
        last = map_counts(redis_url, ns, expected)
        return all(last[k] == list(v) for k, v in expected.items())

    with contextlib.suppress(TimeoutError):
        worker.wait_for(done, timeout_s, "exact map counts", poll_s=0.5)
    return last


def labels_counted(counts: dict) -> int:
    """The labels `wait_for_counts`'s counts hold: over the models, the `*` segment's n."""
    return sum(c[0] for (_, segment), c in counts.items() if segment == "*" and c)


def positives_counted(counts: dict) -> int:
    """The positives of the same counts: over the models, the `*` segment's positives."""
    return sum(c[1] for (_, segment), c in counts.items() if segment == "*" and c)
