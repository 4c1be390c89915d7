"""ModelVersions.admit_impressions against admitting prediction by prediction (the rule it must equal)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.pipeline.config import ModelConfig
from streams.pipeline.events import ImpressionEvent, Prediction
from streams.pipeline.versions import ModelVersions

CONFIG = ModelConfig(max_versions=2, version_idle_ms=1_000)

prediction = st.builds(Prediction, st.sampled_from(["ctr", "cvr"]), st.sampled_from(["v1", "v2", "v3"]), st.just(0.1))
impression = st.builds(
    lambda ts, predictions: ImpressionEvent("i", ts, predictions, {}),
    st.integers(0, 5_000),
    st.lists(prediction, min_size=1, max_size=3, unique_by=lambda p: p.model),
)


def state(versions: ModelVersions) -> dict:
    return {m: (live.live, live.first, live.now_ms, live.refused) for m, live in versions.models.items()}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(impression, max_size=8), max_size=6))
def test_a_batch_is_admitted_as_its_predictions_one_by_one(batches):
    batched, one_by_one = ModelVersions(lambda _: CONFIG), ModelVersions(lambda _: CONFIG)
    for batch in batches:
        expected = [all(one_by_one.admit(p.model, p.model_version, e.ts) for p in e.predictions) for e in batch]
        assert batched.admit_impressions(batch) == expected
        assert state(batched) == state(one_by_one)
