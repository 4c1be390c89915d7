"""#13 item 16: producer-controlled strings in log lines (segment values reach the drift log) cannot forge a
line or emit terminal escapes once `logsafe.install()` ran (the worker and `recal` call it)."""

from __future__ import annotations

import io
import logging

from recalibrators.segments import segment_key
from streams.pipeline import logsafe
from streams.pipeline.aggregator import Aggregator
from streams.pipeline.config import ModelConfig

FORGED = "feed\n2026-12-01 10:00:00 ERROR recal.app: forged\x1b[2J\u2028"


def captured(logger_name: str, emit) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        emit()
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_drift_log_line_with_a_forged_segment_stays_one_line():
    logsafe.install()
    agg = Aggregator(lambda name: ModelConfig(drift_min_weight=1.0))
    metrics = {"eval_weight": 1_000.0, "ece_raw": 0.5, "ratio_raw": 3.0}
    text = captured(
        "recal.drift", lambda: agg.drift_alerts.check(f"ctr:v1:{segment_key({'placement': FORGED})}", metrics)
    )
    assert text.count("\n") == 1 and "\x1b" not in text and "\u2028" not in text
    assert "feed\\n2026-12-01" in text and "\\x1b[2J" in text


def test_arguments_of_every_kind_are_escaped_numbers_untouched():
    logsafe.install()
    log = logging.getLogger("recal.test")

    def emit() -> None:
        log.warning("%s %r %d %.1f %s", FORGED, FORGED, 7, 2.5, ValueError(FORGED))
        log.warning("%(seg)s", {"seg": FORGED})
        log.warning(f"inline {FORGED}")

    text = captured("recal.test", emit)
    assert text.count("\n") == 3 and "\x1b" not in text
    assert " 7 2.5 " in text


def test_other_loggers_are_left_alone():
    logsafe.install()
    text = captured("faust.test", lambda: logging.getLogger("faust.test").warning("a\nb"))
    assert text == "WARNING faust.test: a\nb\n"
