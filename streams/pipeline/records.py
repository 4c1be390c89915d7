"""Binary record formats of the internal topics: an orjson header, then raw little-endian blobs.

No pickle anywhere: a record is `u32 header length | header JSON | blob | blob ...`, and the header
says what each blob is. Readers never execute anything found in a record.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson

_LEN = struct.Struct("<I")

# Labeled example columns, in blob order, with their on-wire dtypes.
EXAMPLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("model", "<u2"),
    ("version", "<u2"),
    ("segment", "<u4"),
    ("score", "<f8"),
    ("label", "u1"),
    ("ts", "<i8"),
    ("holdout", "?"),
)


def pack(header: dict[str, Any], blobs: list[bytes] = ()) -> bytes:
    head = orjson.dumps({**header, "blobs": [len(b) for b in blobs]})
    return _LEN.pack(len(head)) + head + b"".join(blobs)


def unpack(data: bytes) -> tuple[dict[str, Any], list[memoryview]]:
    """Split a record into its header and blobs; raises ValueError on any malformed record."""
    try:
        (head_len,) = _LEN.unpack_from(data)
        header = orjson.loads(data[4 : 4 + head_len])
        view = memoryview(data)
        blobs, pos = [], 4 + head_len
        for size in header["blobs"]:
            if pos + size > len(data):
                raise ValueError("record truncated")
            blobs.append(view[pos : pos + size])
            pos += size
    except (struct.error, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"malformed record: {exc}") from exc
    return header, blobs


def pack_examples(header: dict[str, Any], columns: dict[str, np.ndarray]) -> bytes:
    """A labeled-examples record: header (partition, seq, string tables) + one blob per column."""
    blobs = [np.ascontiguousarray(columns[name], dtype=dtype).tobytes() for name, dtype in EXAMPLE_COLUMNS]
    return pack({**header, "n": len(columns["label"])}, blobs)


def unpack_examples(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    header, blobs = unpack(data)
    n = header.get("n")
    if header.get("type") != "examples" or len(blobs) != len(EXAMPLE_COLUMNS):
        raise ValueError("not a labeled-examples record")
    columns = {}
    for (name, dtype), blob in zip(EXAMPLE_COLUMNS, blobs, strict=True):
        column = np.frombuffer(blob, dtype=dtype)
        if len(column) != n:
            raise ValueError(f"column {name} has {len(column)} rows, header says {n}")
        columns[name] = column
    return header, columns
