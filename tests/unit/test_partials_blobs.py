"""A snapshot re-encodes only the partial calibrators learned since the last one, and always holds every
calibrator's current state."""

import numpy as np

from recalibrators.calibrator import Calibrator
from streams.pipeline.config import ModelConfig
from streams.pipeline.partials import PartialCalibrators

CFG = ModelConfig(segment_by=(("site",),))


def columns(segment: int, n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "model": np.zeros(n, np.int32),
        "version": np.zeros(n, np.int32),
        "segment": np.full(n, segment, np.int32),
        "score": rng.uniform(0.01, 0.5, n),
        "label": (rng.random(n) < 0.2).astype(np.int8),
        "ts": np.full(n, 1_700_000_000_000 + seed, np.int64),
        "holdout": np.zeros(n, bool),
    }


def test_a_snapshot_reencodes_only_what_was_learned_and_matches_the_state():
    partials = PartialCalibrators(lambda name: CFG)
    segments = [{"site": "a"}, {"site": "b"}]
    partials.learn(columns(0, 50, 1), ["ctr"], ["v1"], segments)
    partials.learn(columns(1, 50, 2), ["ctr"], ["v1"], segments)
    keys, first = partials.to_blobs()
    partials.learn(columns(1, 30, 3), ["ctr"], ["v1"], segments)  # site b and the fallback level change
    keys2, second = partials.to_blobs()
    assert keys2 == keys
    for key, old, new in zip(keys, first, second, strict=True):
        assert new == partials.calibrators[tuple(key)].to_bytes()  # always the current state
        assert (new is old) == (key[2] == "site=a")  # only site a was not learned since
    assert Calibrator.from_bytes(second[keys.index(["ctr", "v1", "site=b"])]).n_seen == 80


def many_groups(n_groups: int, seed: int) -> tuple[dict[str, np.ndarray], list[dict[str, str]]]:
    """Examples of n_groups sites (and the model-wide level), rows shuffled, two versions, event times spread."""
    rng = np.random.default_rng(seed)
    n = 20 * n_groups
    cols = {
        "model": np.zeros(n, np.int32),
        "version": rng.integers(0, 2, n).astype(np.int32),
        "segment": rng.integers(0, n_groups, n).astype(np.int32),
        "score": rng.uniform(0.01, 0.5, n),
        "label": (rng.random(n) < 0.2).astype(np.int8),
        "ts": 1_700_000_000_000 + rng.integers(0, 3_600_000, n),
        "holdout": rng.random(n) < 0.1,
    }
    return cols, [{"site": f"s{i}"} for i in range(n_groups)]


def test_learning_in_steps_is_bit_identical_to_one_pass(monkeypatch):
    cols, segments = many_groups(300, seed=4)
    whole = PartialCalibrators(lambda name: CFG)
    whole.learn(cols, ["ctr"], ["v1", "v2"], segments)
    monkeypatch.setattr("streams.pipeline.partials.STEP_GROUPS", 7)
    stepped = PartialCalibrators(lambda name: CFG)
    pauses = sum(1 for _ in stepped.learn_steps(cols, ["ctr"], ["v1", "v2"], segments))
    assert pauses == -(-600 // 7) - 1  # 600 (version, site) groups, 7 per step
    assert stepped.to_blobs() == whole.to_blobs()  # both model-wide keys learned across steps, in order


def test_a_partial_and_the_next_snapshot_share_one_encoding():
    partials = PartialCalibrators(lambda name: CFG)
    partials.learn(columns(0, 50, 1), ["ctr"], ["v1"], [{"site": "a"}])
    sent = {key: partials.blob(key) for key, _ in partials.take_dirty()}
    keys, blobs = partials.to_blobs()
    assert all(blob is sent[tuple(key)] for key, blob in zip(keys, blobs, strict=True))
