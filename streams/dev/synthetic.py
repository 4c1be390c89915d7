"""Seeded synthetic ad events with KNOWN true click probabilities (pure numpy).

Raw model scores s are logit-normal (base rate ~2% by default). The truth is an S-bend in logit space,

    p_true(s) = sigmoid(a*z + b + c*tanh((z - d)/w)),   z = logit(s),

deliberately not logistic in z, so neither Platt scaling nor a step function is right by construction. Use one
`SBend` per segment (`SBend.random` draws plausible ones) and `make_drift_stream` for an abrupt concept drift.
Used by the unit tests, bench/bench_core.py and the stream simulator.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recalibrators.logit import logit, sigmoid

__all__ = ["SBend", "make_drift_stream", "make_stream", "sample_scores"]


@dataclasses.dataclass(frozen=True)
class SBend:
    """True-probability curve of one segment. Defaults: the raw model is too flat mid-range."""

    a: float = 0.9
    b: float = -0.5
    c: float = 0.4
    d: float = -4.0
    w: float = 0.6

    def p_true(self, scores: np.ndarray) -> np.ndarray:
        s = np.clip(np.asarray(scores, dtype=np.float64), 1e-12, 1.0 - 1e-12)
        z = logit(s)
        return sigmoid(self.a * z + self.b + self.c * np.tanh((z - self.d) / self.w))

    @classmethod
    def random(cls, rng: np.random.Generator) -> SBend:
        """A plausible per-segment miscalibration around the default bend."""
        return cls(
            a=float(rng.uniform(0.75, 1.15)),
            b=float(rng.uniform(-0.8, 0.3)),
            c=float(rng.uniform(-0.5, 0.5)),
            d=float(rng.uniform(-5.0, -3.0)),
            w=float(rng.uniform(0.4, 1.0)),
        )


def sample_scores(rng: np.random.Generator, n: int, mean_logit: float = -4.3, sd: float = 1.0) -> np.ndarray:
    """Logit-normal raw scores; the defaults give a mean score (and base rate) of ~2%."""
    return sigmoid(rng.normal(mean_logit, sd, size=n))


def make_stream(
    rng: np.random.Generator,
    n: int,
    bend: SBend,
    t0_ms: int = 0,
    rate_per_s: float = 1000.0,
    mean_logit: float = -4.3,
    sd: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (scores, labels int8, ts_ms int64 non-decreasing Poisson arrivals, p_true)."""
    scores = sample_scores(rng, n, mean_logit, sd)
    p = bend.p_true(scores)
    labels = (rng.random(n) < p).astype(np.int8)
    gaps_ms = rng.exponential(1000.0 / rate_per_s, size=n)
    ts = t0_ms + np.floor(np.cumsum(gaps_ms)).astype(np.int64)
    return scores, labels, ts, p


def make_drift_stream(
    rng: np.random.Generator,
    n: int,
    before: SBend,
    after: SBend,
    switch_ms: int,
    t0_ms: int = 0,
    rate_per_s: float = 1000.0,
    mean_logit: float = -4.3,
    sd: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Like `make_stream`, but events at ts >= switch_ms follow `after` (abrupt drift)."""
    scores, _, ts, _ = make_stream(rng, n, before, t0_ms, rate_per_s, mean_logit, sd)
    p = np.where(ts < switch_ms, before.p_true(scores), after.p_true(scores))
    labels = (rng.random(n) < p).astype(np.int8)
    return scores, labels, ts, p
