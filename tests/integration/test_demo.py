"""The demo scenario end to end: `recal demo` from nothing to a report, as a newcomer runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_demo_calibrates_ctr_end_to_end(tmp_path: Path, broker_impl: str) -> None:
    out = tmp_path / "artifacts"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli.main",
            "demo",
            "--broker-impl",
            broker_impl,
            "--duration",
            "30",
            "--rate",
            "2000",
            "--speed",
            "240",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = (out / "report.txt").read_text()
    # The pooled ctr row: mean |pred - p_true| must drop well below the raw model's.
    pooled = next(line for line in report.splitlines() if line.startswith("ctr") and "(all)" in line)
    numbers = [float(x) for x in re.findall(r"\d+\.\d+", pooled)]
    mae_raw, mae_cal = numbers[-2], numbers[-1]
    assert mae_cal < 0.5 * mae_raw, pooled
    assert (out / "reliability.png").stat().st_size > 10_000
