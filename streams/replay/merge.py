"""Building the maps: partitions' partial calibrators merged by the live `Aggregator` (same merge, metrics,
gate), so a replayed map is the map the live workers would have published."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from recalibrators.calibration_map import CalibrationMap
from recalibrators.serving.keys import MapField
from streams.pipeline.aggregator import Aggregator, encode_partial
from streams.pipeline.config import ModelConfig
from streams.pipeline.partials import PartialCalibrators
from streams.replay.partition import LabeledPartition


def build_maps(
    partials: dict[int, PartialCalibrators],
    model_config: Callable[[str], ModelConfig],
    version_first_ts: dict[tuple[str, str], int],
    now_ms: int | None = None,
) -> tuple[list[CalibrationMap], Aggregator]:
    """Merge partials in partition order through the live Aggregator (same merge, metrics, gate, version
    cap). Model versions arrive in order of their first event (as they reached the live aggregator)."""
    aggregator = Aggregator(model_config)
    entries = []
    for partition in sorted(partials):
        for (model, model_version, segment), calibrator in partials[partition].calibrators.items():
            order = version_first_ts.get((model, model_version), 0)
            key = str(MapField(model, model_version, segment))
            entries.append((order, key, partition, model, model_version, segment, calibrator))
    for _, key, partition, model, model_version, segment, calibrator in sorted(entries, key=lambda e: e[:3]):
        aggregator.add(key, encode_partial(partition, model, model_version, segment, calibrator))
    return aggregator.take_dirty(now_ms), aggregator


def merge_partitions(
    parts: Mapping[int, LabeledPartition], model_config: Callable[[str], ModelConfig], now_ms: int | None = None
) -> tuple[list[CalibrationMap], Aggregator]:
    """`build_maps` over replayed partitions, versions ordered by their first event time on any partition."""
    first_ts: dict[tuple[str, str], int] = {}
    for part in parts.values():
        for key, ts in part.version_first_ts.items():
            first_ts[key] = min(ts, first_ts.get(key, ts))
    return build_maps({p: s.partials for p, s in parts.items()}, model_config, first_ts, now_ms)
