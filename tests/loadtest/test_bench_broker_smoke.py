"""The broker benchmark runs end to end on both brokers and loses nothing.

A tiny run of the real command in its own process, as a user would start it.
It asserts that the harness works, never a speed (docs/BENCHMARKS.md has the
figures).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_run_of_both_brokers_consumes_everything_produced(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "loadtest.bench_broker", "--records", "500", "--seconds", "1",
           "--rates", "200", "--json", "--quiet", "--data-dir", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=110, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    results = orjson.loads(proc.stdout)
    assert set(results["brokers"]) == {"ours", "tansu"}
    for name, phases in results["brokers"].items():
        for phase in ("throughput", "paced_200"):
            r = phases[phase]
            assert r["produced"] > 0, (name, phase)
            assert r["consumed"] == r["produced"], (name, phase, r)
            assert r["errors"] == 0, (name, phase, r)
            assert r["produce_ms"]["p50"] is not None
            assert r["end_to_end_ms"]["p50"] is not None
            assert r["broker_cpu_us_per_msg"] is not None
    assert results["brokers"]["ours"]["disk_mb_at_end"] > 0
