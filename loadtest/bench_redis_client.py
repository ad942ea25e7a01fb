"""What a Redis command costs the calling process: redis-py, FastRedis and the floor.

Delivery's hot path is Redis commands: several per room member, about thirty
per 1:1 message (docs/BENCHMARKS.md). This measures the CPU of the calling
process per command (``time.process_time``) for the shapes the services use,
against a fresh embedded redis-server:

- *pipeline of N*: ``N`` commands (half a Lua script by SHA, half ``HGETALL``),
  as a room's fan-out or a batch of acks sends them;
- *pipeline of 3*: a 1:1 message's shape;
- *one command*: a plain ``GET``;

each with ``redis.asyncio`` as the services used it (socket timeout, retry),
with :class:`services.common.fastredis.FastRedis` (what ``redis_client`` now
returns), and with a bare asyncio protocol and hiredis (no redis-py at all:
the floor). ``--coredis`` adds coredis when it is installed (it is not a
dependency).

    .venv/bin/python -m loadtest.bench_redis_client [--n 1000] [--reps 30]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis
import redis.asyncio as aioredis
import uvloop
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from loadtest.common import embedded_redis
from services.common.fastredis import FastRedis

_SCRIPT = (
    "redis.call('HSETNX', KEYS[1], ARGV[2], 'x') return redis.call('HINCRBY', KEYS[2], 'n', 1)"
)


class RawRedis(asyncio.Protocol):
    """The floor: commands packed by hiredis, replies parsed by one hiredis.Reader,
    one future per call (no redis-py at all). Also loadtest/bench_hop.py's."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: list[tuple[asyncio.Future[list[Any]], list[Any], int]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while self.waiting:
            fut, got, want = self.waiting[0]
            while len(got) < want:
                reply = self.reader.gets()
                if reply is False:
                    return
                got.append(reply)
            self.waiting.pop(0)
            fut.set_result(got)

    def call(self, payload: bytes, n: int) -> asyncio.Future[list[Any]]:
        """Write ``n`` packed commands; the future gets their replies."""
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.waiting.append((fut, [], n))
        self.transport.write(payload)
        return fut

    @classmethod
    async def connect(cls, port: int) -> RawRedis:
        _, proto = await asyncio.get_running_loop().create_connection(cls, "127.0.0.1", port)
        return proto


def pack(cmds: list[tuple[Any, ...]]) -> bytes:
    return b"".join(hiredis.pack_command(c) for c in cmds)  # type: ignore[attr-defined]


def _commands(n: int, sha: str) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for i in range(n):
        if i % 2 == 0:
            out.append(("EVALSHA", sha, 2, f"b:hot:{{u{i}.1}}", f"b:ctr:{{u{i}.1}}", 5, i))
        else:
            out.append(("HGETALL", f"b:pres:u{i}"))
    return out


async def _per_command(fn: Callable[[], Awaitable[object]], reps: int, n: int) -> float:
    await fn()
    start = time.process_time()
    for _ in range(reps):
        await fn()
    return (time.process_time() - start) / reps / n * 1e6


async def run(port: int, n: int, reps: int, with_coredis: bool) -> dict[str, dict[str, float]]:
    url = f"redis://127.0.0.1:{port}"
    kw: dict[str, Any] = {
        "socket_timeout": 5.0,
        "socket_connect_timeout": 5.0,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.02), retries=3),
    }
    clients: dict[str, aioredis.Redis] = {
        "redis-py": aioredis.Redis.from_url(url, **kw),
        "FastRedis": FastRedis.from_url(url, **kw),
    }
    sha = await clients["redis-py"].script_load(_SCRIPT)
    shapes = {f"pipeline of {n}": _commands(n, sha), "pipeline of 3": _commands(3, sha)}
    rows: dict[str, dict[str, float]] = {}
    for label, client in clients.items():
        row = rows.setdefault(label, {})
        for shape, cmds in shapes.items():

            async def pipeline(c: aioredis.Redis = client, cmds: list[Any] = cmds) -> object:
                async with c.pipeline(transaction=False) as pipe:
                    for cmd in cmds:
                        pipe.execute_command(*cmd)
                    return await pipe.execute()

            row[shape] = await _per_command(pipeline, reps, len(cmds))

        async def get(c: aioredis.Redis = client) -> object:
            return await c.get("b:k")

        row["one command"] = await _per_command(get, reps * 100, 1)
        await client.aclose()

    raw_redis = await RawRedis.connect(port)
    row = rows.setdefault("bare protocol + hiredis (floor)", {})
    for shape, cmds in [*shapes.items(), ("one command", [("GET", "b:k")])]:

        async def raw(cmds: list[Any] = cmds) -> object:
            return await raw_redis.call(pack(cmds), len(cmds))

        row[shape] = await _per_command(raw, reps * (100 if len(cmds) == 1 else 1), len(cmds))
    raw_redis.transport.close()

    if with_coredis:
        import coredis  # type: ignore[import-not-found]  # not a dependency

        cd = coredis.Redis(port=port)
        async with cd:
            row = rows.setdefault("coredis", {})
            for shape, cmds in shapes.items():

                async def cpipe(cmds: list[Any] = cmds) -> object:
                    async with cd.pipeline(transaction=False) as p:
                        for cmd in cmds:
                            if cmd[0] == "EVALSHA":
                                p.evalsha(cmd[1], keys=list(cmd[3:5]), args=list(cmd[5:]))
                            else:
                                p.hgetall(cmd[1])
                    return None

                row[shape] = await _per_command(cpipe, reps, len(cmds))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="commands in the long pipeline")
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--coredis", action="store_true", help="add coredis (when installed)")
    args = p.parse_args()
    with embedded_redis() as port:
        rows = uvloop.run(run(port, args.n, args.reps, args.coredis))
    shapes = list(next(iter(rows.values())))
    print("CPU µs of the calling process per command")
    print(f"| client | {' | '.join(shapes)} |")
    print(f"|---|{'---|' * len(shapes)}")
    for label, row in rows.items():
        cells = " | ".join(f"{row[s]:.2f}" if s in row else "-" for s in shapes)
        print(f"| {label} | {cells} |")


if __name__ == "__main__":
    main()
