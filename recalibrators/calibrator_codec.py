"""A calibrator's state as bytes and back (no pickle; <= 8 KB for the default config).

u32 header length | orjson header | per histogram: packed non-empty-bin mask + those columns (float64 LE) |
prior knots x, y (float64 LE).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import struct
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import orjson

from .calibration_map import CalibrationMap
from .calibrator_config import CalibratorConfig
from .histogram import Histogram

__all__ = ["CalibratorState", "decode", "encode", "peek"]

_FORMAT = 1
_HEADER = struct.Struct("<I")


class CalibratorState(NamedTuple):
    """What the bytes hold: the config, the prior map, both histograms, the reference time and n_seen."""

    config: CalibratorConfig
    prior: CalibrationMap | None
    main: Histogram
    holdout: Histogram
    t_ref: int | None
    n_seen: int


@functools.lru_cache(maxsize=64)
def _config_doc(config: CalibratorConfig) -> dict[str, Any]:
    """The header's config (`dataclasses.asdict` deep-copies: a third of an encode, made once per config)."""
    return dataclasses.asdict(config)


def encode(state: CalibratorState) -> bytes:
    """The state's bytes; `decode` reads them back.

    >>> cfg = CalibratorConfig(n_bins=8)
    >>> state = CalibratorState(cfg, None, Histogram(cfg.bins), Histogram(cfg.bins, with_logit=False), 5, 2)
    >>> back = decode(encode(state))
    >>> back.config == cfg, back.t_ref, back.n_seen, back.prior
    (True, 5, 2, None)
    """
    header: dict[str, Any] = {
        "format": _FORMAT,
        "config": _config_doc(state.config),
        "t_ref": state.t_ref,
        "n_seen": state.n_seen,
    }
    parts = []
    for hist in (state.main, state.holdout):
        mask = np.any(hist.sums != 0.0, axis=0)
        parts.append(np.packbits(mask).tobytes())
        parts.append(np.ascontiguousarray(hist.sums[:, mask], dtype="<f8").tobytes())
    prior = state.prior
    if prior is not None:
        prior_doc = orjson.loads(prior.to_json())
        del prior_doc["x"], prior_doc["y"]
        header["prior"] = prior_doc
        header["prior_knots"] = int(prior.x.size)
        parts.append(prior.x.astype("<f8").tobytes() + prior.y.astype("<f8").tobytes())
    head = orjson.dumps(header)
    return _HEADER.pack(len(head)) + head + b"".join(parts)


def peek(data: bytes) -> tuple[int, int]:
    """(last_event_ms, n_seen) from the header alone: what an aggregator needs of every partial it receives,
    without building the histograms (`decode` costs ~10x more). ValueError as `decode`.

    >>> cfg = CalibratorConfig(n_bins=8)
    >>> peek(encode(CalibratorState(cfg, None, Histogram(cfg.bins), Histogram(cfg.bins, with_logit=False), 5, 2)))
    (5, 2)
    >>> peek(b"\\x02\\x00\\x00\\x00[]")
    Traceback (most recent call last):
    ...
    ValueError: corrupt calibrator state: unsupported calibrator format None
    """
    with _corrupt_state():
        header, _ = _read_header(data)
        return header["t_ref"] or 0, int(header["n_seen"])


def decode(data: bytes) -> CalibratorState:
    """The state `encode` wrote; ValueError("corrupt calibrator state: ...") on anything else.

    >>> decode(b"\\x02\\x00\\x00\\x00{}")
    Traceback (most recent call last):
    ...
    ValueError: corrupt calibrator state: unsupported calibrator format None
    """
    with _corrupt_state():
        header, start = _read_header(data)
        config = CalibratorConfig(**header["config"])
        buf = memoryview(data)[start:]
        spec = config.bins
        hists = []
        for rows in (4, 3):
            nmask = (spec.n_bins + 7) // 8
            mask = np.unpackbits(np.frombuffer(buf[:nmask], dtype=np.uint8))[: spec.n_bins].astype(bool)
            k = int(mask.sum())
            cols = np.frombuffer(buf[nmask : nmask + 8 * rows * k], dtype="<f8").reshape(rows, k)
            sums = np.zeros((rows, spec.n_bins))
            sums[:, mask] = cols
            hists.append(Histogram(spec, with_logit=rows == 4, sums=sums))
            buf = buf[nmask + 8 * rows * k :]
        prior = None
        if "prior" in header:
            n = header["prior_knots"]
            knots = np.frombuffer(buf[: 16 * n], dtype="<f8")
            prior_doc = header["prior"] | {"x": knots[:n].tolist(), "y": knots[n:].tolist()}
            prior = CalibrationMap.from_json(orjson.dumps(prior_doc))
            buf = buf[16 * n :]
        if len(buf):
            raise ValueError(f"{len(buf)} trailing bytes")
    return CalibratorState(config, prior, hists[0], hists[1], header["t_ref"], header["n_seen"])


def _read_header(data: bytes) -> tuple[dict[str, Any], int]:
    """(the orjson header, the offset where the histograms start), the format checked."""
    (hlen,) = _HEADER.unpack_from(data, 0)
    header = orjson.loads(data[_HEADER.size : _HEADER.size + hlen])
    fmt = header.get("format") if isinstance(header, dict) else None
    if fmt != _FORMAT:
        raise ValueError(f"unsupported calibrator format {fmt!r}")
    return header, _HEADER.size + hlen


@contextlib.contextmanager
def _corrupt_state() -> Iterator[None]:
    """Any failure to read the bytes as ValueError("corrupt calibrator state: ...")."""
    try:
        yield
    except (struct.error, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"corrupt calibrator state: {exc!r}") from None
    except ValueError as exc:
        raise ValueError(f"corrupt calibrator state: {exc}") from None
