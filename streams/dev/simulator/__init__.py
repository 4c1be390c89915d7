"""Synthetic ad traffic with known true probabilities: the demo's and the load tests' producer.

Two layers. `traffic.TrafficGenerator` is pure (numpy + orjson, no I/O): `advance(to_ms, n)` draws `n`
impressions with event times up to `to_ms` and returns every message due by then, delayed clicks and
conversions included. `producer.run_simulation` drives it from a wall clock `speed` times slower than event
time and writes the messages to Kafka with aiokafka. Every (model, segment) has its own S-bend
miscalibration, so the truth samples (`truth`) let `streams.dev.report` score published maps against the
real probabilities, not the noisy labels. `scenario` says what the traffic looks like, `malformed` how
messages break the contract, `partitioner` where Kafka puts them.
"""

from streams.dev.simulator.malformed import MALFORMED_KINDS
from streams.dev.simulator.partitioner import kafka_partition, murmur2
from streams.dev.simulator.producer import SimulationResult, create_missing_topics, run_simulation, send_batched
from streams.dev.simulator.scenario import ModelSpec, TrafficScenario
from streams.dev.simulator.traffic import Counters, Message, Tick, TrafficGenerator
from streams.dev.simulator.truth import Reservoir, TruthSamples

__all__ = [
    "MALFORMED_KINDS",
    "Counters",
    "Message",
    "ModelSpec",
    "Reservoir",
    "SimulationResult",
    "Tick",
    "TrafficGenerator",
    "TrafficScenario",
    "TruthSamples",
    "create_missing_topics",
    "kafka_partition",
    "murmur2",
    "run_simulation",
    "send_batched",
]
