"""What held the event loop: a watchdog thread that samples every thread's stack while the loop is late.

`LoopMonitor` measures how late the loop woke it; this says what ran meanwhile. The monitor reports every
wake-up (`woke`, on the loop). While the monitor is overdue by more than half of `threshold_s` (`[worker]
stall_log`), the watchdog samples the Python stack of every other thread every `sample_s`; when the monitor
then wakes later than the threshold, it logs how late (its own measurement, exact) with the most sampled
stacks (thread name, the two innermost frames, then this project's innermost ones). Other threads count
because the loop also waits for the GIL: a snapshot encoder or the publisher's thread that holds it shows here.
Sampling needs the GIL too, so the samples are few when C code held it, and they name what ran right after.
A garbage collection that takes longer than the threshold is logged on its own (`gc.callbacks`).
"""

from __future__ import annotations

import collections
import gc
import logging
import sys
import threading
import time
import traceback

log = logging.getLogger("recal.loop")

FRAMES = 6  # frames kept per sample: the two innermost, then this project's innermost ones
SHOWN = 8  # stacks logged per stall
# Sampling starts once the monitor is this share of the threshold overdue: a stall just past the threshold
# (most are) has samples too, where sampling from the threshold on left them "(none)".
SAMPLE_FROM = 0.5


class StallWatch:
    def __init__(self, threshold_s: float, sample_s: float = 0.01) -> None:
        self.threshold_s = threshold_s
        self.sample_s = sample_s
        self.stalls = 0  # stalls and long collections logged since start
        self._interval = 0.0  # the monitor's sleep
        self._last_wake = time.monotonic()
        self._samples: collections.Counter[tuple[str, ...]] = collections.Counter()  # since the last wake
        self._gc_started = 0.0
        self._stopped = threading.Event()

    def start(self, interval: float) -> None:
        """From the loop's thread, before its monitor's first sleep of `interval` seconds."""
        self._interval, self._last_wake = interval, time.monotonic()
        self._stopped.clear()
        threading.Thread(target=self._watch, name="recal-stall-watch", daemon=True).start()
        gc.callbacks.append(self._on_gc)

    def stop(self) -> None:
        self._stopped.set()
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def woke(self, lag: float) -> None:
        """On the loop: the monitor woke `lag` seconds late; log the samples taken meanwhile if that is a stall."""
        samples, self._samples = self._samples, collections.Counter()
        self._last_wake = time.monotonic()
        if lag < self.threshold_s:
            return
        self.stalls += 1
        top = "\n".join(f"  {n * self.sample_s:.2f} s: {' < '.join(s)}" for s, n in samples.most_common(SHOWN))
        log.warning("event loop held %.2f s; the threads' stacks, most sampled first:\n%s", lag, top or "  (none)")

    def _watch(self) -> None:
        me = threading.get_ident()
        while not self._stopped.wait(self.sample_s):
            if time.monotonic() - self._last_wake - self._interval < self.threshold_s * SAMPLE_FROM:
                continue
            samples = self._samples  # this wake-up's: a late add after the swap only goes to the old counter
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident != me:
                    samples[(names.get(ident, str(ident)), *stack_of(frame))] += 1

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif (held := time.perf_counter() - self._gc_started) >= self.threshold_s:
            self.stalls += 1
            log.warning("garbage collection of generation %d held every thread %.2f s", info["generation"], held)


def stack_of(frame) -> tuple[str, ...]:
    """`file:function:line` of the two innermost frames, then of this project's innermost others."""
    entries = traceback.extract_stack(frame)[::-1]
    ours = [e for e in entries[2:] if "/streams/" in e.filename or "/recalibrators/" in e.filename]
    return tuple(f"{e.filename.rsplit('/', 1)[-1]}:{e.name}:{e.lineno}" for e in (entries[:2] + ours)[:FRAMES])
