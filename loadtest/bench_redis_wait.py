"""What waiting for a Redis replica costs a hot inbox write (docs/delivery.md,
"Redis failover"; ``PARLEY_REDIS_WAIT_REPLICAS``).

A primary redis-server and its replica on this machine; delivery's write of a
batch's items (``HotInbox.put``: the index entries, one script per inbox) one
batch after another, three ways:

- *no wait*: the pipeline over FastRedis's shared connection (the default);
- *redis-py, no wait*: the same pipeline over a pooled redis-py connection (what a
  waiting write uses, since ``WAIT`` blocks its connection), without the wait:
  the client's share of the cost;
- *WAIT 1*: the pipeline ending with ``WAIT 1 500`` (the setting's path).

For each: batches per second, wall time per batch (p50, p99) and the calling
process's CPU per batch, for batches of 1 item (a 1:1 message) and of 100 items
to 100 inboxes (a busy batch).

    .venv/bin/python -m loadtest.bench_redis_wait [--batches 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import uvloop
from redis.exceptions import RedisError

from scripts.stack import _free_ports, redis_command
from services.common.fastredis import FastRedis
from services.common.inbox import counter_key
from services.delivery.hot import HotInbox, Replicas


def start(
    tmp: Path, name: str, port: int, replica_of: int | None = None
) -> subprocess.Popen[bytes]:
    (tmp / name).mkdir()
    return subprocess.Popen(redis_command("127.0.0.1", port, tmp / name, replica_of))


async def linked(replica: aioredis.Redis) -> bool:
    """Whether ``replica`` has finished its sync with its primary (also
    tests/messaging/test_redis_failover.py's)."""
    with contextlib.suppress(RedisError, OSError):  # not up yet
        info = await replica.info("replication")
        return info.get("master_link_status") in (b"up", "up")
    return False


async def until_linked(primary: aioredis.Redis, replica: aioredis.Redis) -> None:
    """Until the replica is synced and acknowledges writes: a replica just synced
    confirms its first ``WAIT`` only with its periodic ack (each second)."""
    for _ in range(400):
        if await linked(replica):
            # A write, then the wait, on one connection (a wait covers its own writes).
            async with aioredis.Redis.pipeline(primary, transaction=False) as pipe:
                pipe.set("bench:linked", 1)
                pipe.wait(1, 100)
                if (await pipe.execute())[1] == 1:
                    return
        await asyncio.sleep(0.025)
    raise RuntimeError("the replica never linked")


INBOXES = 1000
_seqs = itertools.count(1)


def batch(inboxes: list[str], size: int) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for inbox in random.sample(inboxes, size):
        doc = {"inbox": inbox, "seq": next(_seqs), "from": "s", "client_id": uuid.uuid4().hex,
               "server_id": uuid.uuid4().hex, "kind": "message", "body": "x" * 200}  # fmt: skip
        out.append((f"{inbox}|s|{doc['client_id']}", doc))
    return out


async def run(hot: HotInbox, batches: int, size: int) -> dict[str, float]:
    # Inboxes whose counters are past every number written, as delivery's are (their
    # numbers were reserved from them): the write has nothing to raise.
    inboxes = [f"{uuid.uuid4().hex[:12]}.1" for _ in range(INBOXES)]
    async with hot.redis.pipeline(transaction=False) as pipe:
        for inbox in inboxes:
            pipe.hset(counter_key(hot.prefix, inbox), "n", 10**12)
        await pipe.execute()
    walls = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    for _ in range(batches):
        docs = batch(inboxes, size)
        start_ = time.perf_counter()
        await hot.put(docs, time.time())
        walls.append(time.perf_counter() - start_)
    cpu, took = time.process_time() - cpu0, time.perf_counter() - t0
    walls.sort()
    return {
        "per_s": batches / took,
        "p50_us": statistics.median(walls) * 1e6,
        "p99_us": walls[int(len(walls) * 0.99)] * 1e6,
        "cpu_us": cpu / batches * 1e6,
    }


class RedisPyPipe(Replicas):
    """The waiting write's pipeline (redis-py's, pooled) without the wait."""

    def due(self) -> bool:
        return False

    def pipeline(self, redis: Any, wait: bool) -> Any:
        return super().pipeline(redis, True)


async def measure(batches: int) -> dict[tuple[str, int], dict[str, float]]:
    """Each way's figures for batches of 1 and of 100 items: {(way, items): row}."""
    rows: dict[tuple[str, int], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        p_port, r_port = _free_ports(2)
        procs = [start(tmp, "primary", p_port)]
        procs.append(start(tmp, "replica", r_port, replica_of=p_port))
        client = FastRedis.from_url(f"redis://127.0.0.1:{p_port}/0")
        replica = FastRedis.from_url(f"redis://127.0.0.1:{r_port}/0")
        try:
            await until_linked(client, replica)
            short: list[int] = []  # items a wait did not get confirmed (none, or it paused)
            ways = {
                "no wait (FastRedis)": Replicas(),
                "redis-py, no wait": RedisPyPipe(),
                "WAIT 1": Replicas(wanted=1, timeout_ms=500, on_short=short.append),
            }
            for size, n in ((1, batches), (100, max(batches // 10, 5))):
                for name, replicas in ways.items():
                    hot = HotInbox(client, f"b{uuid.uuid4().hex[:6]}", 3600, replicas)
                    await run(hot, 5, size)  # warm: scripts loaded, connections made
                    rows[name, size] = await run(hot, n, size)
                    rows[name, size]["unconfirmed"] = sum(short)
        finally:
            await client.aclose()
            await replica.aclose()
            for proc in procs:
                proc.terminate()
                proc.wait()
    return rows


async def main(batches: int) -> None:
    rows = await measure(batches)
    print(f"{batches} batches each (of 100 items: a tenth); a primary and its replica")
    print(f"{'way':22} {'items':>5} {'batches/s':>10} {'p50 µs':>8} {'p99 µs':>8} "
          f"{'client CPU µs':>14}")  # fmt: skip
    for (name, size), r in rows.items():
        print(f"{name:22} {size:>5} {r['per_s']:>10.0f} {r['p50_us']:>8.0f} "
              f"{r['p99_us']:>8.0f} {r['cpu_us']:>14.0f}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=3000)
    uvloop.run(main(parser.parse_args().batches))
