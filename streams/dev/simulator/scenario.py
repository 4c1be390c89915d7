"""What the synthetic traffic looks like: the models, segments, label delays and noise of one simulation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

HOUR_S = 3600.0
DAY_S = 86400.0


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    base_rate: float  # median raw score (per-segment offsets spread it; the mean is higher)
    score_sd: float = 0.9  # spread of the raw scores in logit space


@dataclass(frozen=True)
class TrafficScenario:
    """What the traffic looks like. Times are event time; defaults make a readable demo at speed=60."""

    ctr: ModelSpec = ModelSpec("ctr", "v1", 0.014)  # label: click; mean raw score ~2%
    cvr: ModelSpec = ModelSpec("cvr", "v1", 0.055)  # label: conversion post-click (mean ~8%)
    platforms: tuple[tuple[str, float], ...] = (("ios", 0.35), ("android", 0.45), ("web", 0.2))
    placements: tuple[tuple[str, float], ...] = (("search", 0.4), ("feed", 0.45), ("related", 0.15))
    seed: int = 7
    t0_ms: int | None = None  # None: now
    speed: float = 60.0  # event seconds per wall second
    click_delay_mean_s: float = 5.0
    duplicate_click_share: float = 0.03  # of clicks: sent twice (half reuse the click_id, half get a new one)
    reordered_click_share: float = 0.02  # of clicks: the impression is held back until after the click
    late_click_share: float = 0.01  # of clicks: delayed beyond the click window
    click_window_s: float = HOUR_S
    conversion_delay_median_s: float = 1800.0  # lognormal from the click: long tail past the window
    conversion_delay_sigma: float = 2.0
    conversion_window_s: float = 7 * DAY_S  # measured from the impression, like ModelConfig.window_ms
    malformed_share: float = 0.0  # malformed messages per valid impression
    batched_share: float = 0.0  # of impressions: sent inside JSON-array messages
    max_batch_events: int = 20
    drift_at_s: float | None = None  # event seconds after t0 when every miscalibration changes abruptly
    reservoir_size: int = 20_000

    def __post_init__(self) -> None:
        shares = (
            "duplicate_click_share",
            "reordered_click_share",
            "late_click_share",
            "malformed_share",
            "batched_share",
        )
        for name in shares:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        if self.speed <= 0 or self.max_batch_events < 1 or self.reservoir_size < 1:
            raise ValueError("speed, max_batch_events and reservoir_size must be positive")

    @property
    def conversion_in_window(self) -> float:
        """P(a conversion lands within `conversion_window_s` of its impression | it happens): the lognormal
        delay from the click, its window shortened by the mean click delay (seconds against a window of
        hours or days). cvr's truth is P(conversion | click) times this: the quantity its maps estimate."""
        room = self.conversion_window_s - self.click_delay_mean_s
        if room <= 0:
            return 0.0
        z = (math.log(room) - math.log(self.conversion_delay_median_s)) / self.conversion_delay_sigma
        return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))

    @property
    def models(self) -> tuple[ModelSpec, ModelSpec]:
        return (self.ctr, self.cvr)

    @property
    def segments(self) -> list[dict[str, str]]:
        return [{"platform": p, "placement": q} for p, _ in self.platforms for q, _ in self.placements]

    @property
    def segment_weights(self) -> np.ndarray:
        w = np.array([wp * wq for _, wp in self.platforms for _, wq in self.placements])
        return w / w.sum()
