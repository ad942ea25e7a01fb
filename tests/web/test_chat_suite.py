"""The browser client's own suite (web/chat), run by ``make test``.

``npm test`` in web/chat generates the frame types from the contract's JSON
Schema, runs the Vitest suite in Node (every file of client/vectors byte for
byte, interop with this repository's ``parley.crypto`` through a Python
subprocess, the behaviour tests) and then the same vector cases once inside
Debian's Chromium (test/browser/run.mjs). Both halves must report every case
passed; no case is skipped but the ones the suite names (web/chat/README.md).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.stack import ROOT

CHAT = ROOT / "web" / "chat"


@pytest.mark.skipif(
    not Path("/usr/bin/chromium").exists() or shutil.which("npm") is None,
    reason="needs Debian's chromium and node (scripts/install.sh installs them)",
)
@pytest.mark.timeout(360)  # the whole Vitest suite and Chromium: ~100 s, more under load
async def test_chat_vectors_pass_in_node_and_in_chromium() -> None:
    assert (ROOT / "web" / "node_modules" / "vitest").is_dir(), "make install runs npm ci in web/"
    env = {**os.environ, "PARLEY_PYTHON": sys.executable, "NO_COLOR": "1", "CI": "1"}
    run = await asyncio.to_thread(
        subprocess.run,
        ["npm", "test", "--silent"],
        cwd=CHAT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    # Vitest's summary, then the Chromium run's.
    files = re.search(r"Test Files\s+(\d+) passed \((\d+)\)", out)
    assert files and files.group(1) == files.group(2), out[-3000:]
    tests = re.search(r"Tests\s+(\d+) passed \((\d+)\)", out)
    assert tests and tests.group(1) == tests.group(2) and int(tests.group(1)) >= 120, out[-3000:]
    chromium = re.search(r"(\d+) passed, (\d+) failed, (\d+) skipped", out)
    assert chromium, out[-3000:]
    assert int(chromium.group(1)) >= 20 and chromium.group(2) == "0" and chromium.group(3) == "0"
