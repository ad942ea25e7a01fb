"""The soak (loadtest/soak, issue #10): its report arithmetic, and a short real run.

The short run is the real command for half a minute against ``make run``'s
stack, with one ``kill -9`` (a gateway), forced reconnects with resends and
30-second access tokens (so every user refreshes its token on an open
socket). It asserts that the harness works and that nothing was lost or
duplicated, never a speed: the hour-long figures are in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from loadtest.soak.options import KILL_ORDER, kill_times, parse_args
from loadtest.soak.report import CpuLedger, Ledger, summarize, table
from scripts.run import PROCESSES

ROOT = Path(__file__).resolve().parents[2]
S = 1_000_000_000  # ns


def key(sender: int, n: int) -> int:
    return sender << 32 | n


def test_report_counts_each_message_in_the_window_it_was_composed() -> None:
    led = Ledger()
    start = 10 * S
    # Window 0 (0-60 s): three messages; #3 accepted but never delivered (lost).
    for n, at in ((1, 1), (2, 30), (3, 59)):
        led.composed[key(0, n)] = start + at * S
    led.accepted[key(0, 1)] = start + 1 * S + 5_000_000
    led.accepted[key(0, 2)] = start + 30 * S + 5_000_000
    led.accepted[key(0, 3)] = start + 59 * S + 5_000_000
    led.deliver(key(0, 1), 1, "s01", start + 1 * S + 25_000_000, via_sync=False, final=False)
    led.deliver(key(0, 2), 2, "s02", start + 30 * S + 105_000_000, via_sync=True, final=False)
    # Window 1 (60-120 s): #4 delivered under two seqs and two server ids (a
    # duplicate) and pushed twice under its first seq (a repeat, allowed); #5 never
    # accepted, delivered before the run ended but after this window (its CPU goes
    # nowhere), and stored again under its server id (after a Redis loss: counted
    # apart, a client drops it).
    led.composed[key(1, 4)] = start + 70 * S
    led.accepted[key(1, 4)] = start + 70 * S + 2_000_000
    led.deliver(key(1, 4), 7, "s14", start + 70 * S + 1_000_000, via_sync=False, final=False)
    led.deliver(key(1, 4), 7, "s14", start + 71 * S, via_sync=False, final=False)
    led.deliver(key(1, 4), 9, "other", start + 72 * S, via_sync=False, final=True)
    led.composed[key(1, 5)] = start + 119 * S
    led.deliver(key(1, 5), 10, "s15", start + 125 * S, via_sync=False, final=True)
    led.deliver(key(1, 5), 12, "s15", start + 126 * S, via_sync=False, final=True)

    cpu = CpuLedger(2)
    cpu.by_window = [{"mongo": 0.2, "loadgen": 1.0}, {"mongo": 0.1}]
    cpu.machine = [60.0, 30.0]
    cpu.interrupts = [6.0, 0.0]
    kills = [{"process": "gateway1", "at_s": 61.0}, {"process": "mongo", "at_s": 5.0}]
    idle = {"mongo": 0.001, "loadgen": 0.5}
    report = summarize(led, cpu, start_ns=start, window_s=60, windows=2, kills=kills, idle=idle)

    w0, w1 = report["windows"]
    assert (w0["sent"], w0["accepted"], w0["delivered"], w0["lost"], w0["duplicates"]) == (
        3, 3, 2, 1, 0,
    )  # fmt: skip
    assert (w1["sent"], w1["accepted"], w1["delivered"], w1["lost"], w1["duplicates"]) == (
        2, 1, 2, 0, 1,
    )  # fmt: skip
    # accept -> delivery: 20 ms and 100 ms; a delivery seen before `accepted` counts 0.
    assert w0["accept_to_delivery_ms"] == {
        "samples": 2, "p50": 20.0, "p99": 100.0, "max": 100.0,
        "p99_calm": 20.0,  # #2 was composed within a minute after the kill of mongo
    }  # fmt: skip
    assert w1["accept_to_delivery_ms"]["p50"] == 0.0
    assert w1["accept_to_delivery_ms"]["p99_calm"] is None  # composed 9 s after a kill
    assert report["per_minute_accept_to_delivery_ms"] == [
        {"minute": 0, "samples": 2, "p50": 20.0, "p99": 100.0},
        {"minute": 1, "samples": 1, "p50": 0.0, "p99": 0.0},
    ]
    assert w0["send_to_delivery_ms"] == {"p50": 25.0, "p99": 105.0}
    # CPU per message delivered *in* the window (2 in window 0, 1 in window 1).
    assert w0["delivered_in_window"] == 2 and w1["delivered_in_window"] == 1
    assert w0["cpu_us_per_msg"] == {"loadgen": 500_000.0, "mongo": 100_000.0}
    assert w0["server_cpu_us_per_msg"] == 100_000.0  # the load generator is not a server
    assert w1["server_cpu_us_per_msg"] == 100_000.0
    # Above what the idle stack burns (mongo 0.001 cores = 0.06 s a window).
    assert w0["server_cpu_us_per_msg_above_idle"] == 70_000.0
    assert w1["server_cpu_us_per_msg_above_idle"] == 40_000.0
    assert report["idle_cores"] == idle
    assert w0["machine_cores_busy"] == 1.0
    assert w0["other_cores"] == round((60 - 6 - 1.2) / 60, 2)
    assert w0["kills"] == ["mongo"] and w1["kills"] == ["gateway1"]

    t = report["totals"]
    assert (t["sent"], t["accepted"], t["delivered"], t["lost"], t["duplicates"]) == (5, 4, 4, 1, 1)
    assert t["restored_copies"] == 1  # #5 again under its server id: not a duplicate
    assert t["never_accepted"] == 1 and t["delivered_never_accepted"] == 1
    assert t["repeated_pushes"] == 1
    assert t["delivered_by_sync"] == 1 and t["delivered_by_final_sync"] == 1
    assert report["lost_keys"] == [{"sender": 0, "n": 3}]
    assert report["duplicate_keys"] == [{"sender": 1, "n": 4, "seqs": [7, 9]}]
    text = table({**report, "kills": kills})
    assert "**lost 1**" in text and "**duplicates 1**" in text
    assert "Idle (every socket open, nothing sent), cores: mongo 0.001" in text


def test_kills_are_spread_over_the_run_and_name_real_processes() -> None:
    times = kill_times(KILL_ORDER, 3600)
    assert [name for _, name in times] == list(KILL_ORDER)
    assert times[0][0] > 0 and times[-1][0] < 3600
    gaps = {round(b[0] - a[0], 6) for a, b in itertools.pairwise(times)}
    assert len(gaps) == 1
    assert set(KILL_ORDER) == {name for name, _ in PROCESSES}
    assert parse_args(["--kills", "none"]).kills == ()
    assert parse_args(["--kills", "mongo,haproxy"]).kills == ("mongo", "haproxy")
    with pytest.raises(SystemExit):
        parse_args(["--kills", "nosuch"])


@pytest.mark.stack
@pytest.mark.timeout(90)
def test_short_soak_with_a_kill_resends_and_token_refresh_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    cmd = [sys.executable, "-m", "loadtest.soak", "--minutes", "0.5", "--rate", "20",
           "--clients", "8", "--window-minutes", "0.25", "--kills", "gateway1",
           "--resend-every", "5", "--resend-count", "5", "--cheap-kdf", "--token-ttl", "30",
           "--drain-seconds", "20", "--idle-seconds", "3", "--results", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=85, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    report = orjson.loads(out.read_bytes())
    t = report["totals"]
    assert t["sent"] > 0
    assert t["lost"] == 0 and t["duplicates"] == 0, report.get("forensics")
    assert t["sent"] == t["accepted"] == t["delivered"], t
    assert t["resent_accepted"] > 0  # same ids sent again after forced reconnects
    assert t["token_refreshes"] > 0
    assert "error:token_expired" not in report["events"]  # every socket was re-authenticated
    # The idle baseline was measured for every process (an idle gateway can use
    # less than one clock tick in a short baseline: 0 is a valid reading).
    assert {"gateway1", "delivery", "mongo", "kafka"} <= set(report["idle_cores"])
    assert all(v >= 0 for v in report["idle_cores"].values())
    assert sum(report["idle_cores"].values()) > 0
    [kill] = report["kills"]
    assert kill["process"] == "gateway1" and kill["new_pid"] not in (0, kill["pid"])
    assert kill["ready_s"] is not None
    assert len(report["windows"]) == 2
    for w in report["windows"]:
        assert w["delivered"] == w["sent"] > 0
        assert w["accept_to_delivery_ms"]["p99"] is not None
        assert set(w["cpu_us_per_msg"]) == {name for name, _ in PROCESSES} | {"loadgen"}
    assert "| 0-0.25 |" in proc.stdout.decode()
