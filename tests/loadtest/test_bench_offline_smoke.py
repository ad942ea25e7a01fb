"""The offline-recipient benchmark runs end to end through MongoDB and counts every
message exactly once.

A tiny run (2 pairs x 30 messages, the persist delay at 1 s) of the real command,
in its own process as a user would start it. It asserts that the harness works
and that the slow path really ran (every item was in MongoDB before the
recipients synced, and gone from it after their acks), never a speed: timing
belongs in docs/BENCHMARKS.md, not in a test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.stack


def test_tiny_offline_run_goes_through_mongodb_and_loses_nothing(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "loadtest.bench_offline", "--pairs", "2", "--per-pair", "30",
           "--persist-after-s", "1", "--timeout", "40", "--json", "--quiet",
           "--data-dir", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=110, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    r = orjson.loads(proc.stdout)
    store, persist, sync, checks = (r[k] for k in ("store", "persist", "sync", "checks"))

    # Stored: every message accepted and stored while its recipient was offline.
    assert store["errors"] == {}, store
    assert store["sent"] == store["accepted"] == store["stored"] == 60, store
    assert r["server_env"] == {"PARLEY_HOT_PERSIST_AFTER_S": "1.0"}
    # The slow path ran: all 60 items were in MongoDB, none left in Redis, before the
    # first recipient connected.
    assert persist["inbox_documents"] == 60, persist
    assert persist["hot_index_left"] == persist["hot_items_left"] == 0, persist
    assert persist["moved_during_store"] + persist["moved_after_store"] == 60, persist
    # Synced page by page, each page acknowledged, and MongoDB emptied by the acks.
    assert sync["synced"] == 60 and sync["errors"] == {} and sync["sync_errors"] == 0, sync
    assert sync["pages"] >= 2 and sync["acks"] >= 2, sync
    assert sync["page_ms"]["samples"] == sync["pages"], sync
    assert sync["inbox_documents_after_acks"] == 0, sync
    assert sync["server_cpu_us_per_msg"] is not None
    # Exactly once, in send order.
    assert checks["expected"] == 60, checks
    assert checks["lost"] == 0 and checks["duplicates"] == 0, checks
    assert checks["out_of_order"] == 0 and checks["seq_out_of_order"] == 0, checks
    assert checks["unaccepted_received"] == 0 and checks["foreign"] == 0, checks
    assert checks["disconnects"] == 0, checks
    assert r["ok"] is True
    assert set(store["cpu_s"]) == {
        "mongo", "kafka", "redis", "haproxy", "auth", "keys", "gateway1", "gateway2",
        "delivery", "loadgen",
    }  # fmt: skip
