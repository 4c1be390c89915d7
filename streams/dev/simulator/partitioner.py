"""Where the Java client (and aiokafka) put each keyed record, for a whole tick's ids at once: the pipeline's
vectorised murmur2 over a uint8 matrix of equal-length keys, then Kafka's positive-modulo partition."""

from __future__ import annotations

import numpy as np

from streams.pipeline.partitioners import murmur2_fixed as murmur2

__all__ = ["kafka_partition", "murmur2"]


def kafka_partition(hashes: np.ndarray, partitions: int) -> np.ndarray:
    return (hashes & np.uint32(0x7FFFFFFF)) % np.uint32(partitions)
