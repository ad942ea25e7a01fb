"""The contract benchmark runs its three implementations over the same v2 shapes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from loadtest import bench_contract as bc

ROOT = Path(__file__).resolve().parents[2]


def test_the_three_implementations_do_the_same_steps() -> None:
    kinds = {"msgspec": bc.steps_msgspec(), "pydantic": bc.steps_pydantic(),
             "dicts": bc.steps_dicts()}  # fmt: skip
    assert len({tuple(steps) for steps in kinds.values()}) == 1
    for steps in kinds.values():
        for step in steps.values():
            assert step() is not None
    # The send every implementation parses is a valid v2 frame with one copy.
    assert kinds["msgspec"]["parse send"]().copies[0].device == 1


def test_the_command_prints_a_row_per_step() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest.bench_contract", "--n", "50"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "parse send" in proc.stdout and "µs per message (sum)" in proc.stdout
