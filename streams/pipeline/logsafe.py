"""Log lines that input cannot forge: control characters in the `recal.*` loggers' messages and arguments are
escaped (a segment value "a\\nERROR ..." is logged as one line, `a\\nERROR ...`).

Segment values, model names, ids and the text of exceptions about them come from producers; written raw, a
newline in one starts a fake log line and an ANSI escape rewrites a terminal. `install()` wraps the log record
factory once per process, so every call site (and every future one) is covered without escaping by hand;
numbers and other non-text arguments are left alone so `%d` / `%.3f` keep working.

>>> escape("ios\\nERROR forged\\x1b[2J")
'ios\\\\nERROR forged\\\\x1b[2J'
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

_TABLE = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F, 0x85)} | {
    0x0A: "\\n",
    0x0D: "\\r",
    0x09: "\\t",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}
_PREFIX = "recal"
_installed = False


def escape(value: object) -> str:
    """`str(value)` with control characters (and Unicode line separators) written as escapes."""
    return str(value).translate(_TABLE)


def _safe(arg: object) -> object:
    if isinstance(arg, str | bytes | BaseException):
        return escape(arg)
    return arg


def escape_record(record: logging.LogRecord) -> None:
    if isinstance(record.msg, str):
        record.msg = escape(record.msg)
    args = record.args
    if isinstance(args, Mapping):
        record.args = {k: _safe(v) for k, v in args.items()}
    elif args:
        record.args = tuple(_safe(a) for a in args)


def install() -> None:
    """Escape every record of the `recal` loggers from now on (idempotent)."""
    global _installed
    if _installed:
        return
    make = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        if record.name == _PREFIX or record.name.startswith(_PREFIX + "."):
            escape_record(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
