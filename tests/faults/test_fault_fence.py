"""A bug the hostile-input run exposed: map versions that do not grow with the data.

In the worker-level run the per-placement maps stayed at n=821/829/815 while the model-wide map reached
the exact 3000: the last refresh of each placement map was refused as stale by the Redis fence. This is
the deterministic, in-process reproduction (real Redis, real Aggregator and MapPublisher).
"""

from __future__ import annotations

import numpy as np
import pytest
import redis

from recalibrators.calibrator import Calibrator
from streams.dev import devstack
from streams.pipeline.aggregator import Aggregator, encode_partial
from streams.pipeline.config import ModelConfig
from streams.pipeline.partials import calibrator_config
from streams.pipeline.publisher import MapPublisher

E = 1_790_000_000_000
CONFIG = ModelConfig(min_samples=1, half_life_ms=10**15)


def _partial(n: int, t_max: int, seed: int) -> Calibrator:
    rng = np.random.default_rng(seed)
    cal = Calibrator(calibrator_config(CONFIG))
    ts = np.linspace(t_max - 5_000, t_max, n).astype(np.int64)
    cal.learn_batch(rng.uniform(0.01, 0.05, n), (rng.random(n) < 0.25).astype(np.int64), ts_ms=ts)
    return cal


@pytest.fixture
def redis_client():
    server = devstack.redis_server().start()
    client = redis.Redis(host="127.0.0.1", port=server.port)
    yield client
    client.close()
    server.stop()


def test_map_with_more_labels_but_same_event_time_is_published(redis_client):
    aggregator = Aggregator(lambda name: CONFIG, with_metrics=False)
    publisher = MapPublisher(redis_client, prefix="fence")
    key = "ctr:v1:*"
    # Partition 0 is ahead: 800 labels up to E. A refresh publishes n=800 (version E*1000 + 800).
    aggregator.add(key, encode_partial(0, "ctr", "v1", "*", _partial(800, E, 1)))
    first = aggregator.take_dirty(1)
    assert [r.status for r in publisher.publish_many(first)] == ["published"]
    # Partition 1 catches up: 300 labels, all older than E. The merged map now has n=1100.
    aggregator.add(key, encode_partial(1, "ctr", "v1", "*", _partial(300, E - 1_000, 2)))
    second = aggregator.take_dirty(2)
    assert round(second[0].n) == 1100
    results = publisher.publish_many(second)
    stored = publisher.keys.map("ctr:v1:*")
    assert [r.status for r in results] == ["published"], f"refused; Redis keeps {redis_client.get(stored)[:60]!r}"
