"""The load balancer benchmark runs end to end at a tiny size (loadtest/bench_lb.py)."""

from __future__ import annotations

import argparse
import shutil

import pytest

from loadtest import bench_lb


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="scripts/install.sh installs haproxy")
async def test_every_variant_relays_every_frame_and_is_measured() -> None:
    opts = argparse.Namespace(sockets=20, rounds=30, size=100, repeat=1)
    results = await bench_lb.bench(opts)
    assert set(results) == set(bench_lb.VARIANTS)
    # Each variant delivered all 600 frames (or bench() would have timed out) and
    # was measured once; HAProxy's CPU may round to 0 at this size.
    assert all(len(runs) == 1 and runs[0] >= 0 for runs in results.values())
