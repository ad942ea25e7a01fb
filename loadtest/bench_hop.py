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
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
import uvloop

from loadtest.bench_redis_client import RawRedis, pack
from loadtest.common import embedded_redis


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
    raw_redis = await RawRedis.connect(port)
    payload = pack([("HINCRBY", "a", "x", 1), ("EXISTS", "b"), ("HMGET", "c", 1, 2)])

    async def raw() -> None:
        await raw_redis.call(payload, 3)

    rows["raw protocol: pipeline, back to back"] = await _cpu_per_call(raw, n, 0)
    rows["raw protocol: pipeline, one every gap"] = await _cpu_per_call(raw, n // 2, gap)
    raw_redis.transport.close()
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
    with embedded_redis() as port:
        rows = uvloop.run(run(args.n, args.gap_ms / 1000, port))
    print(f"CPU µs of this process per call (gap {args.gap_ms:g} ms):")
    for label, us in rows.items():
        print(f"  {label:52} {us:8.1f}")


if __name__ == "__main__":
    main()
