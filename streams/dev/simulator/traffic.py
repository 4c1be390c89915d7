"""The pure traffic generator (numpy + orjson, no I/O): `advance(to_ms, n)` draws `n` impressions with event
times up to `to_ms` and returns every message due by then, delayed clicks and conversions included. Every
(model, segment) has its own S-bend miscalibration (`streams.dev.synthetic.SBend`)."""

from __future__ import annotations

import heapq
import itertools
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import orjson

from recalibrators.logit import logit
from recalibrators.segments import segment_key
from streams.dev.simulator.malformed import MALFORMED, MALFORMED_KINDS
from streams.dev.simulator.partitioner import kafka_partition, murmur2
from streams.dev.simulator.scenario import TrafficScenario
from streams.dev.simulator.truth import Reservoir, TruthSamples
from streams.dev.synthetic import SBend, sample_scores
from streams.pipeline.config import Topics

DEFAULT_TOPICS = Topics()


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
    segment: np.ndarray  # index into TrafficScenario.segments
    scores: np.ndarray  # (2, n): ctr, cvr raw scores
    p_true: np.ndarray  # (2, n): true P(click), true P(conversion | click)
    clicked: np.ndarray
    converted: np.ndarray
    messages: list[Message]


class TrafficGenerator:
    """Pure traffic generator; deterministic for a given scenario (seed and t0)."""

    def __init__(
        self, scenario: TrafficScenario, partitions: Sequence[int] = (1, 1, 1), topics: Topics = DEFAULT_TOPICS
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
            [logit(m.base_rate) + self._rng.normal(0, 0.3, len(self._segments)) for m in scenario.models]
        )
        self._bends = _bends(self._rng, self._mean_logits)
        self._drift_ms = None if scenario.drift_at_s is None else self.t0_ms + int(scenario.drift_at_s * 1000)
        # cvr's truth holds clicked impressions only: its population (config: population = "click"); its
        # probability is that of a conversion within the window (scenario.conversion_in_window).
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

    def truth(self) -> TruthSamples:
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
        in_window = sc.conversion_in_window
        converted = clicked & (rng.random(n) < p_true[1])
        for s, idx in enumerate(members):
            self._truth[(sc.ctr.name, self._seg_keys[s])].add(scores[0, idx], p_true[0, idx])
            hit = idx[clicked[idx]]
            self._truth[(sc.cvr.name, self._seg_keys[s])].add(scores[1, hit], p_true[1, hit] * in_window)

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
            topic_index, payload = MALFORMED[kind](f"bad-{self._run}-{next(self._ids)}", now_ms)
            topic = self._topics[topic_index]
            partition = int(self._rng.integers(self._partitions[topic_index]))
            out.append(Message(topic, partition, payload[:16], payload, now_ms))
            self.counters.malformed[kind] += 1
