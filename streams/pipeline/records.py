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

# Labeled example columns, in blob order, with their on-wire dtypes: the one place for them.
EXAMPLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("model", "<u4"),
    ("version", "<u4"),
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


EXAMPLES_LAYOUT = 2  # 1: u16 model and version indices (records written before 65,536 versions could overflow)
_LAYOUT_1 = {"model": "<u2", "version": "<u2"}


def pack_examples(header: dict[str, Any], columns: dict[str, np.ndarray]) -> bytes:
    """A labeled-examples record: header (partition, seq, string tables) + one blob per column."""
    blobs = [np.ascontiguousarray(columns[name], dtype=dtype).tobytes() for name, dtype in EXAMPLE_COLUMNS]
    return pack({**header, "layout": EXAMPLES_LAYOUT, "n": len(columns["label"])}, blobs)


def compact_tables(
    columns: dict[str, np.ndarray], tables: dict[str, list]
) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    """Columns renumbered into tables holding only the models, versions and segments they use, so a
    record's header grows with its examples, not with everything its partition ever saw (#13 item 4).

    >>> cols = {"model": np.array([2, 2]), "version": np.array([0, 1]), "segment": np.array([5, 5])}
    >>> tabs = {"models": list("abc"), "versions": ["v1", "v2"], "segments": [{}] * 5 + [{"p": "x"}]}
    >>> c, t = compact_tables(cols, tabs)
    >>> c["model"].tolist(), c["segment"].tolist(), t
    ([0, 0], [0, 0], {'models': ['c'], 'versions': ['v1', 'v2'], 'segments': [{'p': 'x'}]})
    """
    columns, compact = dict(columns), {}
    for column, table in (("model", "models"), ("version", "versions"), ("segment", "segments")):
        used, inverse = np.unique(columns[column], return_inverse=True)
        columns[column] = inverse.astype(np.uint32)
        compact[table] = [tables[table][i] for i in used.tolist()]
    return columns, compact


def unpack_examples(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    header, blobs = unpack(data)
    n = header.get("n")
    if header.get("type") != "examples" or len(blobs) != len(EXAMPLE_COLUMNS):
        raise ValueError("not a labeled-examples record")
    columns = {}
    old = _LAYOUT_1 if header.get("layout", 1) == 1 else {}
    for (name, dtype), blob in zip(EXAMPLE_COLUMNS, blobs, strict=True):
        column = np.frombuffer(blob, dtype=old.get(name, dtype))
        if len(column) != n:
            raise ValueError(f"column {name} has {len(column)} rows, header says {n}")
        columns[name] = column
    return header, columns
