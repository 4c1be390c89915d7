"""On the real broker and Redis: a sparse child segment is published shrunk toward its parent (#16).

`ctr` is segmented placement x platform -> placement -> `*` with `shrink_to_parent = true` and a `min_samples` of
1,000: the 150-impression child `placement=feed|platform=ios` would never pass today's gate; it is published at
once, as method "hierarchical", closer to its parent's map than its own fit is, with a credible band.
"""

from __future__ import annotations

import uuid

import numpy as np
import orjson
import redis

from recalibrators import Calibrator, CalibratorConfig
from recalibrators.calibration_map import CalibrationMap
from streams.pipeline.topics import ids_covering_partitions
from tests.support import kit
from tests.support.kit import CTR, produce_then_ticks

T0 = 1_790_000_000_000
PARTITIONS = 2
SIZES = {"android": 3_000, "ios": 150}  # impressions of placement=feed per platform


def config_text(ns: str) -> str:
    segment_by = [["placement", "platform"], ["placement"]]
    return kit.config_text(ns, CTR + "shrink_to_parent = true\n", segment_by=segment_by, min_samples=1000)


def impression(iid: str, ts: int, platform: str, score: float) -> bytes:
    segment = {"placement": "feed", "platform": platform}
    return orjson.dumps({"impression_id": iid, "ts": ts, "segment": segment, "predictions": [
        {"model": "ctr", "version": "v1", "score": score}]})  # fmt: skip


def traffic(ns: str) -> tuple[list, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Impressions (score uniform in [0.02, 0.3], clicked with probability 0.6 * score) and their clicks."""
    rng = np.random.default_rng(16)
    messages, examples, i = [], {}, 0
    for platform, n in SIZES.items():
        scores = rng.uniform(0.02, 0.3, n)
        labels = rng.random(n) < 0.6 * scores
        examples[platform] = (scores, labels)
        for score, label in zip(scores.tolist(), labels.tolist(), strict=True):
            iid, ts = f"{ns}-imp-{i}", T0 + i
            messages.append((f"{ns}-impressions", iid, impression(iid, ts, platform, score)))
            if label:
                click = {"click_id": f"c{i}", "impression_id": iid, "ts": ts + 1000}
                messages.append((f"{ns}-clicks", iid, orjson.dumps(click)))
            i += 1
    end = T0 + 60_000  # ticks move every partition's watermark past the window
    for iid in ids_covering_partitions(f"{ns}-tick", PARTITIONS):
        messages.append((f"{ns}-impressions", iid, impression(iid, end, "tick", 0.1)))
    return messages, examples


def maps_in_redis(redis_url: str, ns: str) -> dict[tuple[str, str], CalibrationMap]:
    """Every map of the namespace by (model, segment dims joined), whatever the key layout."""
    client = redis.Redis.from_url(redis_url)
    out = {}
    for key in client.scan_iter(match=f"{ns}:map:*"):
        m = CalibrationMap.from_json(client.get(key))
        out[(m.model, ",".join(f"{k}={v}" for k, v in m.segment))] = m
    return out


def test_sparse_child_is_published_shrunk_toward_its_parent(stack, start_worker):
    ns = f"t{uuid.uuid4().hex[:8]}"
    messages, examples = traffic(ns)
    worker = start_worker(config_text(ns))
    worker.wait_ready()
    produce_then_ticks(stack.broker_url, messages[:-PARTITIONS], messages[-PARTITIONS:])  # ticks are last
    child_id, parent_id = ("ctr", "placement=feed,platform=ios"), ("ctr", "placement=feed")

    def published(_stats) -> bool:
        maps = maps_in_redis(stack.redis_url, ns)
        return child_id in maps and parent_id in maps and round(maps[child_id].n) == SIZES["ios"]

    worker.wait_for(published, 90.0, "the sparse child's map")
    maps = maps_in_redis(stack.redis_url, ns)
    child, parent = maps[child_id], maps[parent_id]
    assert child.method == "hierarchical" and child.n < 1000  # below min_samples, published anyway
    assert child.y_lo is not None and np.all(child.y_lo <= child.y) and np.all(child.y <= child.y_hi)
    own = Calibrator(CalibratorConfig(half_life_ms=100_000 * 86_400_000))
    own.learn_batch(*examples["ios"], ts_ms=T0)
    grid = np.linspace(0.02, 0.3, 200)
    to_parent = np.abs(child.apply(grid) - parent.apply(grid)).mean()
    own_to_parent = np.abs(own.to_map().apply(grid) - parent.apply(grid)).mean()
    assert to_parent < 0.5 * own_to_parent
    truth = 0.6 * grid  # and the shrunk child is nearer the truth than its own 150-example fit
    assert np.abs(child.apply(grid) - truth).mean() < np.abs(own.to_map().apply(grid) - truth).mean()
