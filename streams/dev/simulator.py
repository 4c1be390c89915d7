"""Synthetic ad traffic with known true probabilities: the demo's and the load tests' producer.

Two layers. `TrafficGenerator` is pure (numpy + orjson, no I/O): `advance(to_ms, n)` draws `n` impressions
with event times up to `to_ms` and returns every message due by then, delayed clicks and conversions
included. `run_simulation` drives it from a wall clock `speed` times slower than event time and writes the
messages to Kafka with aiokafka. Every (model, segment) has its own S-bend miscalibration, so the truth
reservoirs let `streams.dev.report` score published maps against the real probabilities, not the noisy labels.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.producer.message_accumulator import BatchBuilder

from recalibrators.segments import segment_key
from streams.dev.synthetic import SBend, sample_scores
from streams.pipeline.config import Topics

DEFAULT_TOPICS = Topics()
HOUR_S = 3600.0
DAY_S = 86400.0


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    base_rate: float  # median raw score (per-segment offsets spread it; the mean is higher)
    score_sd: float = 0.9  # spread of the raw scores in logit space


@dataclass(frozen=True)
class Scenario:
    """What the traffic looks like. Times are event time; defaults make a readable demo at speed=60."""

    ctr: ModelSpec = ModelSpec("ctr", "v1", 0.014)  # label: click; mean raw score ~2%
    cvr: ModelSpec = ModelSpec("cvr", "v1", 0.055)  # label: conversion post-click (mean ~8%)
    platforms: tuple[tuple[str, float], ...] = (("ios", 0.35), ("android", 0.45), ("web", 0.2))
    placements: tuple[tuple[str, float], ...] = (("search", 0.4), ("feed", 0.45), ("related", 0.15))
    seed: int = 7
    t0_ms: int | None = None  # None: now
    speed: float = 60.0  # event seconds per wall second
    click_delay_mean_s: float = 5.0
    duplicate_click_share: float = 0.03  # of clicks: sent twice (half reuse the click_id, half get a new one)
    reordered_click_share: float = 0.02  # of clicks: the impression is held back until after the click
    late_click_share: float = 0.01  # of clicks: delayed beyond the click window
    click_window_s: float = HOUR_S
    conversion_delay_median_s: float = 1800.0  # lognormal from the click: long tail past the window
    conversion_delay_sigma: float = 2.0
    conversion_window_s: float = 7 * DAY_S  # measured from the impression, like ModelConfig.window_ms
    malformed_share: float = 0.0  # malformed messages per valid impression
    batched_share: float = 0.0  # of impressions: sent inside JSON-array messages
    max_batch_events: int = 20
    drift_at_s: float | None = None  # event seconds after t0 when every miscalibration changes abruptly
    reservoir_size: int = 20_000

    def __post_init__(self) -> None:
        shares = (
            "duplicate_click_share",
            "reordered_click_share",
            "late_click_share",
            "malformed_share",
            "batched_share",
        )
        for name in shares:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        if self.speed <= 0 or self.max_batch_events < 1 or self.reservoir_size < 1:
            raise ValueError("speed, max_batch_events and reservoir_size must be positive")

    @property
    def models(self) -> tuple[ModelSpec, ModelSpec]:
        return (self.ctr, self.cvr)

    @property
    def segments(self) -> list[dict[str, str]]:
        return [{"platform": p, "placement": q} for p, _ in self.platforms for q, _ in self.placements]

    @property
    def segment_weights(self) -> np.ndarray:
        w = np.array([wp * wq for _, wp in self.platforms for _, wq in self.placements])
        return w / w.sum()


class Message(NamedTuple):
    topic: str
    partition: int
    key: bytes
    value: bytes
    timestamp_ms: int  # event time, so brokers and stream processors see the simulated clock


@dataclass
class Counters:
    impressions: int = 0  # valid impressions generated
    clicks: int = 0  # distinct clicks generated (duplicates not included)
    conversions: int = 0
    duplicates: int = 0
    reordered: int = 0
    late_clicks: int = 0
    late_conversions: int = 0  # beyond the conversion window
    array_messages: int = 0
    malformed: Counter[str] = field(default_factory=Counter)
    sent: Counter[str] = field(default_factory=Counter)  # messages handed to the producer, by topic

    def as_dict(self) -> dict[str, object]:
        return {**vars(self), "malformed": dict(self.malformed), "sent": dict(self.sent)}


class Reservoir:
    """The most recent `size` (raw score, p_true) pairs of one (model, segment): a ring buffer."""

    def __init__(self, size: int) -> None:
        self._scores = np.empty(size)
        self._p_true = np.empty(size)
        self._pos = 0
        self._filled = 0

    def add(self, scores: np.ndarray, p_true: np.ndarray) -> None:
        size = self._scores.size
        scores, p_true = scores[-size:], p_true[-size:]
        idx = (self._pos + np.arange(scores.size)) % size
        self._scores[idx], self._p_true[idx] = scores, p_true
        self._pos = (self._pos + scores.size) % size
        self._filled = min(size, self._filled + scores.size)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self._scores[: self._filled].copy(), self._p_true[: self._filled].copy()


Truth = dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]  # (model, segment_key) -> (raw scores, p_true)


def murmur2(keys: np.ndarray) -> np.ndarray:
    """Kafka's murmur2 (the Java client's default partitioner) over equal-length keys, one per row of a
    uint8 matrix. Vectorised so thousands of impression ids hash in microseconds each tick."""
    n, length = keys.shape
    m = np.uint32(0x5BD1E995)
    h = np.full(n, 0x9747B28C ^ length, dtype=np.uint32)
    blocks = length // 4
    words = np.ascontiguousarray(keys[:, : blocks * 4]).view("<u4")
    for j in range(blocks):
        k = words[:, j] * m
        k ^= k >> 24
        k *= m
        h *= m
        h ^= k
    tail = keys[:, blocks * 4 :].astype(np.uint32)
    if tail.shape[1] >= 3:
        h ^= tail[:, 2] << 16
    if tail.shape[1] >= 2:
        h ^= tail[:, 1] << 8
    if tail.shape[1] >= 1:
        h ^= tail[:, 0]
        h *= m
    h ^= h >> 13
    h *= m
    h ^= h >> 15
    return h


def kafka_partition(hashes: np.ndarray, partitions: int) -> np.ndarray:
    return (hashes & np.uint32(0x7FFFFFFF)) % np.uint32(partitions)


def _bends(rng: np.random.Generator, mean_logits: np.ndarray) -> tuple[list[list[SBend]], list[list[SBend]]]:
    """Per (model, segment) miscalibration before and after the drift. Slopes below/above 1 and
    biases of either sign make over- and under-confident segments; the bend sits near the score mass."""
    before, after = [], []
    for row in mean_logits:
        pre, post = [], []
        for mu in row:
            a, b, c = rng.uniform(0.6, 1.3), rng.uniform(-0.8, 0.5), rng.uniform(-0.6, 0.6)
            d, w = float(mu + rng.uniform(-0.5, 1.0)), rng.uniform(0.4, 1.2)
            pre.append(SBend(a, b, c, d, w))
            # Drift moves the logit one way: a flatter slope raises it too, as the scores' logits are < 0.
            sign = float(rng.choice([-1.0, 1.0]))
            post.append(SBend(a * (1 - 0.15 * sign), b + sign * rng.uniform(0.5, 0.9), c, d, w))
        before.append(pre)
        after.append(post)
    return before, after


@dataclass
class Tick:
    """One `advance`: the impressions drawn (arrays, for tests and truth) and the messages now due."""

    ts: np.ndarray  # event time, ms
    segment: np.ndarray  # index into Scenario.segments
    scores: np.ndarray  # (2, n): ctr, cvr raw scores
    p_true: np.ndarray  # (2, n): true P(click), true P(conversion | click)
    clicked: np.ndarray
    converted: np.ndarray
    messages: list[Message]


class TrafficGenerator:
    """Pure traffic generator; deterministic for a given scenario (seed and t0)."""

    def __init__(
        self, scenario: Scenario, partitions: Sequence[int] = (1, 1, 1), topics: Topics = DEFAULT_TOPICS
    ) -> None:
        self.scenario = scenario
        self.t0_ms = scenario.t0_ms if scenario.t0_ms is not None else int(time.time() * 1000)
        self.clock_ms = self.t0_ms
        self.counters = Counters()
        self._rng = np.random.default_rng(scenario.seed)
        self._topics = (topics.impressions, topics.clicks, topics.conversions)
        self._partitions = tuple(partitions)
        self._segments = scenario.segments
        self._seg_keys = [segment_key(s) for s in self._segments]
        self._weights = scenario.segment_weights
        self._mean_logits = np.array(
            [
                np.log(m.base_rate / (1 - m.base_rate)) + self._rng.normal(0, 0.3, len(self._segments))
                for m in scenario.models
            ]
        )
        self._bends = _bends(self._rng, self._mean_logits)
        self._drift_ms = None if scenario.drift_at_s is None else self.t0_ms + int(scenario.drift_at_s * 1000)
        # cvr's truth holds clicked impressions only: its population (config: population = "click").
        self._truth = {(m.name, k): Reservoir(scenario.reservoir_size) for m in scenario.models for k in self._seg_keys}
        self._run = f"{int(self._rng.integers(1 << 32)):08x}"  # id namespace: reruns don't collide
        self._prefix = np.frombuffer(f"imp-{self._run}-".encode(), dtype=np.uint8)
        self._next_impression = 0
        self._ids = itertools.count()  # click, conversion and malformed ids
        self._heap: list[tuple[int, int, Message]] = []
        self._seq = itertools.count()  # heap tie-break: equal due times keep push order

    @property
    def pending(self) -> int:
        """Messages scheduled for a later event time (delayed clicks and conversions, held impressions)."""
        return len(self._heap)

    def truth(self) -> Truth:
        return {key: r.arrays() for key, r in self._truth.items()}

    def advance(self, to_ms: int, n: int) -> Tick:
        """Draw `n` impressions with event times in [clock, to_ms) and return all messages due by `to_ms`."""
        lo, hi = self.clock_ms, max(to_ms, self.clock_ms + 1)
        rng, sc = self._rng, self.scenario
        ts = np.sort(rng.integers(lo, hi, n))
        seg = rng.choice(len(self._segments), n, p=self._weights)
        drifted = self._drift_ms is not None and lo >= self._drift_ms
        bends = self._bends[int(drifted)]
        scores, p_true = np.empty((2, n)), np.empty((2, n))
        members = [np.flatnonzero(seg == s) for s in range(len(self._segments))]
        for m, spec in enumerate(sc.models):
            for s, idx in enumerate(members):
                scores[m, idx] = sample_scores(rng, idx.size, self._mean_logits[m, s], spec.score_sd)
                p_true[m, idx] = bends[m][s].p_true(scores[m, idx])
        clicked = rng.random(n) < p_true[0]
        converted = clicked & (rng.random(n) < p_true[1])
        for s, idx in enumerate(members):
            self._truth[(sc.ctr.name, self._seg_keys[s])].add(scores[0, idx], p_true[0, idx])
            hit = idx[clicked[idx]]
            self._truth[(sc.cvr.name, self._seg_keys[s])].add(scores[1, hit], p_true[1, hit])

        out: list[Message] = []
        self._emit(ts, seg, scores, clicked, converted, out)
        self._malformed(rng.binomial(n, sc.malformed_share) if n else 0, hi, out)
        self.clock_ms = hi
        while self._heap and self._heap[0][0] < hi:
            out.append(heapq.heappop(self._heap)[2])
        for msg in out:
            self.counters.sent[msg.topic] += 1
        return Tick(ts, seg, scores, p_true, clicked, converted, out)

    def _schedule(self, due_ms: int, msg: Message) -> None:
        heapq.heappush(self._heap, (due_ms, next(self._seq), msg))

    def _emit(
        self,
        ts: np.ndarray,
        seg: np.ndarray,
        scores: np.ndarray,
        clicked: np.ndarray,
        converted: np.ndarray,
        out: list[Message],
    ) -> None:
        rng, sc, c = self._rng, self.scenario, self.counters
        n = ts.size
        first = self._next_impression
        self._next_impression += n
        digits = (np.arange(first, first + n)[:, None] // 10 ** np.arange(11, -1, -1)) % 10 + ord("0")
        keys = np.hstack([np.broadcast_to(self._prefix, (n, self._prefix.size)), digits.astype(np.uint8)])
        hashes = murmur2(keys)
        part = [kafka_partition(hashes, p).tolist() for p in self._partitions]  # per topic
        ids = [f"imp-{self._run}-{i:012d}" for i in range(first, first + n)]
        models = [(spec.name, spec.version) for spec in sc.models]
        events = [
            {
                "impression_id": iid,
                "ts": t,
                "segment": self._segments[s],
                "predictions": [
                    {"model": name, "version": ver, "score": x} for (name, ver), x in zip(models, xs, strict=True)
                ],
            }
            for iid, t, s, xs in zip(ids, ts.tolist(), seg.tolist(), scores.T.tolist(), strict=True)
        ]
        c.impressions += n

        # Labels: delays are drawn for all n (vectorised) and used for the few that click/convert.
        click_delay = rng.exponential(sc.click_delay_mean_s * 1000, n)
        late = rng.random(n) < sc.late_click_share
        click_delay[late] = rng.uniform(1.0, 3.0, late.sum()) * sc.click_window_s * 1000
        click_ts = ts + click_delay.astype(np.int64)
        conv_ts = click_ts + (
            rng.lognormal(np.log(sc.conversion_delay_median_s), sc.conversion_delay_sigma, n) * 1000
        ).astype(np.int64)
        dup = rng.random(n) < sc.duplicate_click_share
        dup_same_id = rng.random(n) < 0.5
        dup_after = rng.uniform(0, 60_000, n).astype(np.int64)
        held = clicked & (rng.random(n) < sc.reordered_click_share)
        held_extra = rng.uniform(10_000, 60_000, n).astype(np.int64)
        value = np.round(rng.lognormal(3.0, 1.0, n), 2)
        imp_topic, click_topic, conv_topic = self._topics
        p_imp, p_click, p_conv = part

        for i in np.flatnonzero(clicked).tolist():
            iid, cts = ids[i], int(click_ts[i])
            key = iid.encode()
            click = {"click_id": f"clk-{self._run}-{next(self._ids)}", "impression_id": iid, "ts": cts}
            self._schedule(cts, Message(click_topic, p_click[i], key, orjson.dumps(click), cts))
            c.clicks += 1
            c.late_clicks += bool(late[i])
            if dup[i]:
                again = click if dup_same_id[i] else {**click, "click_id": f"clk-{self._run}-{next(self._ids)}"}
                self._schedule(cts + int(dup_after[i]), Message(click_topic, p_click[i], key, orjson.dumps(again), cts))
                c.duplicates += 1
            if held[i]:
                imp = Message(imp_topic, p_imp[i], key, orjson.dumps(events[i]), int(ts[i]))
                self._schedule(cts + int(held_extra[i]), imp)
                events[i] = None
                c.reordered += 1
            if converted[i]:
                vts = int(conv_ts[i])
                conv = {
                    "conversion_id": f"cnv-{self._run}-{next(self._ids)}",
                    "impression_id": iid,
                    "ts": vts,
                    "value": float(value[i]),
                }
                self._schedule(vts, Message(conv_topic, p_conv[i], key, orjson.dumps(conv), vts))
                c.conversions += 1
                c.late_conversions += vts - int(ts[i]) > sc.conversion_window_s * 1000

        batched = rng.random(n) < sc.batched_share
        groups: dict[int, list[int]] = {}
        for i, ev in enumerate(events):
            if ev is None:
                continue
            if batched[i]:
                groups.setdefault(p_imp[i], []).append(i)
            else:
                out.append(Message(imp_topic, p_imp[i], ids[i].encode(), orjson.dumps(ev), ev["ts"]))
        # An array message holds impressions of one partition only, keyed by its first impression id: the
        # key still hashes to the partition every event's clicks go to (co-partitioning holds).
        for p, members in groups.items():
            for j in range(0, len(members), sc.max_batch_events):
                chunk = members[j : j + sc.max_batch_events]
                first_ev = events[chunk[0]]
                value_bytes = orjson.dumps([events[i] for i in chunk])
                out.append(Message(imp_topic, p, ids[chunk[0]].encode(), value_bytes, first_ev["ts"]))
                c.array_messages += 1

    def _malformed(self, k: int, now_ms: int, out: list[Message]) -> None:
        for kind in self._rng.choice(MALFORMED_KINDS, k).tolist() if k else ():
            topic_index, payload = _MALFORMED[kind](f"bad-{self._run}-{next(self._ids)}", now_ms)
            topic = self._topics[topic_index]
            partition = int(self._rng.integers(self._partitions[topic_index]))
            out.append(Message(topic, partition, payload[:16], payload, now_ms))
            self.counters.malformed[kind] += 1


def _impression(iid: str, ts: object, score: object = 0.02) -> dict[str, object]:
    return {
        "impression_id": iid,
        "ts": ts,
        "segment": {"platform": "ios", "placement": "search"},
        "predictions": [{"model": "ctr", "version": "v1", "score": score}],
    }


def _raw_score(iid: str, ts: int, literal: bytes) -> bytes:
    # orjson refuses NaN/inf, and producers that use other JSON libraries write them anyway.
    return orjson.dumps(_impression(iid, ts, score=0.5)).replace(b'"score":0.5', b'"score":' + literal)


# kind -> (topic index: 0 impressions, 1 clicks, 2 conversions; bytes). Every payload breaks the contract.
_MALFORMED: dict[str, Callable[[str, int], tuple[int, bytes]]] = {
    "bad_json": lambda iid, ts: (0, b'{"impression_id": "' + iid.encode() + b'", "ts": ,}'),
    "truncated": lambda iid, ts: (0, orjson.dumps(_impression(iid, ts))[:-7]),
    "missing_field": lambda iid, ts: (
        0,
        orjson.dumps({k: v for k, v in _impression(iid, ts).items() if k != "ts"}),
    ),
    "wrong_type": lambda iid, ts: (0, orjson.dumps(_impression(iid, str(ts)))),
    "nan_score": lambda iid, ts: (0, _raw_score(iid, ts, b"NaN")),
    "inf_score": lambda iid, ts: (0, _raw_score(iid, ts, b"Infinity")),
    "negative_score": lambda iid, ts: (0, orjson.dumps(_impression(iid, ts, score=-0.25))),
    "score_above_1": lambda iid, ts: (0, orjson.dumps(_impression(iid, ts, score=1.5))),
    "ts_1970": lambda iid, ts: (0, orjson.dumps(_impression(iid, 86_400_000))),
    "ts_2100": lambda iid, ts: (0, orjson.dumps(_impression(iid, 4_133_980_800_000))),  # 2101-01-01
    "empty_predictions": lambda iid, ts: (0, orjson.dumps(_impression(iid, ts) | {"predictions": []})),
    "invalid_utf8": lambda iid, ts: (0, orjson.dumps(_impression(iid, ts)).replace(b"ios", b"i\xff\xfes")),
    "click_missing_impression": lambda iid, ts: (1, orjson.dumps({"click_id": iid, "ts": ts})),
    "conversion_wrong_type": lambda iid, ts: (
        2,
        orjson.dumps({"conversion_id": iid, "impression_id": 12345, "ts": ts, "value": "12.5"}),
    ),
}
MALFORMED_KINDS = tuple(_MALFORMED)


@dataclass
class SimulationResult:
    counters: Counters
    truth: Truth
    t0_ms: int
    end_event_ms: int
    wall_s: float
    pending: int  # still scheduled when the run ended (late clicks, long conversions)

    @property
    def impressions_per_s(self) -> float:
        return self.counters.impressions / self.wall_s if self.wall_s else 0.0

    @property
    def messages_per_s(self) -> float:
        return sum(self.counters.sent.values()) / self.wall_s if self.wall_s else 0.0


ProgressCallback = Callable[[Counters, int, float], None]  # counters, event-time ms, wall seconds


async def ensure_topics(broker: str, names: Sequence[str], partitions: int) -> list[str]:
    """Create the topics that do not exist yet; returns the ones created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        missing = [t for t in names if t not in set(await admin.list_topics())]
        if missing:
            await admin.create_topics([NewTopic(t, partitions, 1) for t in missing])
        return missing
    finally:
        await admin.close()


async def send_batched(producer: AIOKafkaProducer, messages: list[Message]) -> list[asyncio.Future]:
    """Hand-built batches per (topic, partition): ~10x the rate of one `send()` per message."""
    batches: dict[tuple[str, int], BatchBuilder] = {}
    futures: list[asyncio.Future] = []
    for topic, partition, key, value, ts in messages:
        batch = batches.get((topic, partition))
        if batch is None:
            batch = batches[(topic, partition)] = producer.create_batch()
        if batch.append(key=key, value=value, timestamp=ts) is None:  # full: ship it, start another
            futures.append(await producer.send_batch(batch, topic, partition=partition))
            batch = batches[(topic, partition)] = producer.create_batch()
            batch.append(key=key, value=value, timestamp=ts)
    for (topic, partition), batch in batches.items():
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures


async def run_simulation(
    scenario: Scenario,
    broker: str,
    *,
    rate: float,
    duration_s: float,
    topics: Topics = DEFAULT_TOPICS,
    progress_cb: ProgressCallback | None = None,
    tick_s: float = 0.02,
) -> SimulationResult:
    """Produce `rate` impressions per wall second (plus their clicks, conversions and the scenario's noise)
    for `duration_s` wall seconds; event time runs `scenario.speed` times faster from `scenario.t0_ms`.
    If the machine cannot keep up, the achieved rate is lower: read it from the result."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration_s must be positive")
    producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=10, max_batch_size=512 * 1024)
    await producer.start()
    try:
        names = (topics.impressions, topics.clicks, topics.conversions)
        partitions = [len(await producer.partitions_for(t)) for t in names]
        gen = TrafficGenerator(scenario, partitions, topics)
        loop = asyncio.get_running_loop()
        start = loop.time()
        generated, in_flight, next_progress = 0, [], 1.0
        max_per_tick = int(rate * tick_s * 5) + 1  # catch up after a slow tick, but not all at once
        while (elapsed := loop.time() - start) < duration_s:
            n = min(int(rate * elapsed) - generated, max_per_tick)
            generated += n
            tick = gen.advance(gen.t0_ms + int(elapsed * scenario.speed * 1000), n)
            futures = await send_batched(producer, tick.messages)
            # The previous tick's acks: bounds what is in flight and surfaces send errors.
            await asyncio.gather(*in_flight)
            in_flight = futures
            if progress_cb and elapsed >= next_progress:
                progress_cb(gen.counters, gen.clock_ms, elapsed)
                next_progress += 1.0
            await asyncio.sleep(max(0.0, tick_s - (loop.time() - start - elapsed)))
        await asyncio.gather(*in_flight)
        wall_s = loop.time() - start
    finally:
        await producer.stop()
    return SimulationResult(gen.counters, gen.truth(), gen.t0_ms, gen.clock_ms, wall_s, gen.pending)
