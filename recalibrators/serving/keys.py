"""The Redis key contract shared by the publisher and every reader (docs/serving.md)."""

from __future__ import annotations

from dataclasses import dataclass

from recalibrators.calibration_map import CalibrationMap
from recalibrators.segments import segment_key


def check_model(model: str) -> str:
    """Model names are Redis key components: non-empty and without ':'."""
    if not model or ":" in model:
        raise ValueError(f"model name must be non-empty and must not contain ':', got {model!r}")
    return model


def map_field(m: CalibrationMap) -> str:
    """`{model}:{segment_key}`: a map's field in the index, its key suffix and its notification prefix."""
    return f"{check_model(m.model)}:{segment_key(m.segment_dict)}"


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
