"""What HAProxy costs per WebSocket frame it relays, and which settings change it.

Every frame Parley pushes to a socket passes through HAProxy (the load
balancer of ``make run`` and docker-compose), and in the room fan-out
benchmark HAProxy is the largest single share of the server CPU per
member-message (docs/BENCHMARKS.md, "Room fan-out"). This measures that share
alone: one aiohttp WebSocket server process pushes ``--rounds`` rounds of one
``--size``-byte frame to each of ``--sockets`` client sockets connected
through HAProxy; HAProxy's CPU time (``/proc``) over the transfer, per frame
delivered, for each configuration variant, the variants interleaved
``--repeat`` times (the minimum is the figure: the VM's speed varies).

    .venv/bin/python -m loadtest.bench_lb [--sockets 400 --rounds 200 --repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
import uvloop
from aiohttp import web

from loadtest.common import cpu_seconds
from scripts.stack import wait_port

# (global settings, defaults settings); the base is deploy/haproxy/haproxy.cfg's.
VARIANTS = {
    "http (Parley's)": ("", ""),
    "http, nbthread 1": ("nbthread 1", ""),
    "http, splice-auto": ("", "option splice-auto"),
    "tcp": ("", "mode tcp"),
    "tcp, nbthread 1": ("nbthread 1", "mode tcp"),
}

CONFIG = """global
    maxconn 4000
    {globals}
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    {defaults}
frontend public
    bind 127.0.0.1:{lb}
    default_backend pushers
backend pushers
    balance leastconn
    server s1 127.0.0.1:{port}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pusher(port: int, rounds: int, size: int) -> None:
    """The server: keeps its sockets; ``GET /go`` pushes the rounds to them all."""

    async def main() -> None:
        sockets: list[web.WebSocketResponse] = []

        async def ws(request: web.Request) -> web.WebSocketResponse:
            w = web.WebSocketResponse(compress=False)
            await w.prepare(request)
            sockets.append(w)
            async for _ in w:
                pass
            return w

        async def go(_request: web.Request) -> web.Response:
            sockets[:] = [w for w in sockets if not w.closed]
            frame = b"x" * size
            for _ in range(rounds):
                for w in sockets:
                    await w.send_bytes(frame)
                await asyncio.sleep(0.005)
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/ws", ws)
        app.router.add_get("/go", go)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    uvloop.run(main())


def _start_haproxy(work: Path, config: str) -> subprocess.Popen[bytes]:
    cfg = work / "haproxy.cfg"
    cfg.write_text(config)
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    with open(work / "haproxy.out", "wb") as log:
        return subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdout=log, stderr=log)


async def _one(port: int, globals_: str, defaults: str, opts: argparse.Namespace) -> float:
    """HAProxy's CPU µs per relayed frame with these settings."""
    lb = _free_port()
    work = Path(tempfile.mkdtemp(prefix="parley-lb-"))
    proc = _start_haproxy(
        work, CONFIG.format(globals=globals_, defaults=defaults, lb=lb, port=port)
    )
    try:
        wait_port("127.0.0.1", lb)
        expected = opts.sockets * opts.rounds
        got = 0
        done = asyncio.Event()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            url = f"http://127.0.0.1:{lb}/ws"
            sockets = [await session.ws_connect(url, compress=0) for _ in range(opts.sockets)]

            async def read(w: aiohttp.ClientWebSocketResponse) -> None:
                nonlocal got
                async for _ in w:
                    got += 1
                    if got >= expected:
                        done.set()

            readers = [asyncio.create_task(read(w)) for w in sockets]
            before = cpu_seconds(proc.pid)
            async with session.get(f"http://127.0.0.1:{port}/go") as resp:
                await resp.read()
            await asyncio.wait_for(done.wait(), 120)
            used = cpu_seconds(proc.pid) - before
            for w in sockets:
                await w.close()
            for task in readers:
                task.cancel()
        return used * 1e6 / expected
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)


async def bench(opts: argparse.Namespace) -> dict[str, list[float]]:
    port = _free_port()
    pusher = multiprocessing.Process(
        target=_pusher, args=(port, opts.rounds, opts.size), daemon=True
    )
    pusher.start()
    try:
        wait_port("127.0.0.1", port)
        out: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for _ in range(opts.repeat):
            for name, (globals_, defaults) in VARIANTS.items():
                out[name].append(await _one(port, globals_, defaults, opts))
        return out
    finally:
        pusher.terminate()
        pusher.join()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sockets", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args(argv)
    started = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())
    results = uvloop.run(bench(opts))
    print(f"Run {started}: {opts.sockets} sockets, {opts.rounds} frames of {opts.size} bytes "
          f"each, {opts.repeat} rounds of every variant, interleaved.\n")  # fmt: skip
    print("| HAProxy settings | CPU µs per relayed frame, minimum | every run |")
    print("|---|---|---|")
    for name, runs in results.items():
        print(f"| {name} | {min(runs):.1f} | {', '.join(f'{x:.1f}' for x in runs)} |")


if __name__ == "__main__":
    main()
