"""A private room of 1,000 members, written to first from the Python client and from
the web client (the sizes #14 supports; loadtest/bench_web_room.py times the same).

A device's first message to a private room gives its sender key to every other
member device over a new pairwise session: a bundle claimed per member, a PQXDH
handshake and a 1:1 frame each, then the message. Two things made that impossible at
1,000 members (docs/BENCHMARKS.md, "A private room of 1,000 from the browser"):

- the key directory allowed a claimer 60 claims, then one every 10 s: the Python
  client's first message failed with ``rate_limited`` (the 939 others would have
  taken 2.6 hours);
- the web client kept its outbox in one vault row, sealed and written whole for every
  one of the thousand key deliveries and their ``accepted``: the page's acks waited
  behind the writes and its first message failed after 49 s ("did not accept the
  message in time").

Here, on a system of its own (its own prefixes on the shared servers), 998 members
with published keys, then the Python client and the browser (Chromium, through
HAProxy) each write twice; every message must be accepted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from loadtest.bench_web_room import room_of
from tests.support.stack import Stack, start_system

pytestmark = pytest.mark.skipif(
    not Path("/usr/bin/chromium").exists() or shutil.which("node") is None,
    reason="needs Debian's chromium and node (scripts/install.sh installs them)",
)


@pytest.mark.timeout(300)  # ~1 min alone; the 998 sign-ups take longer on a busy machine
async def test_a_room_of_a_thousand_is_written_to_from_python_and_from_the_browser(
    stack: Stack, tmp_path: Path
) -> None:
    system = start_system(stack)
    try:
        # No one-time prekeys (the benchmark publishes 12): half the sign-up's requests,
        # and every claim takes the directory's low-stock path.
        out = await room_of(system, 1000, tmp_path, one_time=0)
    finally:
        system.procs.stop_all()
    web = out["web"]
    assert not web.get("errors"), web
    assert len(web["sends"]) == 2 and len(out["python_ms"]) == 2, out
    # The first message gave the key to every member device; the second gives it to none
    # (the page recorded who has it: a lost record would send it all again).
    first = {kind: n for kind, n, *_ in web["timeline"]}
    second = {kind: n for kind, n, *_ in web["timeline2"]}
    assert first.get("ws sent send") == 999, web["timeline"]
    assert "ws sent send" not in second, web["timeline2"]
    print(f"first and second message, ms: python {out['python_ms']}, web {web['sends']}")
