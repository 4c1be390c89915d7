"""Helpers of the producer-side fault scenarios (#13): exact runs of the kit's `Scenario` with faults mixed in,
the counts they record, and what they measure beside (event-loop stalls, rebalances)."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.request
from collections import Counter

from tests.support.kit import (
    PARTITIONS,
    Scenario,
    consume_all_async,
    labels_counted,
    positives_counted,
    produce,
    wait_for_counts,
)


class LoopLagSampler(threading.Thread):
    """The worker's longest event-loop stall while it runs (`/metrics` `recal_event_loop_lag_max_seconds`,
    the maximum since the previous scrape), in ms: `with LoopLagSampler(worker) as lag: ...; lag.max_ms`."""

    def __init__(self, worker, every_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.worker, self.every_s, self.max_ms, self.stop = worker, every_s, 0.0, threading.Event()

    def scrape(self) -> float:
        try:
            with urllib.request.urlopen(self.worker.url("/metrics"), timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return 0.0
        match = re.search(r"^recal_event_loop_lag_max_seconds ([0-9.e+-]+)$", text, re.M)
        return float(match.group(1)) * 1000 if match else 0.0

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.max_ms = max(self.max_ms, self.scrape())

    def __enter__(self) -> LoopLagSampler:
        self.scrape()  # the stalls before (start-up) are not the scenario's
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join()
        self.max_ms = max(self.max_ms, self.scrape())


def rebalances(log_text: str) -> int:
    """Revocations of assigned partitions in a worker log (its consumer groups' rebalances after the first
    assignment, which revokes the empty set)."""
    return sum(
        "Revoking previously assigned partitions" in line and "set()" not in line for line in log_text.splitlines()
    )


def finish(scenario: Scenario, broker: str, worker, ticks: list, waiting: int = 0, **producer_args) -> None:
    """Scenario.finish with other ticks, `waiting` impressions pending beside the closers, and
    `producer_args` for the producer (a partitioner)."""
    produce(broker, scenario.closers(), **producer_args)
    n_closers = len(scenario.placements) * PARTITIONS + waiting
    worker.wait_for(lambda s: s["pending"] == n_closers, 120, "only the closers pending", poll_s=0.3)
    time.sleep(2.5)  # partials_interval + refresh_interval: older labels merged before the closers' ones
    produce(broker, ticks, **producer_args)


def interleave(messages: list, extra: list) -> list:
    """`extra` spread evenly through `messages`, both in their order."""
    step = len(messages) // (len(extra) + 1)
    out = list(messages)
    for j, message in enumerate(extra):
        out.insert((j + 1) * step + j, message)
    return out


def run_exact(
    worker, stack, scenario: Scenario, extra: list, letters_expected: dict, record, name: str, **options
) -> dict:
    """`extra` mixed into the scenario's traffic, then closers and ticks; asserts exact label counts and
    exactly `letters_expected` dead letters (records and /stats), records the row; returns the stats.
    `options`: `waiting` (impressions left pending beside the closers), `faults` (for the row; default
    len(extra)), `per_second` (send that many messages a second, about real time), and the producer's
    settings (a `partitioner`)."""
    waiting, faults = options.pop("waiting", 0), options.pop("faults", len(extra))
    per_second = options.pop("per_second", 0)
    worker.wait_ready()
    sent = interleave(scenario.messages, extra)
    for lo in range(0, len(sent), per_second or len(sent)):
        produce(stack.broker_url, sent[lo : lo + (per_second or len(sent))], **options)
        time.sleep(0.7 if per_second else 0)
    worker.wait_for(lambda s: sum(s["events_in"].values()) >= len(sent), 60, "traffic read")
    finish(scenario, stack.broker_url, worker, scenario.ticks(), waiting, **options)
    counts = wait_for_counts(stack.redis_url, scenario.ns, scenario.expected, worker, timeout_s=120)
    stats = worker.stats()
    letters = dead_letter_reasons(stack.broker_url, scenario.ns, sum(letters_expected.values()))
    record(
        scenario=name,
        faults=faults,
        events_sent=len(sent) + len(scenario.closers()) + len(scenario.ticks()),
        labels_expected=scenario.labels_expected,
        labels_counted=labels_counted(counts),
        positives_expected=positives_counted(scenario.expected),
        positives_counted=positives_counted(counts),
        dead_letters=dict(letters),
        dead_letters_expected=letters_expected,
        max_rss_mb=round(worker.max_rss_mb),
        detail={"join": stats["join"], "pending": stats["pending"], "rekeyed": stats["rekeyed"]},
    )
    assert worker.alive()
    assert counts == {k: list(v) for k, v in scenario.expected.items()}
    assert letters == letters_expected and stats["dead_letters"] == letters_expected
    return stats


def dead_letter_reasons(broker: str, ns: str, expect: int) -> Counter:
    """The dead-letter records by reason (waits for `expect`, then a second more: extra ones count too)."""
    records = asyncio.run(consume_all_async(broker, f"{ns}-deadletter", expect, timeout_s=30 if expect else 3))
    return Counter(dict(r.headers)["recal-reason"].decode() for r in records)
