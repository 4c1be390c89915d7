"""The simulator's pure generator layer: labels follow p_true, the noise shares hold, output is deterministic."""

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from aiokafka.partitioner import murmur2 as kafka_murmur2

from streams.dev.simulator import MALFORMED_KINDS, Reservoir, TrafficGenerator, TrafficScenario, murmur2
from streams.pipeline.events import CLICK, CONVERSION, IMPRESSION, Action, Impression, Invalid, Limits, decode

T0 = 1_700_000_000_000
QUIET = TrafficScenario(
    t0_ms=T0, duplicate_click_share=0, reordered_click_share=0, late_click_share=0, malformed_share=0
)
NOISY = replace(
    QUIET,
    duplicate_click_share=0.1,
    reordered_click_share=0.1,
    late_click_share=0.05,
    malformed_share=0.05,
    batched_share=0.2,
)
PARTITIONS = (3, 3, 3)


def _run(scenario, ticks, n, step_ms=1000, drain_ms=0):
    gen = TrafficGenerator(scenario, PARTITIONS)
    out, messages = [], []
    for k in range(ticks):
        tick = gen.advance(T0 + (k + 1) * step_ms, n)
        out.append(tick)
        messages += tick.messages
    if drain_ms:
        messages += gen.advance(gen.clock_ms + drain_ms, 0).messages
    return gen, out, messages


def _within(observed, p, sigmas=4.0):
    """Observed count of Bernoulli(p) successes within `sigmas` standard deviations of the expectation."""
    return abs(observed - p.sum()) <= sigmas * np.sqrt((p * (1 - p)).sum())


def test_murmur2_matches_the_kafka_client():
    rng = np.random.default_rng(1)
    for length in range(13):
        keys = rng.integers(0, 256, (50, length), dtype=np.uint8)
        assert murmur2(keys).tolist() == [kafka_murmur2(bytes(k)) for k in keys]


def test_reservoir_keeps_the_most_recent():
    r = Reservoir(5)
    r.add(np.arange(3.0), np.arange(3.0))
    r.add(np.arange(3.0, 8.0), np.arange(3.0, 8.0) / 10)
    scores, p_true = r.arrays()
    assert sorted(scores) == [3, 4, 5, 6, 7] and np.allclose(p_true, scores / 10)
    r.add(np.arange(100.0, 120.0), np.zeros(20))
    assert sorted(r.arrays()[0]) == [115, 116, 117, 118, 119]


def test_labels_follow_the_true_probabilities():
    gen, ticks, messages = _run(QUIET, ticks=30, n=5000, drain_ms=600_000)
    p_ctr = np.concatenate([t.p_true[0] for t in ticks])
    clicked = np.concatenate([t.clicked for t in ticks])
    assert _within(clicked.sum(), p_ctr)
    for chunk in np.array_split(np.argsort(p_ctr), 5):  # also within each quintile of p_true
        assert _within(clicked[chunk].sum(), p_ctr[chunk])
    p_cvr = np.concatenate([t.p_true[1] for t in ticks])[clicked]
    converted = np.concatenate([t.converted for t in ticks])[clicked]
    assert _within(converted.sum(), p_cvr)
    # Raw scores sit around the scenario's base rates, miscalibrated per segment on purpose.
    scores = np.concatenate([t.scores for t in ticks], axis=1)
    assert 0.01 < scores[0].mean() < 0.04 and 0.05 < scores[1].mean() < 0.12
    ratios = [s.sum() / p.sum() for s, p in gen.truth().values()]
    assert sum(abs(np.log(r)) > 0.1 for r in ratios) >= 12, ratios  # most segments off by more than 10%
    # Every click was delivered within the drain (no late ones in QUIET); the cvr truth is post-click only.
    sent = Counter(m.topic for m in messages)
    assert sent["ad-clicks"] == clicked.sum() == gen.counters.clicks
    assert sent["ad-impressions"] == gen.counters.impressions == 150_000
    assert sum(s.size for (model, _), (s, _) in gen.truth().items() if model == "cvr") == clicked.sum()


def test_cvr_truth_is_the_probability_of_a_conversion_within_the_window():
    """Simulated: the share of conversions landing within the window of their impression matches
    conversion_in_window, and cvr's truth is P(conversion | click) times it."""
    scenario = replace(QUIET, conversion_window_s=3600.0)  # median 30 min, sigma 2: ~64% within 1 h
    gen, ticks, messages = _run(scenario, ticks=20, n=5000, drain_ms=10 * 86_400_000)
    imp_ts = {}
    for m in messages:
        if m.topic == "ad-impressions":
            for ev in decode(m.value, IMPRESSION, Limits(1 << 20, 64, T0 * 2)):
                imp_ts[ev.impression_id] = ev.ts
    delays = [
        a.ts - imp_ts[a.impression_id]
        for m in messages
        if m.topic == "ad-conversions"
        for a in decode(m.value, CONVERSION, Limits(1 << 20, 64, T0 * 2))
    ]
    share = float(np.mean(np.array(delays) <= 3_600_000))
    n = len(delays)
    expected = scenario.conversion_in_window
    assert 0.6 < expected < 0.66 and abs(share - expected) < 4 * np.sqrt(expected * (1 - expected) / n)
    clicked = np.concatenate([t.clicked for t in ticks])
    p_eventual = np.concatenate([t.p_true[1] for t in ticks])[clicked]
    truth = np.concatenate([p for (model, _), (_, p) in gen.truth().items() if model == "cvr"])
    assert truth.sum() == pytest.approx(p_eventual.sum() * expected)


def _decode_all(messages):
    kinds = {"ad-impressions": IMPRESSION, "ad-clicks": CLICK, "ad-conversions": CONVERSION}
    valid, invalid = [], 0
    for position, msg in enumerate(messages):
        events = list(decode(msg.value, kinds[msg.topic], Limits()))
        if any(isinstance(e, Invalid) for e in events):
            assert len(events) == 1, "the simulator never mixes bad events into array messages"
            invalid += 1
            continue
        for event in events:
            partition = (kafka_murmur2(event.impression_id.encode()) & 0x7FFFFFFF) % PARTITIONS[0]
            assert partition == msg.partition, "co-partitioned by impression_id, as Kafka's partitioner does"
            valid.append((position, msg, event))
    return valid, invalid


def test_noise_shares_and_contract():
    gen, _, messages = _run(NOISY, ticks=40, n=2000, drain_ms=4 * 3_600_000)
    c = gen.counters
    valid, invalid = _decode_all(messages)

    assert sum(c.sent.values()) == len(messages)
    assert invalid == sum(c.malformed.values())
    assert set(c.malformed) == set(MALFORMED_KINDS)
    assert invalid / c.impressions == pytest.approx(0.05, abs=0.01)

    impressions = {e.impression_id: (pos, e) for pos, _, e in valid if isinstance(e, Impression)}
    assert len(impressions) == c.impressions == 80_000
    in_arrays = sum(1 for _, m, e in valid if isinstance(e, Impression) and m.value.startswith(b"["))
    assert in_arrays / c.impressions == pytest.approx(0.2, abs=0.02)
    assert sum(1 for m in messages if m.value.startswith(b"[")) == c.array_messages

    clicks = [(pos, e) for pos, _, e in valid if isinstance(e, Action) and e.kind == CLICK]
    per_impression = Counter(e.impression_id for _, e in clicks)
    assert len(per_impression) == c.clicks and sum(per_impression.values()) == c.clicks + c.duplicates
    assert c.duplicates / c.clicks == pytest.approx(0.1, abs=0.03)
    click_ids = Counter(e.action_id for _, e in clicks)
    assert 0 < sum(n == 2 for n in click_ids.values()) < c.duplicates  # some duplicates reuse the click_id

    before_impression = {e.impression_id for pos, e in clicks if pos < impressions[e.impression_id][0]}
    assert len(before_impression) == c.reordered
    assert c.reordered / c.clicks == pytest.approx(0.1, abs=0.03)

    first_click_ts = {}
    for _, e in clicks:
        first_click_ts.setdefault(e.impression_id, e.ts)
    late = sum(ts - impressions[iid][1].ts > NOISY.click_window_s * 1000 for iid, ts in first_click_ts.items())
    assert late == c.late_clicks and c.late_clicks / c.clicks == pytest.approx(0.05, abs=0.02)

    conversions = [e for _, _, e in valid if isinstance(e, Action) and e.kind == CONVERSION]
    assert {e.impression_id for e in conversions} <= set(per_impression)  # only clicked impressions convert
    assert len(conversions) + gen.pending == c.conversions  # the long tail is still scheduled


def test_deterministic_for_a_seed():
    first = _run(NOISY, ticks=5, n=500, drain_ms=60_000)[2]
    assert first == _run(NOISY, ticks=5, n=500, drain_ms=60_000)[2]
    assert first != _run(replace(NOISY, seed=8), ticks=5, n=500, drain_ms=60_000)[2]


def test_drift_changes_every_segment_abruptly():
    gen = TrafficGenerator(replace(QUIET, drift_at_s=60), PARTITIONS)
    before = gen.advance(T0 + 60_000, 30_000)
    after = gen.advance(T0 + 120_000, 30_000)
    for model in (0, 1):
        for segment in range(len(QUIET.segments)):
            pre = before.p_true[model][before.segment == segment].mean()
            post = after.p_true[model][after.segment == segment].mean()
            assert abs(np.log(post / pre)) > 0.25, (model, segment)
