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
# Groups learned between two pauses of `learn_steps`: ~25 us per (calibrator, group) pair when most keys are new,
# so 250 groups of 1-3 levels each hold the loop for ~10-20 ms (more while another thread holds the GIL).
STEP_GROUPS = 250
LEARNED = ("score", "label", "ts", "holdout")  # the columns learn_grouped takes, in its order


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
        # Serialised states of the keys not learned since their last snapshot: a snapshot encodes only the
        # keys that changed (all keys every checkpoint was ~11% of a worker's CPU at 6,000 keys per partition).
        self._blobs: dict[CalibratorKey, bytes] = {}

    def learn(
        self, columns: dict[str, np.ndarray], models: list[str], versions: list[str], segments: list[dict[str, str]]
    ) -> None:
        """Fold a batch of examples in; indices in `columns` point into the three string tables."""
        for _ in self.learn_steps(columns, models, versions, segments):
            pass

    def learn_steps(
        self, columns: dict[str, np.ndarray], models: list[str], versions: list[str], segments: list[dict[str, str]]
    ) -> Iterator[None]:
        """`learn`, pausing (one `yield`) after every STEP_GROUPS groups, so a caller on the event loop can
        hand it back: a window expiry of ~20,000 keys' examples, most of them new keys, held the loop for
        2 s. Bit-identical to `learn`: the groups are learned in the same order, each calibrator's own
        (calibrator, group) pairs too."""
        if not len(columns["label"]):
            return
        order, starts = batch_groups(columns)
        ends = np.r_[starts[1:], len(order)]
        for begin in range(0, len(starts), STEP_GROUPS):
            if begin:
                yield
            end = min(begin + STEP_GROUPS, len(starts))
            rows = order[starts[begin] : ends[end - 1]]  # these groups' rows, in group order
            step = {name: columns[name][rows] for name in ("model", "version", "segment", *LEARNED)}
            self._learn_groups(step, models, versions, segments, starts[begin:end] - starts[begin])

    def _learn_groups(self, columns, models, versions, segments, starts: np.ndarray) -> None:
        """Rows already in group order (group g: rows starts[g] .. starts[g + 1]): one pass over the groups for
        their fallback chains, then every histogram update at once per bin layout (recalibrators.grouped:
        bit-identical to learning group by group)."""
        targets: dict[BinSpec, list[tuple[Calibrator, int]]] = {}
        for g, first in enumerate(starts.tolist()):
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
                self._blobs.pop(key, None)
        order = np.arange(len(columns["label"]))
        for pairs in targets.values():
            learn_grouped(order, starts, pairs, *(columns[name] for name in LEARNED))

    def take_dirty(self) -> list[tuple[CalibratorKey, Calibrator]]:
        dirty, self.dirty = self.dirty, set()
        return [(key, self.calibrators[key]) for key in sorted(dirty)]

    def blob(self, key: CalibratorKey) -> bytes:
        """The calibrator's bytes, encoded once per change: the partial sent for it and the next snapshot share them."""
        blob = self._blobs.get(key)
        if blob is None:
            blob = self._blobs[key] = self.calibrators[key].to_bytes()
        return blob

    def to_blobs(self) -> tuple[list[list[str]], list[bytes]]:
        keys = sorted(self.calibrators)
        return [list(k) for k in keys], [self.blob(k) for k in keys]

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
