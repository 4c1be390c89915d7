"""What held the event loop: a watchdog thread that samples every thread's stack while the loop is stalled.

`LoopMonitor` measures how long the loop was held; this says by what. The loop beats every time its
monitor wakes; when the beat is older than `threshold_s` (`[worker] stall_log`), the watchdog samples the
Python stack of every other thread every `sample_s` until the next beat, then logs the stall's length
with the most sampled stacks (thread name, then the innermost frames, this project's first). Other
threads count because the loop also waits for the GIL: a refresh thread or a snapshot encoder that
holds it shows up here. Sampling needs the GIL too, so a stall with few samples was spent in C code
that held it (the samples then name what ran right after). A garbage collection that takes longer than
the threshold is logged on its own (`gc.callbacks`): it stops every thread and samples nothing.
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


class StallWatch:
    def __init__(self, threshold_s: float, sample_s: float = 0.01) -> None:
        self.threshold_s = threshold_s
        self.sample_s = sample_s
        self.beat = time.monotonic()  # set by the loop (LoopMonitor) every time it wakes
        self.stalls = 0  # stalls logged since start
        self._gc_started = 0.0
        self._stopped = threading.Event()

    def start(self) -> None:
        self.beat = time.monotonic()
        self._stopped.clear()
        threading.Thread(target=self._watch, name="recal-stall-watch", daemon=True).start()
        gc.callbacks.append(self._on_gc)

    def stop(self) -> None:
        self._stopped.set()
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif (held := time.perf_counter() - self._gc_started) >= self.threshold_s:
            self.stalls += 1
            log.warning("garbage collection of generation %d held every thread %.2f s", info["generation"], held)

    def _watch(self) -> None:
        me = threading.get_ident()
        while not self._stopped.wait(self.sample_s):
            beat = self.beat
            if time.monotonic() - beat < self.threshold_s:
                continue
            names = {t.ident: t.name for t in threading.enumerate()}
            samples: collections.Counter[tuple[str, ...]] = collections.Counter()
            while self.beat == beat and not self._stopped.is_set():
                for ident, frame in sys._current_frames().items():
                    if ident != me:
                        samples[(names.get(ident, str(ident)), *stack_of(frame))] += 1
                time.sleep(self.sample_s)
            self.stalls += 1
            top = "\n".join(f"  {n * self.sample_s:.2f} s: {' < '.join(s)}" for s, n in samples.most_common(SHOWN))
            log.warning("event loop held %.2f s; the threads' stacks, most sampled first:\n%s", self.beat - beat, top)


def stack_of(frame) -> tuple[str, ...]:
    """`file:function:line` of the two innermost frames, then of this project's innermost others."""
    entries = traceback.extract_stack(frame)[::-1]
    ours = [e for e in entries[2:] if "/streams/" in e.filename or "/recalibrators/" in e.filename]
    return tuple(f"{e.filename.rsplit('/', 1)[-1]}:{e.name}:{e.lineno}" for e in (entries[:2] + ours)[:FRAMES])
