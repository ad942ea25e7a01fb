"""A private room of many members, written to first from the browser and from the
Python client (web/chat/README.md, "History at size"; docs/BENCHMARKS.md).

The room's first message from a device sends its sender key to every other member
device over a new pairwise session (PQXDH: a bundle claimed, a handshake, a 1:1
frame each), then the message itself. This starts the embedded stack and Parley
(the test profile of tests/support/stack.py), signs up ``--members`` accounts with
published keys (raw HTTP, as loadtest/bench_messaging.py, plus a signed prekey, a
last-resort ML-KEM prekey and 12 one-time prekeys of each kind), puts them in one
private room, and times:

- the Python client (``parley.Client``), a member: its first message (the
  distribution to every member device, then the message) and its second, each from
  the call to ``accepted``;
- the web client in Chromium (loadtest/web_room.mjs), a member: the same, from Enter
  to the line's ``accepted``, with the page's CPU profile of the first.

    .venv/bin/python -m loadtest.bench_web_room --members 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from parley import Client
from parley.store import KdfParams

from loadtest.bench_messaging import sign_up
from loadtest.common import call
from scripts.stack import ROOT
from tests.support.stack import System, start_stack, start_system

PASSWORD = "bench password 1234"
# One-time prekeys per member device, of each kind, as a device holds them (the client
# keeps 100; 12 keep each claim on the common path, above the directory's low mark of 10).
ONE_TIME = 12


async def browser(system: System, tag: str, room: str, invite: Any) -> dict[str, Any]:
    """Run loadtest/web_room.mjs; its RESULT."""
    env = {**os.environ, "LB": system.lb, "WEB_DIR": str(ROOT / "web"), "ME": f"webbench{tag}",
           "ROOM": room, "TAG": tag}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        "node", str(ROOT / "loadtest" / "web_room.mjs"), env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    result: dict[str, Any] = {}
    lines: list[str] = []
    while line := (await proc.stdout.readline()).decode():
        lines.append(line.rstrip())
        if line.startswith("PY "):
            await invite(f"webbench{tag}")
            proc.stdin.write(b"OK {}\n")
            await proc.stdin.drain()
        elif line.startswith("RESULT "):
            result = json.loads(line[7:])
    if await proc.wait() != 0 or not result:
        raise RuntimeError("\n".join(lines[-40:]))
    return result


async def room_of(
    system: System, n: int, data_dir: Path, one_time: int = ONE_TIME
) -> dict[str, Any]:
    """A private room of ``n`` members on ``system``: the Python client's and the web
    client's first two messages in it (milliseconds each, the page's profile). Each
    member publishes ``one_time`` one-time prekeys of each kind."""
    tag = secrets.token_hex(3)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as http:
        lb = system.lb
        t = time.perf_counter()
        accounts = await sign_up(http, lb, f"b{tag}", n - 2, prekeys=True, one_time=one_time)
        print(f"{n - 2} members signed up with keys in {time.perf_counter() - t:.0f} s")
        owner_token, rest = accounts[0].token, accounts[1:]
        name = f"big{tag}"
        room = {"name": name, "kind": "private"}
        rid = (await call(http, "POST", f"{lb}/rooms/v1/rooms", owner_token, room))["room_id"]
        rooms = f"{lb}/rooms/v1/rooms/{rid}"
        gate = asyncio.Semaphore(16)

        async def join(user: str, token: str | None) -> None:
            async with gate:
                await call(http, "POST", f"{rooms}/invitations", owner_token, {"user": user})
                if token is not None:
                    await call(http, "POST", f"{rooms}/invitation/accept", token)

        t = time.perf_counter()
        await asyncio.gather(*(join(a.user_id, a.token) for a in rest))
        print(f"room of {n - 2} made in {time.perf_counter() - t:.0f} s")

        # The Python client, a member: its first message, then a second.
        r = Client(lb, data_dir=data_dir / f"r{tag}", passphrase="bench passphrase",
                   kdf=KdfParams(n=2**10, r=8, p=1))  # fmt: skip
        await r.open()
        try:
            await r.signup(f"pyr{tag}", PASSWORD, f"pyr{tag}@example.test")
            await r.connect()
            assert r.user_id is not None
            await join(r.user_id, None)
            await r.rooms.accept(rid)
            python: list[float] = []
            for text in ("python first", "python second"):
                t = time.perf_counter()
                await r.rooms.send(rid, text, timeout=900)
                python.append((time.perf_counter() - t) * 1000)
        finally:
            await r.close()
        print(f"python: {python}")

        async def invite(username: str) -> None:
            user = await call(http, "GET", f"{lb}/auth/v1/users/{username}", owner_token)
            await join(user["user_id"], None)

        web = await browser(system, tag, name, invite)
        return {"members": n, "python_ms": python, "web": web}


async def bench(n: int, data_dir: Path) -> dict[str, Any]:
    stack = start_stack(data_dir)
    system = start_system(stack)
    try:
        return await room_of(system, n, data_dir)
    finally:
        system.procs.stop_all()
        if stack.procs is not None:
            stack.procs.stop_all()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--members", type=int, default=1000, help="members of the room, the two writers included"
    )
    opts = ap.parse_args()
    if opts.members < 3:
        ap.error("--members: at least 3 (the room's owner and the two writers)")
    with tempfile.TemporaryDirectory(prefix="parley-webroom-") as tmp:
        out = asyncio.run(bench(opts.members, Path(tmp)))
    web = out["web"]
    print(f"\nA private room of {out['members']:,} members: each writer's first message")
    print("(its sender key to every other member device first) and its second:")
    print("| writer | first message, ms | second, ms |")
    print("|---|---|---|")
    print(f"| Python client | {out['python_ms'][0]:,.0f} | {out['python_ms'][1]:,.0f} |")
    print(f"| web client (Chromium) | {web['sends'][0]:,} | {web['sends'][1]:,} |")
    for error in web.get("errors", []):
        print(f"web client: not accepted: {error}")
    print("\nWhat the page asked in its first message (count, first and last ms after Enter):")
    for kind, n, first, last in web.get("timeline", []):
        print(f"  {n:>6,}  {first:>7,} .. {last:>7,} ms  {kind}")
    print("\n... and in its second:")
    for kind, n, first, last in web.get("timeline2", []):
        print(f"  {n:>6,}  {first:>7,} .. {last:>7,} ms  {kind}")
    print(f"\nThe page's CPU in the web client's first message: {web['profile_ms']:,} ms sampled;")
    print("self time, top 15:")
    for name, ms in web["top"]:
        print(f"  {ms:>7,} ms  {name}")


if __name__ == "__main__":
    main()
