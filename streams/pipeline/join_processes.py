"""`recal worker --processes N`: the join on every core.

The Faust process runs one `JoinWorker` plus the aggregator, the publisher and the web server; it
spawns N-1 more join processes. All join workers are members of the one `{app_id}-join` consumer
group (the broker spreads the partitions over them, and moves them when one comes or goes, with the
usual snapshot hand-over), and all send their partials to the partials topic, which the single
aggregator reads. Each extra process reports its counters twice a second; `/stats` and `/metrics`
show the sum.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import queue
import signal
from collections.abc import Callable
from typing import Any

from streams.pipeline import gc_policy, join_clients
from streams.pipeline.config import Config
from streams.pipeline.partials_topic import send_partials

log = logging.getLogger("recal.join")

_REPORT_S = 0.5


def process_count(requested: int) -> int:
    """Join processes to run for `[worker] processes`: `requested`, or for 0 the CPUs this process may run
    on (its affinity mask, which `taskset` and cpuset cgroups narrow; `os.cpu_count()` counts the host's)."""
    if requested:
        return requested
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no affinity mask on this platform
        return os.cpu_count() or 1


class JoinProcesses:
    """The extra join processes of one worker: start, stop, and their latest counters."""

    def __init__(self, config: Config, count: int) -> None:
        self.config = dataclasses.replace(config, processes=1)
        self.count = count
        self._context = multiprocessing.get_context("spawn")  # never fork a running event loop
        self._reports = self._context.Queue()
        self._procs: list = []
        self.latest: dict[int, dict[str, Any]] = {}

    def start(self) -> None:
        for index in range(self.count):
            proc = self._context.Process(
                target=_main, args=(self.config, index, self._reports), name=f"recal-join-{index + 1}", daemon=True
            )
            proc.start()
            self._procs.append(proc)

    def poll(self) -> dict[int, dict[str, Any]]:
        while True:
            try:
                index, report = self._reports.get_nowait()
            except queue.Empty:
                return self.latest
            self.latest[index] = report

    def dead(self) -> list[str]:
        return [p.name for p in self._procs if not p.is_alive()]

    def stop(self, timeout_s: float = 15.0) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the process checkpoints and leaves the group
        for proc in self._procs:
            proc.join(timeout_s)
            if proc.is_alive():
                proc.kill()


def _main(config: Config, index: int, reports) -> None:
    logging.basicConfig(level=logging.INFO, format=f"[%(asctime)s] [join-{index + 1}] [%(levelname)s] %(message)s")
    asyncio.run(_run(config, index, reports.put))


async def _run(config: Config, index: int, report: Callable[[tuple], None]) -> None:
    from streams.pipeline.join_worker import JoinWorker

    producer, _ = await join_clients.producer(config)

    async def on_partials(partials) -> None:
        await send_partials(producer, config.topics.partials, partials)

    worker = JoinWorker(config, on_partials=on_partials)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await worker.start()
    run = asyncio.create_task(worker.run())
    try:
        while not stopping.is_set() and not run.done():
            report((index, worker.report()))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), _REPORT_S)
    finally:
        worker.request_stop()  # the batch in hand finishes, then the final checkpoint
        with contextlib.suppress(Exception):
            await asyncio.wait_for(run, 30)
        if run.done() and not run.cancelled() and run.exception() is not None:
            log.error("join process %d failed: %r", index + 1, run.exception())
        await worker.stop()
        report((index, worker.report()))
        await producer.stop()
        gc_policy.collect_at_stop()
