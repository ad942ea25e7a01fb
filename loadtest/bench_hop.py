"""What one hop between processes costs this machine's CPU, busy and idle.

At a low message rate every process on a message's path wakes up for it, and
what a message costs is mostly those wake-ups (docs/BENCHMARKS.md,
"Messaging"). This measures the pieces alone, in this process's CPU time:

- *sleep*: an ``asyncio.sleep(gap)`` that wakes the loop (the floor an idle
  process pays for each wake-up);
- *send*: one 100-byte write on a loopback TCP socket to a reader in another
  process, back to back (the reader is busy) and one every ``gap`` (the reader
  sleeps between them, so the write wakes it);
- *redis-py* and *raw*: a three-command pipeline round trip to a fresh
  redis-server with redis.asyncio (as the services use it, with and without a
  socket timeout) and with a bare asyncio protocol and hiredis, back to back
  and one every ``gap``; the ``gap`` rows include the sleep's wake-up.

    .venv/bin/python -m loadtest.bench_hop [--gap-ms 3] [--n 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import hiredis
import redis.asyncio as aioredis
import uvloop

from scripts.stack import Processes, StackConfig


def _reader(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        while s.recv(65536):
            pass


async def _cpu_per_call(fn: Callable[[], Awaitable[None]], n: int, gap: float) -> float:
    """This process's CPU µs per call of ``fn`` (then a sleep of ``gap``, when set)."""
    start = time.process_time()
    for _ in range(n):
        await fn()
        if gap:
            await asyncio.sleep(gap)
    return (time.process_time() - start) / n * 1e6


class _Raw(asyncio.Protocol):
    """A bare RESP client: hiredis parses, one future per reply."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: list[asyncio.Future[object]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            self.waiting.pop(0).set_result(reply)


def _pack(*args: str | int) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


async def _redis_rows(port: int, n: int, gap: float) -> dict[str, float]:
    rows: dict[str, float] = {}
    for label, kw in (("redis-py", {}), ("redis-py, socket timeout", {"socket_timeout": 5.0})):
        client = aioredis.Redis(port=port, **kw)  # type: ignore[arg-type]

        async def pipeline(r: aioredis.Redis = client) -> None:
            async with r.pipeline(transaction=False) as p:
                p.hincrby("a", "x", 1)
                p.exists("b")
                p.hmget("c", ["1", "2"])
                await p.execute()

        await pipeline()
        rows[f"{label}: pipeline, back to back"] = await _cpu_per_call(pipeline, n, 0)
        rows[f"{label}: pipeline, one every gap"] = await _cpu_per_call(pipeline, n // 2, gap)
        await client.aclose()
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(_Raw, "127.0.0.1", port)
    payload = _pack("HINCRBY", "a", "x", 1) + _pack("EXISTS", "b") + _pack("HMGET", "c", 1, 2)

    async def raw() -> None:
        futures = [loop.create_future() for _ in range(3)]
        proto.waiting += futures
        transport.write(payload)
        await asyncio.gather(*futures)

    rows["raw protocol: pipeline, back to back"] = await _cpu_per_call(raw, n, 0)
    rows["raw protocol: pipeline, one every gap"] = await _cpu_per_call(raw, n // 2, gap)
    transport.close()
    return rows


async def run(n: int, gap: float, redis_port: int) -> dict[str, float]:
    async def nothing() -> None:
        return None

    rows = {"sleep only (one wake-up)": await _cpu_per_call(nothing, n // 2, gap)}
    server = socket.create_server(("127.0.0.1", 0))
    peer = multiprocessing.Process(target=_reader, args=(server.getsockname()[1],))
    peer.start()
    conn, _ = server.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def send() -> None:
        conn.send(b"x" * 100)

    rows["loopback send, reader busy"] = await _cpu_per_call(send, n * 5, 0)
    rows["loopback send, reader idle (one every gap)"] = await _cpu_per_call(send, n // 2, gap)
    conn.close()
    server.close()
    peer.join()
    rows.update(await _redis_rows(redis_port, n, gap))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=3000, help="calls per back-to-back row")
    p.add_argument("--gap-ms", type=float, default=3.0, help="the pause of the idle rows")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = StackConfig.free_ports(Path(tmp))
        procs = Processes(cfg)
        procs.start("redis")
        try:
            rows = uvloop.run(run(args.n, args.gap_ms / 1000, cfg.redis_port))
        finally:
            procs.stop_all()
    print(f"CPU µs of this process per call (gap {args.gap_ms:g} ms):")
    for label, us in rows.items():
        print(f"  {label:52} {us:8.1f}")


if __name__ == "__main__":
    main()
