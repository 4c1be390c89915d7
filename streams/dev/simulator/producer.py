"""`run_simulation`: drives the traffic generator from a wall clock `speed` times slower than event time and
writes its messages to Kafka with aiokafka, in hand-built batches."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.producer.message_accumulator import BatchBuilder

from streams.dev.simulator.scenario import TrafficScenario
from streams.dev.simulator.traffic import DEFAULT_TOPICS, Counters, Message, TrafficGenerator
from streams.dev.simulator.truth import TruthSamples
from streams.pipeline.config import Topics


@dataclass
class SimulationResult:
    counters: Counters
    truth: TruthSamples
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


async def create_missing_topics(broker: str, names: Sequence[str], partitions: int) -> list[str]:
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
    scenario: TrafficScenario,
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
