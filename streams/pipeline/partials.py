"""Per-partition ("partial") calibrators: the labeled examples of one join partition, folded into a
calibrator per (model, model version, segment key) for every level of the model's fallback chain.

Partials are absolute states, not deltas: the aggregator keeps the latest partial of each partition
and merges them, so a partial sent twice (a retry, a restart) changes nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from recalibrators.calibrator import Calibrator, CalibratorConfig
from recalibrators.grouped import learn_grouped
from recalibrators.histogram import BinSpec
from recalibrators.segments import fallback_chain
from streams.pipeline.config import ModelConfig

log = logging.getLogger("recal.partials")

CalibratorKey = tuple[str, str, str]  # model, model version, segment key


@functools.lru_cache(maxsize=1024)  # one per model config; its bins are computed once
def calibrator_config(model: ModelConfig) -> CalibratorConfig:
    overrides: dict[str, Any] = {"method": model.method, "half_life_ms": float(model.half_life_ms)}
    if model.n_bins:
        overrides["n_bins"] = model.n_bins
    if model.prior_strength:
        overrides["prior_strength"] = model.prior_strength
    return CalibratorConfig(**overrides)


def batch_groups(columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(order, starts): the batch's rows sorted by (model, version, segment), stably (each group keeps the
    record's order), and the position in `order` where each group starts."""
    group = (
        (columns["model"].astype(np.int64) << 48)
        | (columns["version"].astype(np.int64) << 32)
        | columns["segment"].astype(np.int64)
    )
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    return order, np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])


def row_groups(columns: dict[str, np.ndarray]) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """(model, version, segment index, rows) per distinct triple of the batch (`batch_groups`)."""
    order, starts = batch_groups(columns)
    for start, end in zip(starts, np.r_[starts[1:], len(order)], strict=True):
        rows = order[start:end]
        first = rows[0]
        yield int(columns["model"][first]), int(columns["version"][first]), int(columns["segment"][first]), rows


class PartialCalibrators:
    """The calibrators fed by one partition's labeled examples."""

    def __init__(self, model_config: Callable[[str], ModelConfig]) -> None:
        self._model_config = model_config
        self.calibrators: dict[CalibratorKey, Calibrator] = {}
        self.dirty: set[CalibratorKey] = set()

    def learn(
        self, columns: dict[str, np.ndarray], models: list[str], versions: list[str], segments: list[dict[str, str]]
    ) -> None:
        """Fold a batch of examples in; indices in `columns` point into the three string tables."""
        if not len(columns["label"]):
            return
        order, starts = batch_groups(columns)
        # One pass over the groups for their fallback chains, then every histogram update of the batch at once
        # per bin layout (recalibrators.grouped: bit-identical to learning group by group).
        targets: dict[BinSpec, list[tuple[Calibrator, int]]] = {}
        for g, first in enumerate(order[starts]):
            model = models[columns["model"][first]]
            version = versions[columns["version"][first]]
            cfg = self._model_config(model)
            config = calibrator_config(cfg)
            pairs = targets.setdefault(config.bins, [])
            for segment in fallback_chain(segments[columns["segment"][first]], cfg.segment_by):
                key = (model, version, segment)
                calibrator = self.calibrators.get(key)
                if calibrator is None:
                    calibrator = self.calibrators[key] = Calibrator(config)
                pairs.append((calibrator, g))
                self.dirty.add(key)
        for pairs in targets.values():
            learn_grouped(order, starts, pairs, columns["score"], columns["label"], columns["ts"], columns["holdout"])

    def take_dirty(self) -> list[tuple[CalibratorKey, Calibrator]]:
        dirty, self.dirty = self.dirty, set()
        return [(key, self.calibrators[key]) for key in sorted(dirty)]

    def to_blobs(self) -> tuple[list[list[str]], list[bytes]]:
        keys = sorted(self.calibrators)
        return [list(k) for k in keys], [self.calibrators[k].to_bytes() for k in keys]

    @classmethod
    def from_blobs(
        cls, model_config: Callable[[str], ModelConfig], keys: list[list[str]], blobs: list[bytes]
    ) -> PartialCalibrators:
        """Restore a snapshot's calibrators, all marked changed: the partials sent after the snapshot may have
        been lost with the process, and the aggregator must not wait for a key's next label to get them.

        A calibrator saved under other settings than the model's current ones (n_bins, half_life, method,
        prior_strength changed between two runs) is carried over to the current settings
        (`Calibrator.with_config`: counts exact, re-binned at each old bin's mean score)."""
        partials = cls(model_config)
        changed: dict[str, list[str]] = {}
        for key, blob in zip(keys, blobs, strict=True):
            model = key[0]
            calibrator = Calibrator.from_bytes(bytes(blob))
            target = calibrator_config(model_config(model))
            if calibrator.config != target:
                changed.setdefault(model, []).extend(_config_diff(calibrator.config, target))
                calibrator = calibrator.with_config(target)
            partials.calibrators[tuple(key)] = calibrator
        partials.dirty = set(partials.calibrators)
        for model, diffs in sorted(changed.items()):
            log.warning(
                "model %r: calibrator settings changed since the snapshot (%s); state carried over",
                model,
                ", ".join(sorted(set(diffs))),
            )
        return partials


def _config_diff(old: CalibratorConfig, new: CalibratorConfig) -> list[str]:
    return [
        f"{f.name} {getattr(old, f.name)!r} -> {getattr(new, f.name)!r}"
        for f in dataclasses.fields(CalibratorConfig)
        if getattr(old, f.name) != getattr(new, f.name)
    ]
