"""The join's interned strings: models, model versions, segments, and the (model, version, segment)
groups a prediction belongs to. Slots carry one u32 group index instead of three strings.

A segment is interned as projected on its model's `segment_by` dimensions (the only ones any map is
keyed by), and tables are pruned to what pending impressions still use (#13 item 4): a stream of new
segment values or model versions does not grow them for ever.

>>> from streams.pipeline.config import ModelConfig
>>> from streams.pipeline.events import ImpressionEvent, Prediction
>>> tables = Tables(RuleBook({"ctr": ModelConfig(segment_by=(("placement",),))}.get))
>>> event = ImpressionEvent("i", 1_700_000_000_000, [Prediction("ctr", "v1", 0.5)], {"placement": "feed", "user": "u1"})
>>> tables.groups_of([event]).tolist(), tables.segments.items
([0], [{'placement': 'feed'}])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streams.pipeline.join.rules import LabelRule, RuleBook

_MAX_RAW_KEYS = 100_000  # the cache from raw (model, version, segment items) to groups is cleared past this


class Interner:
    """Strings (or segment dicts) <-> small integers, so state and records carry indices."""

    def __init__(self, items: list | None = None) -> None:
        self.items: list = []
        self._index: dict = {}
        for item in items or []:
            self.index(item)

    def index(self, item) -> int:
        key = tuple(sorted(item.items())) if isinstance(item, dict) else item
        idx = self._index.get(key)
        if idx is None:
            idx = self._index[key] = len(self.items)
            self.items.append(item)
        return idx

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class Labeled:
    """Drained examples: one row per (impression, model) label decision; indices into the tables."""

    columns: dict[str, np.ndarray]
    models: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    segments: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.columns["label"])

    def arrays(self) -> dict[str, np.ndarray]:
        return self.columns


class Tables:
    def __init__(self, rules: RuleBook) -> None:
        self.rules = rules
        self.models, self.versions, self.segments = Interner(), Interner(), Interner()
        self.groups = Interner()  # (model, version, segment) index triples
        self.group_model = np.zeros(0, np.uint32)
        self.group_version = np.zeros(0, np.uint32)
        self.group_segment = np.zeros(0, np.uint32)
        self._dims: list[frozenset[str]] = []  # per model: the dimensions its segment_by uses
        self._raw: dict[tuple, int] = {}

    def rule_of(self, group: int) -> LabelRule:
        return self.rules[int(self.group_model[group])]

    def _model(self, name: str) -> int:
        idx = self.models.index(name)
        if idx == len(self.rules.rules):
            self.rules.add(name)
            self._dims.append(frozenset(d for dims in self.rules[idx].config.segment_by for d in dims))
        return idx

    def _group(self, model: str, version: str, segment: tuple) -> int:
        m = self._model(model)
        dims = self._dims[m]
        s = self.segments.index({d: v for d, v in segment if d in dims})
        g = self.groups.index((m, self.versions.index(version), s))
        if g == len(self.group_model):
            self.group_model = np.append(self.group_model, np.uint32(m))
            self.group_version = np.append(self.group_version, np.uint32(self.groups.items[g][1]))
            self.group_segment = np.append(self.group_segment, np.uint32(s))
        return g

    def groups_of(self, impressions: list) -> np.ndarray:
        """The group of every prediction of every impression, in order (u32)."""
        raw = [
            (p.model, p.model_version, segment)
            for e in impressions
            for segment in (tuple(e.segment.items()) if e.segment else (),)
            for p in e.predictions
        ]
        cache = self._raw
        if len(cache) > _MAX_RAW_KEYS:
            cache.clear()
        for key in dict.fromkeys(raw):
            if key not in cache:
                cache[key] = self._group(*key)
        return np.fromiter(map(cache.__getitem__, raw), np.uint32, len(raw))

    def prune(self, slot_groups: np.ndarray) -> np.ndarray:
        """Keep only the groups (and their strings) that `slot_groups` use; return them renumbered."""
        used = np.unique(slot_groups)
        if len(used) == len(self.group_model):
            return slot_groups
        models, versions, segments = self.models.items, self.versions.items, self.segments.items
        triples = [self.groups.items[g] for g in used.tolist()]
        kept_models = sorted({m for m, _, _ in triples})
        self.rules.keep(np.array(kept_models, np.int64))
        self._dims = [self._dims[m] for m in kept_models]
        self.models = Interner([models[m] for m in kept_models])
        self.versions, self.segments, self.groups = Interner(), Interner(), Interner()
        for m, v, s in triples:
            self.groups.index(
                (self.models.index(models[m]), self.versions.index(versions[v]), self.segments.index(segments[s]))
            )
        self.group_model = np.array([t[0] for t in self.groups.items], np.uint32)
        self.group_version = np.array([t[1] for t in self.groups.items], np.uint32)
        self.group_segment = np.array([t[2] for t in self.groups.items], np.uint32)
        self._raw = {}
        renumber = np.zeros(int(used.max()) + 1 if len(used) else 0, np.uint32)
        renumber[used] = np.arange(len(used), dtype=np.uint32)
        return renumber[slot_groups]

    def labeled(self, chunks: list[dict[str, np.ndarray]]) -> Labeled:
        if chunks:
            cat = {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}
        else:
            cat = {"group": np.zeros(0, np.uint32), "score": np.zeros(0), "label": np.zeros(0, np.uint8)}
            cat.update(ts=np.zeros(0, np.int64), holdout=np.zeros(0, bool))
        group = cat.pop("group")
        columns = {
            "model": self.group_model[group],
            "version": self.group_version[group],
            "segment": self.group_segment[group],
            **cat,
        }
        return Labeled(columns, self.models.items, self.versions.items, self.segments.items)
