"""A join worker's shutdown: nothing after its final checkpoint."""

import asyncio

from streams.pipeline.config import Config
from streams.pipeline.join_worker import JoinWorker


def test_run_touches_nothing_after_stop_wrote_the_final_checkpoint():
    """Faust stops the join's ComponentService while `run` waits for a fetch: `run` then queues for the lock behind
    `stop`'s final checkpoint, and must not write another through the producer `stop` closes (that was a
    ProducerClosed crash at shutdown)."""
    config = Config(checkpoint_interval_ms=0)  # every turn of `run` writes a checkpoint
    final_begun = asyncio.Event()

    class Consumer:
        calls = 0

        async def getmany(self, **_):
            self.calls += 1
            if self.calls > 1:
                await final_begun.wait()  # the fetch returns while `stop` holds the lock
            return {}

        async def stop(self):
            pass

    class Checkpoints:
        closed, writes = False, 0

        async def write(self, states, deadline=None):
            assert not self.closed, "a checkpoint after the final one"
            self.writes += 1
            if w._stopping.is_set():
                final_begun.set()
            await asyncio.sleep(0.001)  # the snapshot's send

    w = JoinWorker(config)

    async def scenario():
        w.consumer, w.checkpoints = Consumer(), Checkpoints()
        running = asyncio.ensure_future(w.run())
        while w.consumer.calls < 2:
            await asyncio.sleep(0.001)
        await w.stop()
        w.checkpoints.closed = True  # what stop's producer.stop() means for any later write
        await asyncio.wait_for(running, 1.0)
        return w.checkpoints.writes

    assert asyncio.run(scenario()) == 2  # run's one checkpoint, then stop's final one
