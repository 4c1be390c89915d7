"""The per-partition event-time join (`PartitionJoin`) and its parts: label rules, the due queue,
id keys, the columnar store of pending impressions, interned tables and snapshots."""

from streams.pipeline.join.partition import PartitionJoin, is_holdout
from streams.pipeline.join.tables import Interner, Labeled

__all__ = ["Interner", "Labeled", "PartitionJoin", "is_holdout"]
