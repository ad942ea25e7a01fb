"""A small headless Locust run of loadtest/locustfile.py against the real system.

Locust runs as a subprocess (gevent monkey-patches the interpreter, and its
warnings would trip pytest's filterwarnings=error).  The run must end with
zero failures, and the custom end-to-end delivery metric must have entries.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from tests.support.stack import System

ROOT = Path(__file__).resolve().parents[2]


def test_locust_headless_run_has_no_failures_and_times_delivery(
    system: System, tmp_path: Path
) -> None:
    locust = Path(sys.executable).parent / "locust"
    prefix = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "client")])}
    proc = subprocess.run(
        [
            str(locust),
            "-f", str(ROOT / "loadtest/locustfile.py"),
            "--headless", "-u", "4", "-r", "4", "-t", "10s",
            "--host", system.lb,
            "--exit-code-on-error", "1",
            "--csv", str(prefix),
            "--only-summary",
            "--stop-timeout", "5",
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    with open(f"{prefix}_stats.csv", newline="") as f:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
    total = rows[("", "Aggregated")]
    assert int(total["Failure Count"]) == 0, output[-4000:]
    deliver = rows[("E2E", "deliver")]
    assert int(deliver["Request Count"]) > 0
    assert float(deliver["Average Response Time"]) > 0
    assert int(rows[("POST", "/auth/v1/signup")]["Request Count"]) == 4
    with open(f"{prefix}_failures.csv", newline="") as f:
        assert list(csv.DictReader(f)) == []
