"""The truth the simulator keeps: recent (raw score, true probability) pairs per (model, segment), so a report
can score published maps against the real probabilities instead of noisy labels."""

from __future__ import annotations

import numpy as np

TruthSamples = dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]  # (model, segment_key) -> (scores, p_true)


class Reservoir:
    """The most recent `size` (raw score, p_true) pairs of one (model, segment): a ring buffer."""

    def __init__(self, size: int) -> None:
        self._scores = np.empty(size)
        self._p_true = np.empty(size)
        self._pos = 0
        self._filled = 0

    def add(self, scores: np.ndarray, p_true: np.ndarray) -> None:
        size = self._scores.size
        scores, p_true = scores[-size:], p_true[-size:]
        idx = (self._pos + np.arange(scores.size)) % size
        self._scores[idx], self._p_true[idx] = scores, p_true
        self._pos = (self._pos + scores.size) % size
        self._filled = min(size, self._filled + scores.size)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self._scores[: self._filled].copy(), self._p_true[: self._filled].copy()
