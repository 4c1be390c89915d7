"""Sparse segments and silent drift: `.venv/bin/python bench/bench_sparse.py` (drives the core directly).

1. Sparse lattice: 9 finest segments (300 .. 30,000 labeled examples) under 3 parents under `*`, each with its own
   S-bend truth drawn around its parent's (streams/dev/synthetic.py). Per finest segment, mean |map - truth| over the
   score distribution for: the hierarchical fit (recalibrators.hierarchy), today's fallback-only behaviour (own map
   from `min_samples` = 1,000 examples, else the parent's), today's per-segment calibrator alone, offline isotonic
   and offline Platt (scikit-learn) and a streaming isotonic with decay (plain PAV on the same decayed bins), all on
   the same examples; traffic-weighted over segments and averaged over seeds.
2. Dense: the same lattice at 1,000,000 examples per finest segment, against offline isotonic.
3. Silent drift (the truth's level and bend change, the model version does not) with river's Page-Hinkley and
   ADWIN on the per-refresh calibration z of the published map, and false detections on a stationary stream.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from recalibrators import Calibrator, CalibratorConfig
from recalibrators.calibration_map import CalibrationMap
from recalibrators.drift import calibration_z
from recalibrators.hierarchy import fit_tree
from recalibrators.isotonic import pav
from recalibrators.logit import logit
from streams.dev.synthetic import SBend, make_drift_stream, make_stream, sample_scores
from streams.pipeline.drift import KINDS, DriftMonitor

SIZES = (300, 530, 950, 1_700, 3_000, 5_300, 9_500, 17_000, 30_000)
FINEST = [f"c={k}|p={k % 3}" for k in range(len(SIZES))]  # parent j holds sizes j, j+3, j+6
MIN_SAMPLES = 1_000  # today's gate: below this a segment falls back to its parent's map
METHODS = ("hier", "fallback", "own", "sk iso", "platt", "str iso")


def perturb(bend: SBend, rng: np.random.Generator, scale: float) -> SBend:
    """A child truth around its parent's: level, slope and bend moved by `scale`-sized steps."""
    return SBend(
        a=bend.a * float(np.exp(rng.normal(0.0, 0.08 * scale))),
        b=bend.b + float(rng.normal(0.0, 0.35 * scale)),
        c=bend.c + float(rng.normal(0.0, 0.25 * scale)),
        d=bend.d + float(rng.normal(0.0, 0.4 * scale)),
        w=bend.w,
    )


def lattice(rng: np.random.Generator) -> tuple[dict[str, SBend], dict[str, str | None]]:
    """Truths of the 9 finest segments and the parent of every key; parent j holds sizes j, j+3, j+6."""
    root = SBend()
    parents = {f"p={j}": perturb(root, rng, 1.0) for j in range(3)}
    finest, parent_of = {}, {"*": None} | dict.fromkeys(parents, "*")
    for key in FINEST:
        parent = key.split("|")[1]
        finest[key] = perturb(parents[parent], rng, 0.7)
        parent_of[key] = parent
    return finest, parent_of


def streaming_isotonic(cal: Calibrator) -> CalibrationMap:
    """The textbook streaming isotonic with decay: plain PAV on the decayed bins' rates, no shrinkage."""
    h = cal.histogram
    ok = h.nonempty()
    y = np.clip(pav(h.positives[ok] / h.weight[ok], h.weight[ok]), 0.0, 1.0)
    x = h.mean_score()[ok]
    return CalibrationMap(
        x=np.r_[0.0, x, 1.0], y=np.r_[y[0], y, y[-1]], method="isotonic", n=1.0, positives=0, last_event_ms=0
    )


def fit_all(
    sizes: dict[str, int], rng: np.random.Generator, ev: np.ndarray, offline: bool
) -> dict[str, dict[str, float]]:
    """Per finest key: L1 of every method against its truth on the eval scores `ev`."""
    truths, parent_of = lattice(rng)
    cals = {k: Calibrator() for k in parent_of}
    data = {}
    for key, bend in truths.items():
        s, y, ts, _ = make_stream(rng, sizes[key], bend, rate_per_s=1000.0)
        data[key] = (s, y)
        for k in (key, parent_of[key], "*"):  # every level of the fallback chain learns the example
            cals[k].learn_batch(s, y, ts_ms=ts)
    maps = fit_tree(cals, parent_of).maps
    out = {}
    for key, bend in truths.items():
        s, y = data[key]
        pt = bend.p_true(ev)
        parent = parent_of[key]
        own = cals[key].to_map()
        fallback = own if sizes[key] >= MIN_SAMPLES else cals[parent].to_map()
        preds = {"hier": maps[key].apply(ev), "fallback": fallback.apply(ev), "own": own.apply(ev)}
        preds["str iso"] = streaming_isotonic(cals[key]).apply(ev)
        if offline:
            preds["sk iso"] = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(s, y).predict(ev)
            lr = LogisticRegression(C=1e6).fit(logit(s)[:, None], y)
            preds["platt"] = lr.predict_proba(logit(ev)[:, None])[:, 1]
        out[key] = {m: float(np.mean(np.abs(p - pt))) for m, p in preds.items()}
    return out


def sparse(seeds: int) -> None:
    ev = sample_scores(np.random.default_rng(99), 200_000)
    keys = FINEST
    sizes = dict(zip(keys, SIZES, strict=True))
    runs = [fit_all(sizes, np.random.default_rng(100 + seed), ev, offline=True) for seed in range(seeds)]
    mean = {k: {m: float(np.mean([r[k][m] for r in runs])) for m in METHODS} for k in keys}
    print(f"Sparse lattice, mean |map - p_true| over the score distribution (x1e-4), mean of {seeds} seeds")
    print("| segment | examples | " + " | ".join(f"{m:>8}" for m in METHODS) + " | hier/best |")
    print("|---|---:|" + "---:|" * len(METHODS) + "---:|")
    for k in keys:
        e = mean[k]
        best = min(e["sk iso"], e["platt"], e["str iso"])
        cells = " | ".join(f"{e[m] * 1e4:8.2f}" for m in METHODS)
        print(f"| {k} | {sizes[k]:,} | {cells} | {e['hier'] / best:.3f} |")

    def weighted(run: dict, subset: list[str], method: str) -> float:
        w = np.array([sizes[k] for k in subset], dtype=float)
        return float(np.dot(w, [run[k][method] for k in subset]) / w.sum())

    small = [k for k in keys if sizes[k] < 2_000]
    print()
    print("| traffic-weighted L1 (x1e-4) | " + " | ".join(f"{m:>8}" for m in METHODS) + " |")
    print("|---|" + "---:|" * len(METHODS))
    for label, subset in (("all 9 finest", keys), ("finest < 2,000 examples", small)):
        cells = " | ".join(f"{np.mean([weighted(r, subset, m) for r in runs]) * 1e4:8.2f}" for m in METHODS)
        print(f"| {label} | {cells} |")
    all_best = [min(weighted(r, keys, m) for m in ("sk iso", "platt", "str iso")) for r in runs]
    ratio_all = [weighted(r, keys, "hier") / b for r, b in zip(runs, all_best, strict=True)]
    ratio_small = [weighted(r, small, "hier") / weighted(r, small, "fallback") for r in runs]
    print()
    print(
        f"hier / best baseline (all finest, traffic-weighted): mean {np.mean(ratio_all):.3f}, "
        f"worst seed {np.max(ratio_all):.3f} (target <= 1); seeds passing {np.sum(np.array(ratio_all) <= 1)}/{seeds}"
    )
    print(
        f"hier / fallback-only (finest < 2,000): mean {np.mean(ratio_small):.3f}, worst seed "
        f"{np.max(ratio_small):.3f} (target <= 0.8); seeds passing {np.sum(np.array(ratio_small) <= 0.8)}/{seeds}"
    )
    print()


def dense(n: int) -> None:
    ev = sample_scores(np.random.default_rng(98), 200_000)
    keys = FINEST
    run = fit_all(dict.fromkeys(keys, n), np.random.default_rng(7), ev, offline=True)
    ratios = [run[k]["hier"] / run[k]["sk iso"] for k in keys]
    cells = ", ".join(f"{r:.3f}" for r in ratios)
    print(f"Dense: {n:,} examples per finest segment, hier / offline isotonic per segment: {cells}")
    print(f"worst {max(ratios):.3f}, mean {np.mean(ratios):.3f} (target <= 0.9)")
    print()


HL_MS = 30 * 60_000  # fitting half-life of the drift runs
RATE = 20.0  # labeled examples per second of one key
REFRESH_MS = 60_000
BEFORE, AFTER = SBend(), SBend(b=SBend().b + 0.6, c=SBend().c - 0.3)  # e.g. a broken feature: +80% level


def drift_run(
    kind: str | None, seed: int, before: SBend, after: SBend, total_hl: float, switch_hl: float, ev: np.ndarray
):
    """(refresh end times in half-lives, error of the map after each refresh, detections) of one key."""
    switch = int(switch_hl * HL_MS)
    n = int(total_hl * HL_MS / 1000 * RATE)
    s, y, ts, _ = make_drift_stream(np.random.default_rng(seed), n, before, after, switch, rate_per_s=RATE)
    cal = Calibrator(CalibratorConfig(half_life_ms=HL_MS))
    monitor = DriftMonitor(kind) if kind else None
    truth = {False: before.p_true(ev), True: after.p_true(ev)}
    ends = np.arange(REFRESH_MS, int(total_hl * HL_MS) + 1, REFRESH_MS)
    edges = np.searchsorted(ts, ends)
    current, lo, errs = None, 0, []
    for end, hi in zip(ends.tolist(), edges.tolist(), strict=True):
        if hi > lo:
            z = None if monitor is None or current is None else calibration_z(current, s[lo:hi], y[lo:hi])
            if z is not None and monitor.update("key", z):
                cal.forget(monitor.forget_half_lives)
            cal.learn_batch(s[lo:hi], y[lo:hi], ts_ms=ts[lo:hi])
            current = cal.to_map()
        lo = hi
        errs.append(float(np.mean(np.abs(current.apply(ev) - truth[end > switch]))))
    detections = 0 if monitor is None else monitor.detections["key"]
    return ends / HL_MS, np.array(errs), detections


def silent_drift(seeds: int) -> None:
    ev = sample_scores(np.random.default_rng(97), 50_000)
    switch_hl, total_hl = 4.0, 7.0
    stale = float(np.mean(np.abs(BEFORE.p_true(ev) - AFTER.p_true(ev))))
    print(
        f"Silent drift at t = {switch_hl:g} half-lives (half-life 30 min, {RATE:g} labeled/s, refresh 1 min; stale "
        f"map error {stale * 1e4:.1f}e-4), mean of {seeds} seeds: error x1e-4 after the drift, and the first time"
    )
    print("the error is back within 2x its pre-drift level (mean over the half-life before the drift)")
    checkpoints = (0.1, 0.25, 0.5, 1.0, 2.0)
    head = " | ".join(f"+{c:g} HL" for c in checkpoints)
    print(f"| detector | pre-drift | {head} | back within 2x | detections |")
    print("|---|---:|" + "---:|" * len(checkpoints) + "---:|---:|")
    for kind in (None, *KINDS):
        rows = [drift_run(kind, 300 + seed, BEFORE, AFTER, total_hl, switch_hl, ev) for seed in range(seeds)]
        t = rows[0][0]
        pre = np.array([errs[(t > switch_hl - 1) & (t <= switch_hl)].mean() for _, errs, _ in rows])
        back = []
        for (_, errs, _), p in zip(rows, pre, strict=True):
            ok = np.flatnonzero((t > switch_hl) & (errs <= 2 * p))
            back.append(t[ok[0]] - switch_hl if ok.size else np.inf)
        at = [np.mean([errs[np.argmin(np.abs(t - switch_hl - c))] for _, errs, _ in rows]) for c in checkpoints]
        cells = " | ".join(f"{a * 1e4:7.2f}" for a in at)
        det = np.mean([d for *_, d in rows])
        print(
            f"| {kind or 'none (half-life only)'} | {pre.mean() * 1e4:.2f} | {cells} | {np.mean(back):.2f} HL "
            f"(worst {np.max(back):.2f}) | {det:.1f} |"
        )
    print()


def false_alarms(keys: int) -> None:
    ev = sample_scores(np.random.default_rng(96), 5_000)
    print(f"Stationary stream, 10 half-lives per key, {keys} keys (random S-bends): false detections per key")
    print("| detector | mean | max | keys with > 1 |")
    print("|---|---:|---:|---:|")
    for kind in KINDS:
        counts = []
        for k in range(keys):
            bend = SBend.random(np.random.default_rng(500 + k))
            counts.append(drift_run(kind, 600 + k, bend, bend, 10.0, 10.0, ev)[2])
        c = np.array(counts)
        print(f"| {kind} | {c.mean():.2f} | {c.max()} | {np.sum(c > 1)} |")
    print()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--dense", type=int, default=1_000_000, help="examples per finest segment (0: skip)")
    parser.add_argument("--keys", type=int, default=20, help="stationary keys for the false-alarm count")
    parser.add_argument("--only", choices=("sparse", "dense", "drift", "stationary"))
    args = parser.parse_args()
    logging.getLogger("recal.drift").disabled = True  # detections are counted in the tables
    if args.only in (None, "sparse"):
        sparse(args.seeds)
    if args.only in (None, "dense") and args.dense:
        dense(args.dense)
    if args.only in (None, "drift"):
        silent_drift(args.seeds)
    if args.only in (None, "stationary"):
        false_alarms(args.keys)
