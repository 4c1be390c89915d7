"""A join worker's partition whose expiry waited for its label topics (`PartitionOutput.labels_caught_up`)."""

import asyncio
from types import SimpleNamespace

from streams.pipeline.config import Config
from streams.pipeline.join_worker import JoinWorker


def test_a_partition_whose_expiry_waited_emits_again_on_fetches_without_records():
    """The last records of a stream came while a label topic lagged: nothing new arrives, so only a retry on
    the empty fetches that follow closes those windows (before, they stayed open and the stream's last labels
    never came: test_impressions_dated_hours_ahead...[1d] timed out waiting for them)."""
    w = JoinWorker(Config(checkpoint_interval_ms=3_600_000, partials_interval_ms=3_600_000))
    emitted: list[int] = []

    class Output:
        async def batch(self, routed, state):
            emitted.append(state.partition)
            state.expiry_deferred = len(emitted) < 2  # the label topics caught up by the second emission
            return []

    class Consumer:
        fetches = 0

        async def getmany(self, **_):
            self.fetches += 1
            if self.fetches == 4:
                w.request_stop()
            return {}

    w.consumer, w.output = Consumer(), Output()
    w.parts = {
        0: SimpleNamespace(partition=0, expiry_deferred=True),
        1: SimpleNamespace(partition=1, expiry_deferred=False),
    }
    asyncio.run(asyncio.wait_for(w.run(), 5.0))
    assert emitted == [0, 0]  # partition 0 until it caught up, partition 1 (nothing waiting) never
