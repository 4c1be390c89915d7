"""What a replay covers (`ReplayRange`) and what it produced (`ReplayResult`), for both sources."""

from __future__ import annotations

from dataclasses import dataclass, field

from recalibrators.calibration_map import CalibrationMap
from streams.pipeline.aggregator import Aggregator
from streams.replay.partition import LabeledPartition


@dataclass
class ReplayResult:
    maps: list[CalibrationMap]
    aggregator: Aggregator
    records: int = 0
    examples: int = 0
    superseded: int = 0
    conflicts: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    partitions: dict[int, LabeledPartition] = field(default_factory=dict)


@dataclass
class ReplayRange:
    start_offset: int | None = None  # per partition; None: the beginning
    end_offset: int | None = None  # per partition, exclusive; None: the end at start time
    from_ms: int | None = None  # event time, inclusive
    to_ms: int | None = None  # event time, exclusive
