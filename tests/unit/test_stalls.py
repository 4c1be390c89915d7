"""The stall watch logs what held the event loop: the stall's length and the stacks sampled during it."""

from __future__ import annotations

import asyncio
import gc
import logging
import time

from streams.pipeline.metrics import LoopMonitor
from streams.pipeline.stalls import StallWatch


def hold_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # stands for a long synchronous step on the loop


def test_a_stall_is_logged_with_the_function_that_held_the_loop(caplog):
    watch = StallWatch(threshold_s=0.1)
    monitor = LoopMonitor(interval=0.01, watch=watch)

    async def main():
        ticker = asyncio.ensure_future(monitor.run())
        await asyncio.sleep(0.05)
        hold_the_loop(0.05)  # below the threshold: not logged
        await asyncio.sleep(0.05)
        # long enough that a watch thread the OS schedules late still samples it (one full suite: none in 0.4 s)
        hold_the_loop(0.8)
        await asyncio.sleep(0.1)
        ticker.cancel()

    with caplog.at_level(logging.WARNING, logger="recal.loop"):
        asyncio.run(main())
    (record,) = [r for r in caplog.records if r.name == "recal.loop"]
    message = record.getMessage()
    held = float(message.split("held ")[1].split(" s")[0])
    assert 0.75 <= held < 1.2 and watch.stalls == 1  # the loop's own measure: how late the monitor woke
    assert "MainThread" in message and "hold_the_loop" in message


def test_a_long_garbage_collection_is_logged_as_such_and_stop_unhooks_it(caplog):
    watch = StallWatch(threshold_s=0.0)  # every collection is "long"
    watch.start(interval=0.05)
    with caplog.at_level(logging.WARNING, logger="recal.loop"):
        gc.collect()
        watch.stop()
        gc.collect()
    logged = [r.getMessage() for r in caplog.records if r.name == "recal.loop"]
    assert len(logged) == 1 and logged[0].startswith("garbage collection of generation 2 held every thread")
