"""Cardinality caps: how many models a worker calibrates, and per model how many segment keys each level of
its fallback chain may hold.

Every new segment value makes a calibrator (~7 KB) per level that every snapshot serialises and every
refresh may rebuild; a producer that puts a user or request id in a segment dimension would otherwise grow
the worker until it breaks. An impression that would create a model beyond `[worker] max_models`, or a
segment key beyond its model's `max_segments` at any level (the model-wide `*` level is never capped), is
refused whole before the join: dead-lettered with reason `cardinality:models` or `cardinality:segments`
(counted in `recal_dead_letters_total`), and logged once per model and level. Its clicks then become
`orphan_click` dead letters. Keys already known keep learning; raise the cap or coarsen `segment_by` to
admit more. The guard is per worker; on assignment it learns the keys of the restored partitions.

>>> from streams.pipeline.config import Config, ModelConfig
>>> from streams.pipeline.events import Impression
>>> guard = CardinalityGuard(Config(max_models=10), lambda m: ModelConfig(segment_by=(("placement",),), max_segments=2))
>>> [guard.admit(Impression(f"i{n}", 0, {"placement": p}, [("ctr", "v1", 0.1)])) for n, p in enumerate("aabc")]
[None, None, None, 'cardinality:segments']
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from recalibrators.segments import parse_segment_key, project, segment_key
from streams.pipeline.config import Config, ModelConfig

log = logging.getLogger("recal.cardinality")

MODELS = "cardinality:models"
SEGMENTS = "cardinality:segments"
Level = tuple[str, ...]  # the sorted dimension names of one fallback level


class CardinalityGuard:
    def __init__(self, config: Config, model_config: Callable[[str], ModelConfig]) -> None:
        self.max_models = config.max_models
        self._model_config = model_config
        self.models: set[str] = set()
        self.keys: dict[tuple[str, Level], set[str]] = {}  # (model, level) -> segment keys admitted
        self._warned: set[tuple[str, Level | None]] = set()

    def _levels(self, segment: dict[str, str], cfg: ModelConfig) -> Iterable[tuple[Level, str]]:
        for dims in cfg.segment_by:
            projected = project(segment, dims)
            if projected:
                yield tuple(sorted(dims)), segment_key(projected)

    def admit(self, impression) -> str | None:
        """None (and the impression's models and keys are recorded) or the reason it is refused."""
        new_models: set[str] = set()
        new_keys: list[tuple[tuple[str, Level], str]] = []
        for model, _version, _score in impression.predictions:
            if model not in self.models and model not in new_models:
                if self.max_models and len(self.models) + len(new_models) >= self.max_models:
                    self._warn(model, None, f"more than {self.max_models} models (max_models)")
                    return MODELS
                new_models.add(model)
            cfg = self._model_config(model)
            for level, key in self._levels(impression.segment, cfg):
                seen = self.keys.get((model, level), ())
                if key in seen:
                    continue
                if cfg.max_segments and len(seen) >= cfg.max_segments:
                    self._warn(model, level, f"more than {cfg.max_segments} segment keys (max_segments)")
                    return SEGMENTS
                new_keys.append(((model, level), key))
        self.models |= new_models
        for where, key in new_keys:
            self.keys.setdefault(where, set()).add(key)
        return None

    def observe(self, calibrator_keys: Iterable[tuple[str, str, str]]) -> None:
        """Learn the (model, model version, segment key) of restored calibrators (never refused: they exist)."""
        for model, _version, key in calibrator_keys:
            self.models.add(model)
            dims = parse_segment_key(key)
            if dims:
                self.keys.setdefault((model, tuple(sorted(dims))), set()).add(key)

    def sizes(self) -> dict[str, int]:
        """Segment keys tracked per model (all levels): the cardinality gauge."""
        out: dict[str, int] = dict.fromkeys(list(self.models), 0)
        for (model, _level), keys in list(self.keys.items()):
            out[model] = out.get(model, 0) + len(keys)
        return out

    def _warn(self, model: str, level: Level | None, what: str) -> None:
        if (model, level) not in self._warned:
            self._warned.add((model, level))
            where = f"level {list(level)}" if level is not None else "this worker"
            log.warning("model %r, %s: %s; impressions needing more are dead-lettered", model, where, what)
