"""Segment keys: the canonical, collision-free string form of a segment.

A segment is a small mapping of dimension -> value, e.g. ``{"platform": "ios", "placement": "search"}``.
Its key is the sorted ``dim=value`` pairs joined by ``|``; the model-wide segment is ``*``.
Dimension names and values are percent-escaped (``%``, ``=``, ``|``, ``:`` and ``*``) so that a value
containing a separator can never produce another segment's key, nor a Redis key with an extra ``:``.

>>> segment_key({"placement": "search", "platform": "ios"})
'placement=search|platform=ios'
>>> segment_key({})
'*'
>>> segment_key({"placement": "a|b=c"})
'placement=a%7Cb%3Dc'
>>> parse_segment_key(segment_key({"x": "1:2"}))
{'x': '1:2'}
>>> fallback_chain({"platform": "ios", "placement": "search"}, [["platform", "placement"], ["placement"]])
['placement=search|platform=ios', 'placement=search', '*']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

MODEL_WIDE = "*"

_ESCAPES = {"%": "%25", "=": "%3D", "|": "%7C", ":": "%3A", "*": "%2A"}
_ESCAPE_TABLE = str.maketrans(_ESCAPES)


def _escape(text: str) -> str:
    return text.translate(_ESCAPE_TABLE)


def _unescape(text: str) -> str:
    for raw, escaped in reversed(_ESCAPES.items()):  # "%25" last, so "%253D" stays "%3D"
        text = text.replace(escaped, raw)
    return text


def segment_key(segment: Mapping[str, str]) -> str:
    """The canonical key of a segment: sorted, escaped ``dim=value`` pairs joined by ``|``, or ``*``."""
    if not segment:
        return MODEL_WIDE
    return "|".join(f"{_escape(dim)}={_escape(segment[dim])}" for dim in sorted(segment))


def parse_segment_key(key: str) -> dict[str, str]:
    """The inverse of :func:`segment_key`."""
    if key == MODEL_WIDE:
        return {}
    pairs = (pair.split("=") for pair in key.split("|"))
    return {_unescape(dim): _unescape(value) for dim, value in pairs}


def project(segment: Mapping[str, str], dims: Sequence[str]) -> dict[str, str] | None:
    """The segment restricted to `dims`, or None when the segment lacks one of them."""
    try:
        return {dim: segment[dim] for dim in dims}
    except KeyError:
        return None


def fallback_chain(segment: Mapping[str, str], segment_by: Sequence[Sequence[str]]) -> list[str]:
    """Segment keys from finest to coarsest, ending with the model-wide ``*``; levels the segment
    cannot fill (a missing dimension) are skipped, and duplicates are dropped."""
    keys: list[str] = []
    for dims in segment_by:
        projected = project(segment, dims)
        if projected is not None and projected:
            key = segment_key(projected)
            if key not in keys:
                keys.append(key)
    keys.append(MODEL_WIDE)
    return keys


def escape(component: str) -> str:
    """One key component (a model name, a model version, a dimension or a value) escaped for a key."""
    return _escape(component)


def unescape(component: str) -> str:
    """The inverse of :func:`escape`."""
    return _unescape(component)
