"""Benchmarks of the recalibration core: `.venv/bin/python bench/bench_core.py` (one core, ~1-2 min).

Prints a table of throughput/latency/size/memory against the targets, then map quality on synthetic.py
streams (20k and 1M events per segment) vs sklearn IsotonicRegression and offline Platt, then drift recovery.
"""

from __future__ import annotations

import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from recalibrators import Calibrator, CalibratorConfig
from recalibrators.isotonic import pav
from recalibrators.logit import logit
from recalibrators.metrics import calibration_ratio, ece
from streams.dev.synthetic import SBend, make_drift_stream, make_stream, sample_scores


def best_time(fn: Callable[[], object], repeat: int = 7, number: int = 20) -> float:
    """Best-of-`repeat` mean seconds per call (min filters scheduler noise)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def row(name: str, value: str, target: str, ok: bool | None) -> None:
    status = "" if ok is None else ("ok" if ok else "MISSED")
    print(f"| {name:<44} | {value:>16} | {target:>14} | {status:<6} |")


def rate_row(name: str, per_s: float, target: float | None) -> None:
    goal = "" if target is None else f">= {target / 1e6:.0f} M/s"
    row(name, f"{per_s / 1e6:.1f} M/s", goal, None if target is None else per_s >= target)


def perf() -> None:
    print("| metric                                       |         measured |         target | status |")
    print("|----------------------------------------------|------------------|----------------|--------|")
    rng = np.random.default_rng(0)
    s, y, ts, _ = make_stream(rng, 10_000, SBend())
    w = rng.uniform(0.5, 2.0, s.size)
    cal = Calibrator()
    cal.learn_batch(s, y, ts_ms=ts)
    t = best_time(lambda: cal.learn_batch(s, y, ts_ms=int(ts[-1])))
    rate_row("binning update, batch 10k, one ts", s.size / t, 20e6)
    t = best_time(lambda: cal.learn_batch(s, y, w, ts_ms=ts))
    rate_row("binning update, batch 10k, per-event ts + w", s.size / t, 20e6)
    hold = np.arange(s.size) % 20 == 0
    t = best_time(lambda: cal.learn_batch(s, y, ts_ms=ts, holdout=hold))
    rate_row("binning update, batch 10k, 5% held back", s.size / t, 20e6)
    t = best_time(lambda: cal.learn_one(0.02, 1, int(ts[-1])), number=200)
    row("learn_one", f"{t * 1e6:.1f} us", "", None)

    m = cal.to_map()
    t = best_time(lambda: m.apply(s), number=100)
    rate_row("map apply, batch 10k", s.size / t, 50e6)
    t = best_time(lambda: np.interp(s, m.x, m.y), number=100)
    rate_row("(reference: np.interp, batch 10k)", s.size / t, None)
    t = best_time(lambda: m.apply_one(0.0234), number=10_000)
    row("map apply_one (scalar)", f"{t * 1e6:.2f} us", "<= 5 us", t <= 5e-6)
    one = np.array([0.0234])
    t = best_time(lambda: m.apply(one), number=10_000)
    row("map apply, numpy batch of 1", f"{t * 1e6:.2f} us", "", None)

    v = rng.random(256)
    wts = rng.uniform(1, 100, 256)
    t = best_time(lambda: pav(v, wts), number=200)
    row("isotonic PAV, 256 random (worst-case) bins", f"{t * 1e6:.0f} us", "<= 100 us", t <= 100e-6)
    big = Calibrator(CalibratorConfig(n_bins=256))
    big.learn_batch(*make_stream(rng, 200_000, SBend())[:2], ts_ms=0)

    def refit(c: Calibrator = big) -> None:
        c._fit = None
        c.to_map()

    t = best_time(refit, number=50)
    row("full refit, 256 bins (Platt+EB+PAV+map)", f"{t * 1e6:.0f} us", "", None)
    t = best_time(lambda: (setattr(cal, "_fit", None), cal.to_map()), number=50)
    row("full refit, default 96 bins", f"{t * 1e6:.0f} us", "", None)

    full = Calibrator(prior=m.with_meta(model="ctr", model_version="v1", segment={"placement": "feed"}))
    s2 = np.linspace(0, 1, 5000)
    full.learn_batch(s2, rng.random(s2.size) < 0.1, ts_ms=0, holdout=np.arange(s2.size) % 2 == 0)
    size = len(full.to_bytes())
    row("state bytes, worst case (all bins + prior)", f"{size} B", "<= 8192 B", size <= 8192)
    row("state bytes, 10k-event stream, no prior", f"{len(cal.to_bytes())} B", "<= 8192 B", None)
    t = best_time(lambda: Calibrator.from_bytes(full.to_bytes()), number=100)
    row("to_bytes + from_bytes (worst case)", f"{t * 1e6:.0f} us", "", None)

    n = 100_000
    batch_s, batch_y = s[:50], y[:50]
    tracemalloc.start()
    cals = []
    for i in range(n):
        c = Calibrator()
        c.learn_batch(batch_s, batch_y, ts_ms=i, holdout=hold[:50])
        cals.append(c)
    mem = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    row("100k calibrators (tracemalloc)", f"{mem / 2**20:.0f} MiB", "<= 1024 MiB", mem <= 2**30)
    print()


def quality() -> None:
    rng = np.random.default_rng(2024)
    bends = {"default": SBend()} | {f"random{k}": SBend.random(np.random.default_rng(k)) for k in range(4)}
    ev = sample_scores(np.random.default_rng(99), 500_000)
    print("Mean |map(s) - p_true(s)| over the score distribution (x1e-4), lower is better.")
    print("Calibration ratios: truth = sum map / sum p_true on eval scores; train = sum map / sum labels")
    print("in-sample; labels = sum labels / sum p_true of the training stream (the label-noise floor).")
    print("ECE: eval scores with labels drawn from p_true.")
    cols = [
        "segment ",
        "events   ",
        "ours  ",
        "sk iso",
        "platt ",
        "ours/best",
        "truth ",
        "train ",
        "labels",
        "ECE ours",
        "ECE iso",
    ]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("-" * (len(c) + 2) for c in cols) + "|")
    for name, bend in bends.items():
        pt = bend.p_true(ev)
        ev_y = rng.random(ev.size) < pt
        for n in (20_000, 1_000_000):
            s, y, ts, p_train = make_stream(rng, n, bend)
            cal = Calibrator()
            cal.learn_batch(s, y, ts_ms=ts)
            ours = cal.to_map().apply(ev)
            in_sample = calibration_ratio(cal.to_map().apply(s), y)
            ratios = (calibration_ratio(ours, pt), in_sample, y.sum() / p_train.sum())
            iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(s, y).predict(ev)
            lr = LogisticRegression(C=1e6).fit(logit(s)[:, None], y)
            platt = lr.predict_proba(logit(ev)[:, None])[:, 1]
            errs = [float(np.mean(np.abs(p - pt))) for p in (ours, iso, platt)]
            e4 = " | ".join(f"{e * 1e4:6.2f}" for e in errs)
            r3 = " | ".join(f"{r:6.3f}" for r in ratios)
            print(
                f"| {name:<8} | {n:>9,} | {e4} | {errs[0] / min(errs[1:]):9.3f} | {r3} "
                f"| {ece(ours, ev_y):8.5f} | {ece(iso, ev_y):7.5f} |"
            )
    print()


def win_rate(n: int = 20_000, seeds: int = 10) -> None:
    """Single runs at 20k are noisy: count wins over seeds x segments (the unit test averages 5 seeds)."""
    ev = sample_scores(np.random.default_rng(7), 200_000)
    bends = [SBend()] + [SBend.random(np.random.default_rng(k)) for k in range(4)]
    ratios = []
    for bend in bends:
        pt = bend.p_true(ev)
        for seed in range(seeds):
            s, y, ts, _ = make_stream(np.random.default_rng(1000 + seed), n, bend)
            cal = Calibrator()
            cal.learn_batch(s, y, ts_ms=ts)
            iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(s, y).predict(ev)
            lr = LogisticRegression(C=1e6).fit(logit(s)[:, None], y)
            platt = lr.predict_proba(logit(ev)[:, None])[:, 1]
            errs = [float(np.mean(np.abs(p - pt))) for p in (cal.to_map().apply(ev), iso, platt)]
            ratios.append(errs[0] / min(errs[1:]))
    r = np.array(ratios)
    print(
        f"{n:,} events, {len(bends)} segments x {seeds} seeds: ours <= best baseline in {np.sum(r <= 1)}/"
        f"{r.size}; ours/best mean {r.mean():.3f}, median {np.median(r):.3f}, worst {r.max():.3f}"
    )
    print()


def drift() -> None:
    hl, rate = 30 * 60_000, 20.0
    before, after = SBend(), SBend(b=-0.2, c=0.2)
    switch = 4 * hl
    n = int(8 * hl / 1000 * rate)
    s, y, ts, _ = make_drift_stream(np.random.default_rng(9), n, before, after, switch, rate_per_s=rate)
    ev = sample_scores(np.random.default_rng(1), 200_000)
    cal = Calibrator(CalibratorConfig(half_life_ms=hl))
    print("Abrupt drift at t=4 half-lives (half-life 30 min, 20 events/s): mean |map - p_true| (x1e-4)")
    print("| time since drift | error vs current truth | stale map error |")
    print("|------------------|------------------------|-----------------|")
    stale = float(np.mean(np.abs(before.p_true(ev) - after.p_true(ev))))
    done = 0
    for k in (0.0, 0.5, 1.0, 2.0, 3.0, 4.0):
        end = switch + int(k * hl)
        upto = int(np.searchsorted(ts, end))
        cal.learn_batch(s[done:upto], y[done:upto], ts_ms=ts[done:upto])
        done = upto
        truth = before if k == 0 else after
        err = float(np.mean(np.abs(cal.to_map().apply(ev) - truth.p_true(ev))))
        print(f"| {k:>13.1f} HL | {err * 1e4:22.2f} | {stale * 1e4:15.2f} |")
    print()


if __name__ == "__main__":
    perf()
    quality()
    win_rate()
    drift()
