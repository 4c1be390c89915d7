"""The Redis key contract (schema 2) shared by the publisher and every reader (docs/serving.md).

A map's *field* is ``{esc(model)}:{esc(model_version)}:{segment_key}``: the model name and the model
version are escaped like segment values, so a field has exactly two unescaped ``:``.

>>> f = MapField("ctr", "v2", "placement=search")
>>> str(f)
'ctr:v2:placement=search'
>>> MapField.parse(str(MapField("a:b", "2024-01-01T00:00", "*")))
MapField(model='a:b', model_version='2024-01-01T00:00', segment_key='*')
>>> RedisKeys("recal").versions("ctr")
'recal:versions:ctr'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from recalibrators.calibration_map import CalibrationMap
from recalibrators.segments import escape, fallback_chain, segment_key, unescape

__all__ = ["MapField", "RedisKeys", "check_model", "lookup_chain", "map_field"]


def check_model(model: str, what: str = "model") -> str:
    """Model names and model versions are non-empty strings (escaped into keys, so any character)."""
    if not isinstance(model, str) or not model:
        raise ValueError(f"{what} must be a non-empty string, got {model!r}")
    return model


class MapField(NamedTuple):
    """One map's identity: its index field, key suffix and notification prefix when written as `str`."""

    model: str
    model_version: str
    segment_key: str

    def __str__(self) -> str:
        model, model_version = check_model(self.model), check_model(self.model_version, "model_version")
        return f"{escape(model)}:{escape(model_version)}:{self.segment_key}"

    @classmethod
    def parse(cls, field: str) -> MapField:
        """The inverse of `str`; ValueError for anything that is not a schema-2 field (e.g. a schema-1
        ``{model}:{segment_key}`` left in the index by an older publisher)."""
        parts = field.split(":")
        if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2]:
            raise ValueError(f"not a schema-2 map field: {field!r}")
        return cls(unescape(parts[0]), unescape(parts[1]), parts[2])

    @classmethod
    def of(cls, m: CalibrationMap) -> MapField:
        return cls(m.model, m.model_version, segment_key(m.segment_dict))


def map_field(m: CalibrationMap) -> str:
    """The field a map is stored under (and must belong to)."""
    return str(MapField.of(m))


def lookup_chain(
    model: str, model_version: str, segment: Mapping[str, str], segment_by: Sequence[Sequence[str]] = ()
) -> list[str]:
    """The fields to try, in order, for a score of `model_version` in `segment`: the segment fallback
    chain within that model version, never another version's.

    >>> lookup_chain("ctr", "v2", {"platform": "ios", "placement": "feed"}, [["placement"]])
    ['ctr:v2:placement=feed|platform=ios', 'ctr:v2:placement=feed', 'ctr:v2:*']
    """
    prefix = str(MapField(model, model_version, "*"))[:-1]
    return [prefix + key for key in fallback_chain(segment, [list(segment), *segment_by])]


@dataclass(frozen=True)
class RedisKeys:
    """The key layout of one namespace (prefix)."""

    prefix: str = "recal"

    @property
    def index(self) -> str:
        return f"{self.prefix}:maps"

    @property
    def channel(self) -> str:
        return f"{self.prefix}:maps:updated"

    def map(self, field: str) -> str:
        return f"{self.prefix}:map:{field}"

    def history(self, field: str) -> str:
        return f"{self.prefix}:hist:{field}"

    def versions(self, model: str) -> str:
        """Hash model_version (raw string) -> JSON {first_event_ms, last_event_ms, examples, state}."""
        return f"{self.prefix}:versions:{escape(check_model(model))}"
