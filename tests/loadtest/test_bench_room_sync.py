"""The reconnect benchmark (``loadtest/bench_room_sync.py``) runs end to end and checks
what it reads: a tiny run of the real command, in its own process; it asserts the
calls each way makes and that every device's cursors end at the logs' ends (the
benchmark raises otherwise), never a speed (docs/BENCHMARKS.md has the figures)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.stack


def test_tiny_room_sync_run_reads_every_room_each_way() -> None:
    cmd = [sys.executable, "-m", "loadtest.bench_room_sync", "--rooms", "30", "--devices", "2",
           "--rounds", "2", "--news", "3", "--json"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    results = orjson.loads(proc.stdout)
    assert results["per_room"]["calls_per_sync"] == 30
    assert results["batched"]["calls_per_sync"] == 1
    for way in ("per_room", "batched"):
        r = results[way]
        assert r["wall_ms_p99"] >= r["wall_ms_p50"] > 0, r
    # CPU is read in clock ticks (10 ms): the four batched syncs may take less than one
    # tick of delivery's time, the 120 per-room calls take several.
    per_room = results["per_room"]
    assert per_room["server_cpu_ms_per_sync"] > 0 and per_room["cpu_ms_per_sync"]["delivery"] > 0
