"""The room fan-out benchmark runs end to end and counts every member-message once.

A tiny run (a room of 30, 1 s per phase) of the real command, in its own process as a
user would start it, for python-socketio, a public and a private Parley room, with the
members read by picows (the default) and by aiohttp. It asserts
that the harness works and counts what it says, never a speed (docs/BENCHMARKS.md has
the figures).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
MEMBERS = 30

pytestmark = pytest.mark.stack


@pytest.mark.parametrize(
    ("reader", "systems"),
    [("picows", ("socketio", "parley-public", "parley")), ("aiohttp", ("socketio", "parley"))],
)
def test_tiny_fan_out_run_of_every_system_loses_and_duplicates_nothing(
    reader: str, systems: tuple[str, ...]
) -> None:
    """With either of the members' readers (loadtest/ws.py)."""
    cmd = [sys.executable, "-m", "loadtest.bench_fanout", "--members", str(MEMBERS),
           "--seconds", "1", "--systems", ",".join(systems), "--reader", reader,
           "--json"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    results = orjson.loads(proc.stdout)
    assert results["reader"] == reader
    for system in systems:
        for phase in ("saturation", "paced"):
            r = results[system][phase]
            assert (r["lost"], r["duplicates"], r["not_accepted"]) == (0, 0, 0), (system, r)
            assert r["messages"] > 0 and r["member_messages_per_s"] > 0, (system, r)
            assert r["p99_ms"] is not None and r["p99_ms"] >= r["p50_ms"] > 0, (system, r)
            # The servers' CPU, and the load generator's kept apart from it.
            assert "loadgen" not in r["cpu_us_per_member_message"], (system, r)
            assert r["cpu_us_total"] > 0 and r["loadgen_cpu_us_per_member_message"] > 0
    assert set(results["parley"]["saturation"]["cpu_us_per_member_message"]) >= {
        "haproxy", "gateway1", "gateway2", "delivery", "redis", "kafka", "mongo", "rooms"
    }  # fmt: skip
    assert set(results["socketio"]["saturation"]["cpu_us_per_member_message"]) == {
        "sio1", "sio2", "redis"
    }  # fmt: skip
    # Every member socket was counted on a gateway (the room spread over both).
    assert sum(results["parley"]["gateways"].values()) == MEMBERS
