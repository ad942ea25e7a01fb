"""``make run``'s wrapper (scripts/run.py) with its terminal or pipe gone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from scripts.stack import ROOT

# The banner written to a pipe whose reader has gone (``make run | head``): it raised
# BrokenPipeError out of the wrapper, and supervisord, in its own process group, ran on
# with every process and nobody to stop it (audit, 2026-12-07).
_BANNER_TO_A_CLOSED_PIPE = """
import os, sys
from pathlib import Path
from scripts.run import banner
from scripts.stack import StackConfig

read, write = os.pipe()
os.close(read)
sys.stdout = os.fdopen(write, "w")
banner(StackConfig.free_ports(Path(sys.argv[1])), Path(sys.argv[1]) / "supervisord.conf")
sys.stderr.write("banner done\\n")
"""


def test_the_banner_to_a_closed_pipe_does_not_end_the_wrapper(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _BANNER_TO_A_CLOSED_PIPE, str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert "banner done" in proc.stderr, proc.stderr  # it returned: nothing raised


def test_a_bad_start_timeout_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """``PARLEY_START_TIMEOUT=abc`` raised after supervisord had started (and it ran on):
    now before, with nothing to leave behind."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env.update(PARLEY_START_TIMEOUT="abc", PARLEY_DATA_DIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.run"], cwd=ROOT, capture_output=True, text=True,
        timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "could not convert string to float" in proc.stderr
    assert not _running_under(tmp_path)


def _running_under(data_dir: Path) -> list[int]:
    """Processes whose command line names ``data_dir`` (supervisord's -c, its programs)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if str(data_dir).encode() in cmdline:
                found.append(int(proc.name))
    return found
