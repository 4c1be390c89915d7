"""The logit link and its inverse, the one definition every module uses.

>>> import numpy as np
>>> logit(np.array([0.5, 0.25]))
array([ 0.        , -1.09861229])
>>> sigmoid(np.array([0.0, -1000.0, 1000.0]))  # no overflow at either end
array([0.5, 0. , 1. ])
>>> float(sigmoid(logit(0.02)))
0.02
"""

from __future__ import annotations

import numpy as np

__all__ = ["logit", "sigmoid"]


def logit(p: np.ndarray | float) -> np.ndarray:
    """log(p / (1 - p)) in one fresh buffer (it runs on every scored batch); callers clip p into (0, 1)
    first where it can reach the ends."""
    p = np.asarray(p, dtype=np.float64)
    z = np.subtract(1.0, p, out=np.empty_like(p))
    np.divide(p, z, out=z)
    return np.log(z, out=z)


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    """1 / (1 + exp(-z)), computed as exp(-logaddexp(0, -z)): overflow-free at both ends."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(z, dtype=np.float64)))
