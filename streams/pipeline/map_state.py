"""One map key's state in the aggregator: the partitions' partials, their merge, and a new key's warm-start prior.

A partial record (`encode_partial`) carries one partition's calibrator for one key; `MapState` holds the latest
per partition; `merged` adds them up. A new version's key takes
its prior from the source version's map along the segment's fallback chain (`warm_start_prior`).
"""

from __future__ import annotations

import numpy as np

from recalibrators.calibration_map import CalibrationMap
from recalibrators.calibrator import Calibrator, CalibratorConfig
from recalibrators.calibrator_codec import peek
from recalibrators.segments import fallback_chain, parse_segment_key
from recalibrators.serving.keys import MapField
from streams.pipeline.config import ModelConfig
from streams.pipeline.partials import calibrator_config
from streams.pipeline.records import pack
from streams.pipeline.versions import ModelVersions

__all__ = ["WARM_START_Z", "MapState", "encode_partial", "merged", "warm_start_prior", "with_held_back"]

# A warm start's prior serves only while the key's data departs from it by no more than chance (chi-square
# excess <= 0 z): keeping a wrong prior costs far more than dropping a right one, whose fallback is the key's
# own fit. Measured (bench_versions' v2, per finest segment of 500 / 2,000 / 100,000 examples, L1 x 1e-4):
# z = 2 gives 65.8 / 34.9 / 19.2, z = 0 gives 61.2 / 27.2 / 17.95, the own fit 54.3 / 27.2 / 17.95.
WARM_START_Z = 0.0


def encode_partial(
    partition: int,
    model: str,
    model_version: str,
    segment: str,
    calibrator: Calibrator | bytes,
    delayed: bytes | None = None,
) -> bytes:
    """calibrator: the state, or its bytes (`Calibrator.to_bytes`); delayed: the key's
    `streams.pipeline.delayed.DelayedPartial` (label_delay = "corrected"), a second blob."""
    header = {"partition": partition, "model": model, "model_version": model_version, "segment": segment}
    blob = calibrator if isinstance(calibrator, bytes) else calibrator.to_bytes()
    return pack(header, [blob, *([delayed] if delayed is not None else [])])


class MapState:
    """What the aggregator holds for one key: the latest partial per partition and the warm-start prior."""

    def __init__(self) -> None:
        self.partials: dict[int, bytes] = {}  # partition -> calibrator bytes
        self.delayed: dict[int, bytes] = {}  # partition -> DelayedPartial bytes (corrected models)
        self.prior: CalibrationMap | None = None
        self.prior_chosen = False  # chosen once, with the key's first partial: a prior that moved would move the map
        self._prior_json: str | None = None

    def prior_json(self) -> str | None:
        """The prior's JSON, made once (the prior record's value, `streams.pipeline.partials_topic`)."""
        if self.prior is not None and self._prior_json is None:
            self._prior_json = self.prior.to_json().decode()
        return self._prior_json

    def adopt_prior(self, prior_json: str | None) -> None:
        """Take the prior stored with the key (its JSON, or None: the key's own fit) as the chosen one."""
        self.prior = None if prior_json is None else CalibrationMap.from_json(prior_json)
        self._prior_json, self.prior_chosen = prior_json, True

    def examples(self) -> int:
        return sum(peek(blob)[1] for blob in self.partials.values())

    def copy(self) -> MapState:
        """A snapshot for the map builder: the dicts copied (their bytes and the prior are never mutated)."""
        copy = MapState()
        copy.partials, copy.prior, copy.prior_chosen = dict(self.partials), self.prior, self.prior_chosen
        copy.delayed, copy._prior_json = dict(self.delayed), self._prior_json
        return copy


def merged(
    partials: dict[int, bytes], prior: CalibrationMap | None, config: CalibratorConfig | None = None
) -> Calibrator:
    """Merge partition partials in partition order (deterministic float summation). Partials saved under
    other settings (a config change, a rolling restart) are carried over to `config` first."""
    calibrators = [Calibrator.from_bytes(partials[p]) for p in sorted(partials)]
    config = config or calibrators[0].config
    calibrators = [c if c.config == config else c.with_config(config) for c in calibrators]
    total = Calibrator(config, prior)
    for calibrator in calibrators:
        total = total.merge(calibrator)
    return total


def with_held_back(calibrator: Calibrator) -> Calibrator:
    """`calibrator` whose fitting histogram also holds its held-back examples, as decayed in the holdout (its
    shorter half-life: recent ones count fully). A bin's held-back mean logit is the logit of its mean score
    (the holdout keeps no logit sums; bins are 1/8 logit wide). n_seen is unchanged."""
    held = calibrator.holdout
    z = calibrator.config.bins.clip_logit(held.mean_score())[1]
    sums = np.where(held.nonempty(), np.vstack((held.sums, held.sums[0] * z)), 0.0)
    return calibrator.with_pending(sums, calibrator.last_event_ms)


def warm_start_prior(
    field: MapField,
    cfg: ModelConfig,
    live: ModelVersions,
    published: dict[str, CalibrationMap],
    states: dict[str, MapState],
) -> CalibrationMap | None:
    """The warm-start prior of a new key: the source version's map along the segment's fallback chain (its
    published map, else its merged state once it has `min_samples`); None with no source or `reset`.

    >>> cfg = ModelConfig()
    >>> live = ModelVersions(lambda model: cfg)
    >>> live.admit("ctr", "v1", 0), live.admit("ctr", "v2", 10)
    (True, True)
    >>> from recalibrators.calibration_map import identity_map
    >>> v1 = identity_map(model="ctr", model_version="v1", map_version=5)
    >>> prior = warm_start_prior(MapField("ctr", "v2", "placement=feed"), cfg, live, {"ctr:v1:*": v1}, {})
    >>> prior.model_version, prior.map_version
    ('v1', 5)
    """
    if cfg.on_new_version != "warm_start":
        return None
    source = cfg.warm_start_from or live[field.model].most_recent(before=field.model_version)
    if not source or source == field.model_version:
        return None
    segment = parse_segment_key(field.segment_key)
    for seg in fallback_chain(segment, [list(segment), *cfg.segment_by]):
        key = str(MapField(field.model, source, seg))
        if (m := published.get(key)) is not None:
            return m
        if (state := states.get(key)) is not None and state.partials:
            calibrator = merged(state.partials, state.prior, calibrator_config(cfg))
            if calibrator.n_effective >= cfg.min_samples:
                return calibrator.to_map(model=field.model, model_version=source, segment=parse_segment_key(seg))
    return None
