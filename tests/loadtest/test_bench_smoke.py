"""The messaging benchmark runs end to end and counts every message exactly once.

A tiny run (4 clients, 1 s per phase) of the real command, in its own process
as a user would start it. It asserts that the harness works, never a speed:
timing belongs in docs/BENCHMARKS.md, not in a test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from loadtest.common import PhaseResult, percentile

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.stack


def test_tiny_run_of_every_system_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "loadtest.bench_messaging", "--clients", "4", "--seconds", "1",
           "--warmup", "0.3", "--json", "--quiet", "--data-dir", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=110, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    results = orjson.loads(proc.stdout)

    assert set(results["systems"]) == {"parley", "relay", "socketio"}
    for name, system in results["systems"].items():
        assert system["disconnects"] == 0, name
        for phase in ("saturation", "paced"):
            r = system[phase]
            assert r["received"] > 0, (name, phase)
            assert r["lost"] == 0, (name, phase, r)
            assert r["duplicates"] == 0, (name, phase, r)
            assert r["errors"] == {}, (name, phase, r)
            assert r["accepted"] == r["sent"], (name, phase, r)
            assert r["received"] == r["accepted"], (name, phase, r)
            assert r["latency_ms"]["samples"] > 0
            assert r["server_cpu_us_per_msg"] > 0
    parley = results["systems"]["parley"]
    # The durable path ran: stored and (after the cumulative acks) delivered receipts.
    assert parley["saturation"]["stored"] == parley["saturation"]["accepted"]
    assert parley["saturation"]["acks"] > 0
    assert set(parley["saturation"]["cpu_s"]) == {
        "mongo", "kafka", "redis", "haproxy", "auth", "keys", "gateway1", "gateway2",
        "delivery", "loadgen",
    }  # fmt: skip
    assert set(results["systems"]["relay"]["paced"]["cpu_s"]) == {
        "relay1", "relay2", "redis", "loadgen",
    }  # fmt: skip
    assert set(results["systems"]["socketio"]["paced"]["cpu_s"]) == {
        "sio1", "sio2", "redis", "loadgen",
    }  # fmt: skip
    assert {"throughput_ratio", "p99_under_50ms", "zero_loss_zero_duplicates",
            "ratio_to_socketio", "paced_cpu_within_1_5x_socketio"} <= set(results["targets"])  # fmt: skip


def test_two_devices_per_account_every_copy_reaches_every_device_once(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "loadtest.bench_messaging", "--clients", "4", "--seconds", "1",
           "--warmup", "0.3", "--devices", "2", "--only", "parley", "--json", "--quiet",
           "--data-dir", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=110, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    parley = orjson.loads(proc.stdout)["systems"]["parley"]
    for phase in ("saturation", "paced"):
        r = parley[phase]
        assert r["errors"] == {} and r["lost"] == 0 and r["duplicates"] == 0, (phase, r)
        assert r["received"] == r["accepted"] > 0, (phase, r)
        # Each message: a copy for the recipient's second device and one for the
        # sender's own second device, each arriving once.
        assert r["copies_lost"] == 0 and r["copies_duplicates"] == 0, (phase, r)
        assert r["copies_received"] == 2 * r["accepted"], (phase, r)
        # stored per device: the recipient's two and the sender's other one (receipts
        # are at least once: a batch that delivery retried answers again).
        assert r["stored"] >= 3 * r["accepted"], (phase, r)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([], 50) is None


def test_rate_counts_only_the_measured_window() -> None:
    r = PhaseResult("x", seconds=2.0, received=500, window_received=300)
    assert r.rate == 150.0
    s = r.summary()
    assert s["delivered_per_s"] == 150.0
