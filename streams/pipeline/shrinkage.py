"""Hierarchical maps in the aggregator: parents before children, children shrunk toward their parent's map.

For a model with `shrink_to_parent = true`, a key's parent is the next key of its segment fallback chain
(`*` has none). `Shrinkage.order` sorts one refresh slice's keys by depth, so a parent is fitted before its children;
`prepare` pools the empirical-Bayes `Strength` of every depth of every model over the merged states of that
depth's keys (`recalibrators.hierarchy.estimate_strength`), and `fit` shrinks one child toward the latest map
fitted for its parent in the same model version. Pure logic; the aggregator owns the states.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any

from recalibrators.calibration_map import CalibrationMap
from recalibrators.calibrator import Calibrator
from recalibrators.hierarchy import Strength, estimate_strength, fit_root, shrink_toward
from recalibrators.segments import MODEL_WIDE, fallback_chain, parse_segment_key
from recalibrators.serving.keys import MapField
from streams.pipeline.config import ModelConfig

__all__ = ["Shrinkage"]


class Shrinkage:
    def __init__(self, model_config: Callable[[str], ModelConfig]) -> None:
        self._model_config = model_config
        self.fitted: dict[str, CalibrationMap] = {}  # key -> latest candidate map (gated or not)
        self._states: dict[str, Calibrator] = {}  # key -> latest merged state, for pooling siblings
        self.strengths: dict[tuple[str, str, int], Strength] = {}  # (model, model version, depth) -> pooled

    def enabled(self, key: str) -> bool:
        return self._model_config(MapField.parse(key).model).shrink_to_parent

    def chain(self, key: str) -> list[str]:
        """The key's fallback chain as map keys within its model version, itself first."""
        model, model_version, segment = MapField.parse(key)
        dims = parse_segment_key(segment)
        levels = [sorted(dims), *self._model_config(model).segment_by]
        chain = fallback_chain(dims, levels)
        return [str(MapField(model, model_version, k)) for k in chain] if segment != MODEL_WIDE else [key]

    def parent(self, key: str) -> str | None:
        chain = self.chain(key)
        return chain[1] if len(chain) > 1 else None

    def order(self, keys: Iterable[str], first: Collection[str] = ()) -> list[str]:
        """Parents before children: by depth (distance to `*`), else in the given order (a stable sort);
        the keys in `first` before all others."""
        return sorted(keys, key=lambda k: (k not in first, len(self.chain(k))))

    def prepare(self, keys: Iterable[str], merge: Callable[[str], tuple[str, Calibrator]]) -> None:
        """Before a refresh: merge the changed non-root keys of hierarchical models (`merge(key)` ->
        (model version, merged calibrator)) and forget the pooled strengths, so `fit` pools fresh states."""
        for key in keys:
            if self.enabled(key) and self.parent(key) is not None:
                self._states[key] = merge(key)
        self.strengths.clear()

    def forget(self, key: str) -> None:
        """Drop the merged state kept for pooling (a retired model version's key); its fitted map stays."""
        self._states.pop(key, None)

    def _strength(self, model: str, version: str, depth: int) -> Strength:
        cache = (model, version, depth)
        if cache not in self.strengths:
            pairs = []
            for key, (key_version, calibrator) in self._states.items():
                parent = self.fitted.get(self.parent(key) or "")
                same = MapField.parse(key).model == model and key_version == version and len(self.chain(key)) == depth
                if same and parent is not None and parent.model_version == version:
                    pairs.append((calibrator.histogram, parent))
            self.strengths[cache] = estimate_strength(pairs)
        return self.strengths[cache]

    def fit(self, key: str, calibrator: Calibrator, meta: dict[str, Any], pool: bool = True) -> CalibrationMap | None:
        """`key`'s map shrunk toward its parent's (a root: its own map with the band), or None (a model without
        shrinkage, or no map of the parent in this model version yet: the caller fits the key on its own).
        `pool`: the calibrator is the key's latest state, pooled into its siblings' strength (the gate's
        held-out fit is not)."""
        if not self.enabled(key):
            return None
        parent_key = self.parent(key)
        if parent_key is None:
            return fit_root(calibrator, **meta)
        version = meta["model_version"]
        if pool:
            self._states[key] = (version, calibrator)
        parent = self.fitted.get(parent_key)
        if parent is None or parent.model_version != version:
            return None
        strength = self._strength(MapField.parse(key).model, version, len(self.chain(key)))
        return shrink_toward(calibrator, parent, strength, **meta)
