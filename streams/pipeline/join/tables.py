"""The join's interned strings: models, model versions, segments, and the (model, version, segment)
groups a prediction belongs to. Slots carry one u32 group index instead of three strings.

A segment is interned as projected on its model's `segment_by` dimensions (the only ones any map is
keyed by), and tables are pruned to what pending impressions still use (#13 item 4): a stream of new
segment values or model versions does not grow them for ever.

>>> from streams.pipeline.config import ModelConfig
>>> from streams.pipeline.events import ImpressionEvent, Prediction
>>> tables = Tables(RuleBook({"ctr": ModelConfig(segment_by=(("placement",),))}.get))
>>> event = ImpressionEvent("i", 1_700_000_000_000, [Prediction("ctr", "v1", 0.5)], {"placement": "feed", "user": "u1"})
>>> tables.groups_of([event], np.array([1])).tolist(), tables.segments.items
([0], [{'placement': 'feed'}])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter

import numpy as np

from streams.pipeline.events import segment_of, segment_text
from streams.pipeline.join.rules import LabelRule, RuleBook

_MAX_RAW_KEYS = 100_000  # the caches from raw (model, version, segment items) to groups are cleared past this
_CODE = (1 << 21) - 1
_segment = attrgetter("segment")


def _encode(codes: dict, items: list) -> np.ndarray:
    """Each item's code in `codes` (new items get the next ones)."""
    for item in dict.fromkeys(items):
        if item not in codes:
            codes[item] = len(codes)
    return np.fromiter(map(codes.__getitem__, items), np.int64, len(items))


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
        self._columns = np.zeros((3, 1024), np.uint32)  # model, version, segment of each group
        self._dims: list[frozenset[str]] = []  # per model: the dimensions its segment_by uses
        self._raw: dict[int, int] = {}  # slot key (model, version, segment codes) -> group
        self._codes: tuple[dict, dict, dict] = ({}, {}, {})  # raw model / version / segment items -> code

    group_model = property(lambda self: self._columns[0, : len(self.groups)])
    group_version = property(lambda self: self._columns[1, : len(self.groups)])
    group_segment = property(lambda self: self._columns[2, : len(self.groups)])

    def _set_groups(self, triples: np.ndarray) -> None:
        self._columns = np.zeros((3, max(1024, 2 * len(triples))), np.uint32)
        self._columns[:, : len(triples)] = triples.T

    def rule_of(self, group: int) -> LabelRule:
        return self.rules[int(self.group_model[group])]

    def _model(self, name: str) -> int:
        idx = self.models.index(name)
        if idx == len(self.rules.rules):
            self.rules.add(name)
            self._dims.append(frozenset(d for dims in self.rules[idx].config.segment_by for d in dims))
        return idx

    def _group(self, model: str, version: str, segment_json: bytes) -> int:
        m = self._model(model)
        dims = self._dims[m]
        s = self.segments.index({d: v for d, v in segment_of(segment_json).items() if d in dims})
        triple = (m, self.versions.index(version), s)
        g = self.groups.index(triple)
        if g == self._columns.shape[1]:
            self._columns = np.concatenate([self._columns, np.zeros_like(self._columns)], axis=1)
        self._columns[:, g] = triple
        return g

    def groups_of(self, impressions: list, n_slots: np.ndarray) -> np.ndarray:
        """The group of every prediction of every impression, in order (u32). Strings become codes
        through three dicts (C-speed maps), the codes one int64 key per slot, and only the distinct
        keys of the batch go through `_group`."""
        if len(self._raw) > _MAX_RAW_KEYS or max(map(len, self._codes)) > _MAX_RAW_KEYS:
            self._raw, self._codes = {}, ({}, {}, {})
        models, versions, segments = self._codes
        segment = _encode(segments, list(map(segment_text, map(_segment, impressions))))
        model = _encode(models, [p.model for e in impressions for p in e.predictions])
        version = _encode(versions, [p.model_version for e in impressions for p in e.predictions])
        key = (model << 42) | (version << 21) | np.repeat(segment, n_slots)
        distinct, inverse = np.unique(key, return_inverse=True)
        groups = np.empty(len(distinct), np.uint32)
        names: list[list] = []
        for i, k in enumerate(distinct.tolist()):
            g = self._raw.get(k)
            if g is None:
                names = names or [list(models), list(versions), list(segments)]
                g = self._raw[k] = self._group(names[0][k >> 42], names[1][(k >> 21) & _CODE], names[2][k & _CODE])
            groups[i] = g
        return groups[inverse]

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
        self._set_groups(np.array(self.groups.items, np.uint32).reshape(-1, 3))
        self._raw, self._codes = {}, ({}, {}, {})
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
