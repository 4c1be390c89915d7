"""Replay / backfill: rebuild calibration maps from history (`recal replay`, docs/replay.md).

Two sources:

- **labeled** (fast path): the `recal-labeled` records the join workers wrote. Each partition's records are
  applied in offset order with the live batch boundaries (one `PartialCalibrators.learn` per record, as
  `PartitionOutput` does in the worker), then the partials are merged in partition order by the live `Aggregator`, so a
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

Modules, in the order a replay runs: `offsets` (the group-less consumer, event time -> offset, true ends),
`labeled` and `raw` (the two sources), `partition` (one labeled partition: supersession, application),
`checkpoint` (resume), `merge` (partials -> maps through the live Aggregator), `summary` (the table printed),
`progress`, `result` (range in, result out).
"""

from streams.replay.labeled import replay_labeled
from streams.replay.offsets import end_offsets, offset_for_time
from streams.replay.progress import Progress
from streams.replay.raw import replay_raw
from streams.replay.result import ReplayRange, ReplayResult
from streams.replay.summary import SummaryRow, format_summary, normalized_json, summarize

__all__ = [
    "Progress",
    "ReplayRange",
    "ReplayResult",
    "SummaryRow",
    "end_offsets",
    "format_summary",
    "normalized_json",
    "offset_for_time",
    "replay_labeled",
    "replay_raw",
    "summarize",
]
