"""Replay / backfill: rebuild calibration maps from history (docs/replay.md).

Two sources:

- **labeled** (fast path): the `recal-labeled` records the join workers wrote. Each partition's records are
  applied in offset order with the live batch boundaries (one `PartialCalibrators.learn` per record, as
  `JoinWorker._emit` does), then the partials are merged in partition order by the live `Aggregator`, so a
  replayed map is byte-identical to the live one apart from `updated_at`.
- **raw**: the impression/click/conversion topics, re-joined by `streams.pipeline.join.PartitionJoin` per partition
  (events routed to the partition their impression_id hashes to, ordered by record timestamp). Counts
  match the live join; batch boundaries, hence decayed floats, may differ.

Supersession (labeled records carry `partition, seq, durable`): after a worker crash `seq` restarts from
the last snapshot, so a record whose seq is <= the highest seq seen on its partition supersedes the
earlier records with seq >= its own (their effects were lost with the crashed process and recomputed).
Records are therefore applied only once a later record's `durable` (the seq covered by a snapshot) reaches
them; until then they wait in a per-partition buffer, and superseded ones are dropped from it. At the end
of the range the buffer is applied as is: it is what the live worker holds too.

Replay uses `assign` + `seek` (no consumer group), so it never disturbs live workers' assignments.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from recalibrators.calibration_map import CalibrationMap
from recalibrators.calibrator import Calibrator
from recalibrators.serving.keys import MapField, map_field
from streams.pipeline.aggregator import Aggregator, MapState, encode_partial, merged
from streams.pipeline.config import Config, ModelConfig
from streams.pipeline.events import CLICK, CONVERSION, IMPRESSION, Impression, Invalid, Limits
from streams.pipeline.events import decode as decode_events
from streams.pipeline.join import PartitionJoin
from streams.pipeline.partials import PartialCalibrators
from streams.pipeline.records import pack, unpack, unpack_examples
from streams.pipeline.topics import partition_of

log = logging.getLogger("recal.replay")

CHECKPOINT_KIND = "recal-replay-checkpoint"


# -- supersession and application, one labeled partition ----------------------------------------------------
@dataclass
class _Pending:
    seq: int
    record: bytes


class LabeledPartition:
    """Applies one partition's labeled records in offset order, honouring supersession (module doc)."""

    def __init__(
        self,
        partition: int,
        model_config: Callable[[str], ModelConfig],
        row_filter: Callable[[dict, dict], np.ndarray | None] | None = None,
    ) -> None:
        self.partition = partition
        self.partials = PartialCalibrators(model_config)
        self.row_filter = row_filter
        self.max_seq = 0  # highest seq seen
        self.durable = 0  # highest `durable` seen: records up to it are final
        self.applied_seq = 0  # highest seq applied
        self.buffer: list[_Pending] = []  # seen, not yet final, in arrival order (increasing seq)
        self.next_offset: int | None = None
        self.records = 0
        self.examples = 0  # examples applied
        self.read_examples = 0  # examples in the records read
        self.superseded = 0  # records dropped because a restarted worker recomputed them
        self.conflicts = 0  # records that supersede already-final ones (should never happen; counted)
        self.version_first_ts: dict[tuple[str, str], int] = {}  # (model, version) -> first event time

    def add(self, record: bytes) -> None:
        """One labeled record, in offset order."""
        header, _ = unpack(record)
        if header.get("type") != "examples":
            raise ValueError("not a labeled-examples record")
        seq, durable = int(header["seq"]), int(header["durable"])
        self.records += 1
        self.read_examples += int(header.get("n", 0))
        if seq <= self.max_seq:
            kept = [p for p in self.buffer if p.seq < seq]
            self.superseded += len(self.buffer) - len(kept)
            self.buffer = kept
            if seq <= self.applied_seq:
                self.conflicts += 1
                log.warning(
                    "partition %d: record seq %d supersedes records already final (applied up to %d)",
                    self.partition,
                    seq,
                    self.applied_seq,
                )
        self.buffer.append(_Pending(seq, record))
        self.max_seq = seq
        self.durable = max(self.durable, durable)
        self._apply_final(self.durable)

    def _apply_final(self, upto: int) -> None:
        n = 0
        while n < len(self.buffer) and self.buffer[n].seq <= upto:
            self._apply(self.buffer[n])
            n += 1
        if n:
            del self.buffer[:n]

    def finish(self) -> None:
        """End of the range: what is still buffered is the newest known state; apply it."""
        for pending in self.buffer:
            self._apply(pending)
        self.buffer = []

    def _apply(self, pending: _Pending) -> None:
        header, columns = unpack_examples(pending.record)
        if self.row_filter is not None:
            mask = self.row_filter(header, columns)
            if mask is not None:
                columns = {name: column[mask] for name, column in columns.items()}
        n = len(columns["label"])
        if n:
            models, versions = header["models"], header["versions"]
            pairs = np.unique((columns["model"].astype(np.int64) << 16) | columns["version"], return_index=True)
            for packed, first in zip(*pairs, strict=True):
                key = (models[int(packed) >> 16], versions[int(packed) & 0xFFFF])
                ts = int(columns["ts"][first])
                if key not in self.version_first_ts or ts < self.version_first_ts[key]:
                    self.version_first_ts[key] = ts
            self.partials.learn(columns, models, versions, header["segments"])
            self.examples += n
        self.applied_seq = max(self.applied_seq, pending.seq)


def row_filter(models: set[str] | None, from_ms: int | None, to_ms: int | None):
    """A mask builder for `LabeledPartition`: chosen models, and examples' event time in [from, to)."""
    if not models and from_ms is None and to_ms is None:
        return None

    def build(header: dict, columns: dict) -> np.ndarray | None:
        mask = np.ones(len(columns["label"]), dtype=bool)
        if models:
            wanted = [i for i, name in enumerate(header["models"]) if name in models]
            mask &= np.isin(columns["model"], wanted)
        if from_ms is not None:
            mask &= columns["ts"] >= from_ms
        if to_ms is not None:
            mask &= columns["ts"] < to_ms
        return None if mask.all() else mask

    return build


# -- building the maps -------------------------------------------------------------------------------------
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


def merged_calibrator(state: MapState) -> Calibrator:
    return merged(state.partials, state.prior)


def _eval_points(calibrator: Calibrator) -> np.ndarray:
    hist = calibrator.holdout if calibrator.holdout.total_weight > 0 else calibrator.histogram
    return hist.mean_score()[hist.weight > 0]


@dataclass
class SummaryRow:
    model: str
    model_version: str
    segment: str
    samples: float
    ece: float | None
    ratio: float | None
    max_delta: float | None  # vs the live map on the holdout points; None without a live map
    status: str  # published | refused_stale | held: <gate reason>


def summarize(
    maps: list[CalibrationMap], aggregator: Aggregator, live: dict[str, CalibrationMap | None], results: dict[str, str]
) -> list[SummaryRow]:
    rows = []
    built = {map_field(m): m for m in maps}
    for key in sorted(aggregator.states):
        model, model_version, segment = MapField.parse(key)
        calibrator = merged_calibrator(aggregator.states[key])
        m = built.get(key)
        metrics = aggregator.metrics.get(key, {})
        delta = None
        live_map = live.get(key)
        if m is not None and live_map is not None:
            points = _eval_points(calibrator)
            if points.size:
                delta = float(np.max(np.abs(m.apply(points) - live_map.apply(points))))
        status = results.get(key) or ("held: " + aggregator.refused.get(key, "?"))
        ece = metrics.get("ece_cal")
        ratio = metrics.get("ratio_cal")
        rows.append(
            SummaryRow(
                model,
                model_version,
                segment,
                calibrator.n_effective,
                None if ece is None else float(ece),
                None if ratio is None else float(ratio),
                delta,
                status,
            )
        )
    return rows


def format_summary(rows: Iterable[SummaryRow]) -> str:
    def f(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    head = f"{'model':<8} {'version':<10} {'segment':<40} {'samples':>12} {'ECE':>8} {'ratio':>7} {'max|Δ| live':>12}"
    lines = [head + "  status"]
    for r in rows:
        lines.append(
            f"{r.model:<8} {r.model_version:<10} {r.segment:<40} {r.samples:>12.1f} {f(r.ece, '.4f'):>8} "
            f"{f(r.ratio, '.3f'):>7} {f(r.max_delta, '.4f'):>12}  {r.status}"
        )
    return "\n".join(lines)


# -- progress ----------------------------------------------------------------------------------------------
class Progress:
    """A progress line on stderr at most once per `every` seconds: records read / total, rate, ETA."""

    def __init__(self, total: int, stream=None, every: float = 1.0) -> None:
        self.total, self.stream, self.every = total, stream or sys.stderr, every
        self.started = self._last = time.monotonic()
        self.done = 0
        self.examples = 0

    def update(self, records: int, examples: int, force: bool = False) -> None:
        self.done += records
        self.examples += examples
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        print(
            f"replay: {self.done:,}/{self.total:,} records ({pct:.1f}%), {self.examples:,} examples, "
            f"{self.examples / elapsed:,.0f} examples/s, {rate:,.0f} records/s, ETA {eta:.0f}s",
            file=self.stream,
            flush=True,
        )


# -- checkpoints -------------------------------------------------------------------------------------------
def save_checkpoint(
    path: str, identity: dict, parts: dict[int, LabeledPartition], ends: dict[int, int], complete: bool = False
) -> None:
    """Per-partition offsets + partial calibrators + not-yet-final records, written atomically."""
    entries, blobs = [], []
    for p in sorted(parts):
        part = parts[p]
        keys, cal_blobs = part.partials.to_blobs()
        entries.append(
            {
                "partition": p,
                "next": part.next_offset,
                "end": ends[p],
                "max_seq": part.max_seq,
                "durable": part.durable,
                "applied_seq": part.applied_seq,
                "keys": keys,
                "buffer": [b.seq for b in part.buffer],
                "records": part.records,
                "examples": part.examples,
                "superseded": part.superseded,
                "conflicts": part.conflicts,
                "read_examples": part.read_examples,
                "first_ts": [[m, v, t] for (m, v), t in sorted(part.version_first_ts.items())],
            }
        )
        blobs += cal_blobs + [b.record for b in part.buffer]
    data = pack({"kind": CHECKPOINT_KIND, "identity": identity, "complete": complete, "parts": entries}, blobs)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def load_checkpoint(
    path: str,
    identity: dict,
    model_config: Callable[[str], ModelConfig],
    row_filter_fn,
) -> tuple[dict[int, LabeledPartition], dict[int, int], bool] | None:
    """The saved state, None if there is no file; ValueError if it belongs to a different replay."""
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        header, blobs = unpack(f.read())
    if header.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"{path} is not a replay checkpoint")
    if header["identity"] != identity:
        raise ValueError(
            f"{path} belongs to another replay ({header['identity']}), not {identity}; "
            "remove it or pass another --checkpoint"
        )
    parts, ends, pos = {}, {}, 0
    for e in header["parts"]:
        part = LabeledPartition(e["partition"], model_config, row_filter_fn)
        n_keys = len(e["keys"])
        part.partials = PartialCalibrators.from_blobs(model_config, e["keys"], blobs[pos : pos + n_keys])
        pos += n_keys
        part.buffer = [_Pending(seq, bytes(blobs[pos + i])) for i, seq in enumerate(e["buffer"])]
        pos += len(e["buffer"])
        part.next_offset, part.max_seq, part.durable = e["next"], e["max_seq"], e["durable"]
        part.applied_seq, part.records, part.examples = e["applied_seq"], e["records"], e["examples"]
        part.superseded, part.conflicts = e["superseded"], e["conflicts"]
        part.read_examples = e.get("read_examples", 0)
        part.version_first_ts = {(m, v): t for m, v, t in e["first_ts"]}
        parts[part.partition] = part
        ends[part.partition] = e["end"]
    return parts, ends, bool(header["complete"])


# -- offsets for event times -------------------------------------------------------------------------------
async def _timestamp_at(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> int | None:
    """The record timestamp at `offset` (or the first record after it), None past the end."""
    consumer.seek(tp, offset)
    for _ in range(50):
        batch = await consumer.getmany(tp, timeout_ms=200, max_records=1)
        for message in batch.get(tp, ()):
            if message.offset >= offset:
                return message.timestamp
    return None


async def offset_for_time(consumer: AIOKafkaConsumer, tp: TopicPartition, ts_ms: int, low: int, high: int) -> int:
    """The first offset in [low, high] whose record timestamp is >= ts_ms (high if none).

    Asks the broker (`offsets_for_times`) and verifies its answer by reading the record timestamps around it;
    the embedded broker answers 0 for every timestamp, so a wrong answer falls back to a binary search over
    offsets. Both assume timestamps that grow with the offset (roughly: the range is then as good as the
    data's order; labeled-topic replays filter on the examples' own ts column anyway)."""
    consumer.assign([tp])
    if low >= high:
        return high
    try:
        answer = (await consumer.offsets_for_times({tp: ts_ms})).get(tp)
    except Exception as exc:  # brokers without the API
        log.info("offsets_for_times failed (%s); binary search", exc)
        answer = None
    candidate = high if answer is None else min(max(answer.offset, low), high)
    if await _verified(consumer, tp, ts_ms, candidate, low, high):
        return candidate
    lo, hi = low, high  # invariant: records before lo are < ts_ms; the record at hi is >= ts_ms (or hi = end)
    while lo < hi:
        mid = (lo + hi) // 2
        ts = await _timestamp_at(consumer, tp, mid)
        if ts is not None and ts >= ts_ms:
            hi = mid
        else:
            lo = mid + 1
    return lo


async def _verified(consumer, tp, ts_ms: int, candidate: int, low: int, high: int) -> bool:
    if candidate < high:
        ts = await _timestamp_at(consumer, tp, candidate)
        if ts is None or ts < ts_ms:
            return False
    if candidate > low:
        before = await _timestamp_at(consumer, tp, candidate - 1)
        if before is not None and before >= ts_ms:
            return False
    return True


async def end_offsets(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The current end of each partition. ListOffsets alone is not trusted: the embedded broker's answer
    lags the log, so the end is max(its answer, the high watermark of a fetch at that point)."""
    hint = await consumer.end_offsets(tps)
    begin = await consumer.beginning_offsets(tps)
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, max(begin[tp], hint[tp] - 1))
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(consumer.highwater(tp) is None for tp in tps):
        await consumer.getmany(*tps, timeout_ms=200, max_records=1)
    return {tp: max(hint[tp], consumer.highwater(tp) or 0) for tp in tps}


# -- the replay itself -------------------------------------------------------------------------------------
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


def _client(config: Config) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **config.kafka_client_args(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=64 << 20,
    )


async def replay_labeled(
    config: Config,
    rng: ReplayRange | None = None,
    models: set[str] | None = None,
    checkpoint: str | None = None,
    checkpoint_every_s: float = 10.0,
    progress: Progress | None = None,
    stop: asyncio.Event | None = None,
    now_ms: int | None = None,
    partitions: list[int] | None = None,
) -> ReplayResult:
    """Rebuild maps from the labeled topic (module doc). Interruptible through `stop`; resumable through
    `checkpoint` (written every `checkpoint_every_s` and when stopped)."""
    rng = rng or ReplayRange()
    topic = config.topics.labeled
    filt = row_filter(models, rng.from_ms, rng.to_ms)
    identity = {
        "source": "labeled",
        "topic": topic,
        "start": rng.start_offset,
        "end": rng.end_offset,
        "from": rng.from_ms,
        "to": rng.to_ms,
        "models": sorted(models or ()),
    }
    started = time.monotonic()
    consumer = _client(config)
    await consumer.start()
    try:
        loaded = load_checkpoint(checkpoint, identity, config.model, filt) if checkpoint else None
        if loaded is not None:
            parts, ends, complete = loaded
            log.info("resuming from %s at offsets %s", checkpoint, {p: s.next_offset for p, s in parts.items()})
        else:
            complete = False
            await consumer.topics()  # metadata of every topic (no subscription here)
            all_parts = sorted(consumer.partitions_for_topic(topic) or ())
            if not all_parts:
                raise RuntimeError(f"topic {topic} not found")
            chosen = [p for p in all_parts if partitions is None or p in partitions]
            tps = [TopicPartition(topic, p) for p in chosen]
            begin, end = await consumer.beginning_offsets(tps), await end_offsets(consumer, tps)
            parts, ends = {}, {}
            for tp in tps:
                part = LabeledPartition(tp.partition, config.model, filt)
                lo, hi = begin[tp], end[tp]
                part.next_offset = max(lo, rng.start_offset) if rng.start_offset is not None else lo
                ends[tp.partition] = min(hi, rng.end_offset) if rng.end_offset is not None else hi
                parts[tp.partition] = part
        total = sum(max(0, ends[p] - parts[p].next_offset) for p in parts)
        progress = progress or Progress(total)
        progress.total = total
        interrupted = False
        if not complete:
            interrupted = await _consume(
                consumer, topic, parts, ends, progress, stop, checkpoint, identity, checkpoint_every_s
            )
        progress.update(0, 0, force=True)
        if interrupted:
            if checkpoint:
                save_checkpoint(checkpoint, identity, parts, ends)
            return ReplayResult(
                [], Aggregator(config.model), interrupted=True, partitions=parts, seconds=time.monotonic() - started
            )
        if checkpoint:
            save_checkpoint(checkpoint, identity, parts, ends, complete=True)
        for part in parts.values():
            part.finish()
    finally:
        await consumer.stop()
    first_ts: dict[tuple[str, str], int] = {}
    for part in parts.values():
        for key, ts in part.version_first_ts.items():
            first_ts[key] = min(ts, first_ts.get(key, ts))
    maps, aggregator = build_maps({p: s.partials for p, s in parts.items()}, config.model, first_ts, now_ms)
    return ReplayResult(
        maps,
        aggregator,
        records=sum(s.records for s in parts.values()),
        examples=sum(s.examples for s in parts.values()),
        superseded=sum(s.superseded for s in parts.values()),
        conflicts=sum(s.conflicts for s in parts.values()),
        seconds=time.monotonic() - started,
        partitions=parts,
    )


async def _consume(
    consumer: AIOKafkaConsumer,
    topic: str,
    parts: dict[int, LabeledPartition],
    ends: dict[int, int],
    progress: Progress,
    stop: asyncio.Event | None,
    checkpoint: str | None,
    identity: dict,
    checkpoint_every_s: float,
) -> bool:
    """Read every partition up to its end; True when stopped early."""
    todo = {TopicPartition(topic, p) for p, s in parts.items() if s.next_offset < ends[p]}
    consumer.assign(sorted(todo))
    for tp in todo:
        consumer.seek(tp, parts[tp.partition].next_offset)
    last_checkpoint = time.monotonic()
    while todo:
        if stop is not None and stop.is_set():
            return True
        batch = await consumer.getmany(*todo, timeout_ms=500, max_records=2_000)
        for tp, messages in batch.items():
            part, end = parts[tp.partition], ends[tp.partition]
            before = part.read_examples
            for message in messages:
                if message.offset < part.next_offset:
                    continue
                if message.offset >= end or (stop is not None and stop.is_set()):
                    break
                part.add(message.value)
                part.next_offset = message.offset + 1
                progress.update(1, part.read_examples - before)
                before = part.read_examples
            if part.next_offset >= end:
                todo.discard(tp)
                consumer.pause(tp)
        if checkpoint and time.monotonic() - last_checkpoint >= checkpoint_every_s:
            save_checkpoint(checkpoint, identity, parts, ends)
            last_checkpoint = time.monotonic()
    return False


# -- from the raw topics -----------------------------------------------------------------------------------
async def replay_raw(
    config: Config,
    rng: ReplayRange | None = None,
    models: set[str] | None = None,
    progress: Progress | None = None,
    now_ms: int | None = None,
) -> ReplayResult:
    """Re-join the source topics in process (module doc). Holds the range's events in memory."""
    rng = rng or ReplayRange()
    topics = config.topics
    started = time.monotonic()
    consumer = _client(config)
    await consumer.start()
    try:
        await consumer.topics()
        n = len(consumer.partitions_for_topic(topics.impressions) or ())
        if not n:
            raise RuntimeError(f"topic {topics.impressions} not found")
        horizon = (
            max(
                [m.horizon_ms + m.allowed_lateness_ms for m in config.models.values()]
                + [config.defaults.horizon_ms + config.defaults.allowed_lateness_ms]
            )
            + config.grace_ms
        )
        sources = [(topics.impressions, IMPRESSION), (topics.clicks, CLICK), (topics.conversions, CONVERSION)]
        tps = [TopicPartition(t, p) for t, _ in sources for p in range(n)]
        begin, end = await consumer.beginning_offsets(tps), await end_offsets(consumer, tps)
        ranges: dict[TopicPartition, tuple[int, int]] = {}
        for tp in tps:  # event times -> offsets, on the same (group-less) consumer
            lo, hi = begin[tp], end[tp]
            if rng.start_offset is not None:
                lo = max(lo, rng.start_offset)
            if rng.end_offset is not None:
                hi = min(hi, rng.end_offset)
            if rng.from_ms is not None:
                lo = await offset_for_time(consumer, tp, rng.from_ms, lo, hi)
            if rng.to_ms is not None:
                until = rng.to_ms if tp.topic == topics.impressions else rng.to_ms + horizon
                hi = await offset_for_time(consumer, tp, until, lo, hi)
            ranges[tp] = (lo, hi)
        kinds = dict(sources)
        per_partition: list[list[tuple[int, int, int, bytes]]] = [[] for _ in range(n)]
        total = sum(hi - lo for lo, hi in ranges.values())
        progress = progress or Progress(total)
        progress.total = total
        todo = {tp for tp, (lo, hi) in ranges.items() if lo < hi}
        consumer.assign(sorted(todo))
        for tp in todo:
            consumer.seek(tp, ranges[tp][0])
        seq = 0
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=500, max_records=20_000)
            for tp, messages in batch.items():
                lo, hi = ranges[tp]
                kept = [m for m in messages if lo <= m.offset < hi]
                for m in kept:
                    per_partition[tp.partition].append((m.timestamp, seq, kinds[tp.topic], m.value))
                    seq += 1
                progress.update(len(kept), 0)
                if messages[-1].offset >= hi - 1:
                    todo.discard(tp)
                    consumer.pause(tp)
    finally:
        await consumer.stop()
    limits = Limits(
        config.max_message_bytes, config.max_predictions, int(time.time() * 1000) + config.max_future_skew_ms
    )
    joins = [PartitionJoin(config.model, config.grace_ms, config.holdout_percent) for _ in range(n)]
    routed: list[list[tuple[int, int, int, object]]] = [[] for _ in range(n)]
    invalid = 0
    for records in per_partition:
        for ts, order, kind, value in records:
            for event in decode_events(value, kind, limits):
                if type(event) is Invalid:
                    invalid += 1
                    continue
                if kind == IMPRESSION and (
                    (rng.from_ms is not None and event.ts < rng.from_ms)
                    or (rng.to_ms is not None and event.ts >= rng.to_ms)
                ):
                    continue
                owner = partition_of(event.impression_id.encode(), n)
                routed[owner].append((ts, order, kind, event))
    filt = row_filter(models, None, None)
    parts: dict[int, LabeledPartition] = {}
    examples = 0
    for p in range(n):
        part = parts[p] = LabeledPartition(p, config.model, filt)
        join = joins[p]
        events = sorted(routed[p], key=lambda e: (e[0], e[1]))
        for start in range(0, len(events), 20_000):
            for _, _, kind, event in events[start : start + 20_000]:
                if kind == IMPRESSION:
                    assert isinstance(event, Impression)
                    join.add_impression(event)
                else:
                    join.add_action(event)
            join.expire()
            batch, _ = join.drain()
            if len(batch):
                columns = batch.arrays()
                header = {"models": join.models.items, "versions": join.versions.items}
                if filt is not None and (mask := filt(header, columns)) is not None:
                    columns = {k: v[mask] for k, v in columns.items()}
                if len(columns["label"]):
                    for model_idx in np.unique(columns["model"]):
                        rows = columns["model"] == model_idx
                        for version_idx in np.unique(columns["version"][rows]):
                            key = (join.models.items[model_idx], join.versions.items[version_idx])
                            ts = int(columns["ts"][rows & (columns["version"] == version_idx)].min())
                            part.version_first_ts[key] = min(ts, part.version_first_ts.get(key, ts))
                    part.partials.learn(columns, join.models.items, join.versions.items, join.segments.items)
                    examples += len(columns["label"])
                    part.examples += len(columns["label"])
    if invalid:
        log.info("raw replay: %d invalid events skipped", invalid)
    first_ts: dict[tuple[str, str], int] = {}
    for part in parts.values():
        for key, ts in part.version_first_ts.items():
            first_ts[key] = min(ts, first_ts.get(key, ts))
    maps, aggregator = build_maps({p: s.partials for p, s in parts.items()}, config.model, first_ts, now_ms)
    progress.update(0, examples, force=True)
    return ReplayResult(
        maps, aggregator, records=total, examples=examples, seconds=time.monotonic() - started, partitions=parts
    )


def normalized_json(m: CalibrationMap) -> bytes:
    """The map's JSON with `updated_at` zeroed: what determinism is checked on."""
    return m.with_meta(updated_at=0).to_json()


def dumps_summary(rows: list[SummaryRow]) -> bytes:
    return orjson.dumps([r.__dict__ for r in rows])
