"""Issue #14 on the real broker: a conversion model with a 7-day window and 2 event days of traffic (no window
closes) publishes delay-corrected maps close to the true in-window probability; a `kill -9` mid-stream and a
restart leave the pending exposure, the delay model and the counts exactly as an uninterrupted run has them."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from streams.dev.devstack import namespace_toml
from tests.support.kit import PARTITIONS, T0, new_ns, produce, read_map

DAY = 86_400_000
N = 6_000
PLACEMENTS = ("search", "feed", "related")
IN_WINDOW = 0.5 * (1 + math.erf(math.log(7) / 1.5 / math.sqrt(2)))  # lognormal(ln 1 d, 1.5) delay <= 7 d


def _config(ns: str) -> str:
    return """
[defaults]
label = "conversion"
window = "7d"
allowed_lateness = "1s"
segment_by = [["placement"]]
half_life = "100000d"
refresh_interval = "1s"
min_samples = 50
method = "platt"

[models.cvr]
label_delay = "corrected"
""" + namespace_toml(
        ns,
        partitions=PARTITIONS,
        grace="5s",
        checkpoint_interval="1s",
        partials_interval="500ms",
        holdout_percent=0,
        max_future_skew="100000d",
        session_timeout="6s",
    )


def _traffic(ns: str, seed: int = 14):
    """Impressions over 2 event days and the conversions that landed by then, in event-time order."""
    rng = np.random.default_rng(seed)
    ts = T0 + np.sort(rng.integers(0, 2 * DAY, N))
    scores = 1 / (1 + np.exp(-rng.normal(-2.0, 0.7, N)))
    p = np.clip(1.5 * scores, 0, 1)
    delay = np.exp(np.log(DAY) + 1.5 * rng.normal(size=N)).astype(np.int64)
    converted = (rng.random(N) < p) & (delay <= 7 * DAY) & (ts + delay < T0 + 2 * DAY)
    events = []
    for i in range(N):
        iid = f"{ns}-imp-{i}"
        doc = {
            "impression_id": iid,
            "ts": int(ts[i]),
            "segment": {"placement": PLACEMENTS[i % 3]},
            "predictions": [{"model": "cvr", "version": "v1", "score": float(scores[i])}],
        }
        events.append((int(ts[i]), (f"{ns}-impressions", iid, orjson.dumps(doc))))
        if converted[i]:
            conv = {"conversion_id": f"v{i}", "impression_id": iid, "ts": int(ts[i] + delay[i])}
            events.append((int(ts[i] + delay[i]), (f"{ns}-conversions", iid, orjson.dumps(conv))))
    events.sort(key=lambda e: e[0])
    # a key's map version: its open windows + their conversions (delay_pending.corrected_version; nothing matured)
    placement = np.arange(N) % len(PLACEMENTS)
    versions = {
        f"placement={name}": int((placement == k).sum() + converted[placement == k].sum())
        for k, name in enumerate(PLACEMENTS)
    }
    versions["*"] = N + int(converted.sum())
    return [m for _, m in events], scores, p * IN_WINDOW, versions


def _wait_for_versions(stack, ns, worker, versions: dict[str, int]):
    """Every cvr map at its final version (a sibling may be refreshed after the model-wide map)."""

    def done(_stats) -> bool:
        maps = {key: read_map(stack.redis_url, ns, "cvr", key) for key in versions}
        return all(m is not None and m.map_version == versions[key] for key, m in maps.items())

    worker.wait_for(done, 120, f"the cvr maps at versions {versions}", poll_s=0.5)
    return {key: read_map(stack.redis_url, ns, "cvr", key) for key in versions}


def _fingerprint(m):
    return (m.map_version, len(m.x), round(m.n, 6), round(m.positives, 6), m.metrics_dict)


@pytest.mark.slow
def test_corrected_maps_before_any_window_closes_and_exact_after_kill9(stack, start_worker):
    clean_ns, crash_ns = new_ns(), new_ns()
    messages, scores, p_window, versions = _traffic(clean_ns)

    worker = start_worker(_config(clean_ns), log_name="clean.log")
    worker.wait_ready()
    produce(stack.broker_url, messages)
    clean = _wait_for_versions(stack, clean_ns, worker, versions)
    worker.stop()

    model_wide = clean["*"]
    metrics = model_wide.metrics_dict
    assert metrics["matured_fraction"] == 0.0 and metrics["delay_level"] == 0, metrics
    assert metrics["delay_method"] == "life_table+lognormal", metrics
    ratio = model_wide.apply(scores).sum() / p_window.sum()
    assert abs(ratio - 1) < 0.1, ratio
    raw_ratio = scores.sum() / p_window.sum()
    assert abs(raw_ratio - 1) > 0.2  # the raw model is off: the map's correction is real

    crash_messages, _, _, _ = _traffic(crash_ns)
    worker = start_worker(_config(crash_ns), log_name="crash-1.log")
    worker.wait_ready()
    half = len(crash_messages) // 2
    produce(stack.broker_url, crash_messages[:half])
    base = worker.wait_for(lambda s: s["snapshots"] >= PARTITIONS, 60, "a first checkpoint")["snapshots"]
    worker.wait_for(lambda s, b=base: s["snapshots"] > b, 30, "the next checkpoint", poll_s=0.05)
    produce(stack.broker_url, crash_messages[half : half + half // 2])  # read past the snapshot, then lost
    worker.kill()
    worker = start_worker(_config(crash_ns), log_name="crash-2.log")
    worker.wait_ready()
    produce(stack.broker_url, crash_messages[half + half // 2 :])
    crashed = _wait_for_versions(stack, crash_ns, worker, versions)
    for key, m in clean.items():  # counts and delay model exact; the fit to float rounding (batch boundaries
        # change the order of the decayed sums' additions)
        assert _fingerprint(crashed[key]) == _fingerprint(m), key
        np.testing.assert_allclose(crashed[key].x, m.x, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(crashed[key].y, m.y, rtol=1e-12, atol=1e-15)
