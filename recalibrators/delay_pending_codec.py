"""A pending exposure's state as bytes and back (lossless; no pickle).

u32 header length | orjson header | packed non-empty-bin mask + those columns of (w, y, s) | cohort table
(`CohortTable.to_bytes`, the two count columns as int32).
"""

from __future__ import annotations

import dataclasses
import struct
from typing import NamedTuple

import numpy as np
import orjson

from .delay_cohorts import CohortTable
from .delay_pending_config import PendingConfig
from .histogram import BinSpec

__all__ = ["PendingState", "decode", "encode"]

_FORMAT = 2  # 1: no converted-count column, no floor (never persisted by a stream worker)
_HEADER = struct.Struct("<I")


class PendingState(NamedTuple):
    """What the bytes hold: the settings, the (3, n_bins) sums, the cohorts, the reference time, the floor."""

    config: PendingConfig
    sums: np.ndarray
    cohorts: CohortTable
    t_ref: int | None
    floor_ms: int | None


def encode(state: PendingState) -> bytes:
    """The state's bytes; `decode` reads them back.

    >>> cfg = PendingConfig(BinSpec(8, -8.0, 4.0, 1e-7), half_life_ms=1000.0, window_ms=600)
    >>> state = PendingState(cfg, np.zeros((3, 8)), CohortTable(cfg.cohort_ms, cfg.n_groups + 2), 7, None)
    >>> back = decode(encode(state))
    >>> back.config == cfg, back.t_ref, back.floor_ms, back.cohorts.ids.size
    (True, 7, None, 0)
    """
    cfg = state.config
    header = {
        "format": _FORMAT,
        "bins": [cfg.bins.n_bins, cfg.bins.logit_lo, cfg.bins.logit_hi, cfg.bins.clip],
        "half_life_ms": cfg.half_life_ms,
        "window_ms": cfg.window_ms,
        "n_cohorts": cfg.n_cohorts,
        "n_groups": cfg.n_groups,
        "t_ref": state.t_ref,
        "floor_ms": state.floor_ms,
        "cohorts": int(state.cohorts.ids.size),
    }
    mask = np.any(state.sums != 0.0, axis=0)
    body = np.packbits(mask).tobytes() + np.ascontiguousarray(state.sums[:, mask], dtype="<f8").tobytes()
    head = orjson.dumps(header)
    return _HEADER.pack(len(head)) + head + body + state.cohorts.to_bytes(n_counts=2)


def decode(data: bytes) -> PendingState:
    """The state `encode` wrote; ValueError on anything else.

    >>> decode(b"\\x02\\x00\\x00\\x00{}")
    Traceback (most recent call last):
    ...
    ValueError: unsupported pending-exposure format None
    """
    try:
        (hlen,) = _HEADER.unpack_from(data, 0)
        h = orjson.loads(data[_HEADER.size : _HEADER.size + hlen])
        if h.get("format") != _FORMAT:
            raise ValueError(f"unsupported pending-exposure format {h.get('format')!r}")
        n_bins, lo, hi, clip = h["bins"]
        cfg = PendingConfig(BinSpec(n_bins, lo, hi, clip), h["half_life_ms"], h["window_ms"])
        cfg = dataclasses.replace(cfg, n_cohorts=h["n_cohorts"], n_groups=h["n_groups"])
        sums = np.zeros((3, n_bins))
        buf = memoryview(data)[_HEADER.size + hlen :]
        nmask = (n_bins + 7) // 8
        mask = np.unpackbits(np.frombuffer(buf[:nmask], dtype=np.uint8))[:n_bins].astype(bool)
        k = int(mask.sum())
        sums[:, mask] = np.frombuffer(buf[nmask : nmask + 24 * k], dtype="<f8").reshape(3, k)
        rest = buf[nmask + 24 * k :]
        cohorts, buf = CohortTable.from_buffer(cfg.cohort_ms, cfg.n_groups + 2, h["cohorts"], rest, 2)
        if len(buf):
            raise ValueError(f"{len(buf)} trailing bytes")
        return PendingState(cfg, sums, cohorts, h["t_ref"], h["floor_ms"])
    except (struct.error, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"corrupt pending-exposure state: {exc!r}") from None
