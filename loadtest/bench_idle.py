"""What an idle connection costs: gateway memory per authenticated WebSocket.

``python -m loadtest.bench_idle [--sockets 10000] [--systems parley,relay,socketio] [--json]``

For each system, one server process holds ``--sockets`` idle WebSockets opened
by this process (straight to the process, not through HAProxy, so that only its
memory is counted):

- **parley**: one gateway process (``gateway1``) with the services it needs
  (auth, keys, delivery, on the embedded MongoDB, Kafka and Redis). Every socket
  is a different user, signed up through the auth service (argon2 at its cheapest
  for the sign-ups only: the hash is not what is measured), and authenticated as
  a client does (``auth`` with an access token, then ``ready``);
- **relay**: the raw aiohttp + Redis relay of loadtest/relay_baseline.py (a
  socket "authenticates" with its user id);
- **socketio**: one python-socketio 5.x process (loadtest/socketio_peer.py,
  AsyncRedisManager), each socket an Engine.IO v4 WebSocket that has joined the
  namespace (and so the room).

Figures: the server's resident memory (``VmRSS``) before the sockets and once
every one is ready and the process has been left alone for ``--settle`` seconds;
the difference per socket; and the server's CPU over ``--idle`` seconds of
holding them (heartbeats, presence refreshes). docs/BENCHMARKS.md ("Idle
connections") has the figures and the command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import orjson

from loadtest.common import cpu_seconds
from loadtest.relay_baseline import RelayCluster, start_relays
from loadtest.socketio_peer import start_peers
from scripts.stack import Processes, StackConfig

PARLEY = ("mongo", "kafka", "redis", "auth", "keys", "delivery", "gateway1")


@dataclass(frozen=True)
class Result:
    system: str
    sockets: int
    rss_before_mb: float
    rss_after_mb: float
    per_socket_kib: float
    idle_cpu_pct: float
    connect_s: float


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Sockets:
    """Idle client sockets; each has a reader that answers what keeps it alive."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.readers: list[asyncio.Task[None]] = []
        self.closed = 0

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, engineio: bool) -> None:
        async for msg in ws:  # aiohttp answers the server's pings while it reads
            if engineio and msg.type == aiohttp.WSMsgType.TEXT and msg.data == "2":
                await ws.send_str("3")  # Engine.IO's application-level ping
        self.closed += 1

    async def open_parley(self, url: str, token: str) -> None:
        ws = await self.session.ws_connect(url, autoping=True, max_msg_size=0)
        await ws.send_str(orjson.dumps({"op": "auth", "token": token}).decode())
        ready = orjson.loads((await ws.receive(timeout=60)).data)
        if ready.get("op") != "ready":
            raise RuntimeError(f"not ready: {ready}")
        self._keep(ws, engineio=False)

    async def open_relay(self, url: str, user: str) -> None:
        ws = await self.session.ws_connect(url, autoping=True)
        await ws.send_str(orjson.dumps({"token": user}).decode())
        ready = orjson.loads((await ws.receive(timeout=60)).data)
        if ready.get("op") != "ready":
            raise RuntimeError(f"not ready: {ready}")
        self._keep(ws, engineio=False)

    async def open_socketio(self, url: str) -> None:
        ws = await self.session.ws_connect(url, autoping=True)
        opened = (await ws.receive(timeout=60)).data
        if not str(opened).startswith("0"):
            raise RuntimeError(f"no Engine.IO open packet: {opened!r}")
        await ws.send_str("40")  # join the default namespace
        joined = (await ws.receive(timeout=60)).data
        if not str(joined).startswith("40"):
            raise RuntimeError(f"namespace not joined: {joined!r}")
        self._keep(ws, engineio=True)

    def _keep(self, ws: aiohttp.ClientWebSocketResponse, engineio: bool) -> None:
        self.sockets.append(ws)
        self.readers.append(asyncio.create_task(self._read(ws, engineio)))

    async def close(self) -> None:
        for ws in self.sockets:
            with contextlib.suppress(Exception):
                await ws.close()
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)


async def in_parallel(n: int, limit: int, one: object) -> None:
    sem = asyncio.Semaphore(limit)

    async def run(i: int) -> None:
        async with sem:
            await one(i)  # type: ignore[operator]

    await asyncio.gather(*(run(i) for i in range(n)))


async def hold(system: str, pid: int, n: int, opener: object, settle: float, idle: float) -> Result:
    """Measure ``pid`` before and after ``n`` sockets opened by ``opener(i)``."""
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        socks = Sockets(session)
        await asyncio.sleep(settle)  # a quiet process: what it holds without sockets
        before = rss_bytes(pid)
        start = time.perf_counter()
        await in_parallel(n, 64, lambda i: opener(socks, i))  # type: ignore[operator]
        connect_s = time.perf_counter() - start
        await asyncio.sleep(settle)
        after = rss_bytes(pid)
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        await asyncio.sleep(idle)
        cpu = (cpu_seconds(pid) - cpu0) / (time.perf_counter() - t0)
        if socks.closed:
            raise RuntimeError(f"{system}: {socks.closed} sockets closed while idle")
        await socks.close()
    return Result(
        system, n, round(before / 2**20, 1), round(after / 2**20, 1),
        round((after - before) / n / 1024, 2), round(100 * cpu, 2), round(connect_s, 1),
    )  # fmt: skip


async def sign_up(auth_url: str, n: int, prefix: str) -> list[str]:
    """``n`` users, straight to the auth service; their access tokens."""
    tokens: list[str] = [""] * n
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(i: int) -> None:
            name = f"{prefix}u{i}"
            body = {"username": name, "email": f"{name}@example.com",
                    "password": "idle benchmark password", "device_id": 1}  # fmt: skip
            async with session.post(f"{auth_url}/auth/v1/signup", json=body) as resp:
                data = await resp.json()
                if resp.status != 201:
                    raise RuntimeError(f"signup failed ({resp.status}): {data}")
            tokens[i] = str(data["access_token"])

        await in_parallel(n, 16, one)
    return tokens


async def run_parley(data_dir: Path, n: int, settle: float, idle: float) -> Result:
    prefix = f"idle{secrets.token_hex(3)}"
    cfg = StackConfig.free_ports(data_dir / "parley").with_env(
        PARLEY_DB_PREFIX=f"{prefix}_", PARLEY_REDIS_PREFIX=prefix,
        PARLEY_TOPIC_PREFIX=f"{prefix}.", PARLEY_LIMIT_SIGNUP_IP=f"{2 * n + 10}/3600",
        PARLEY_ARGON2_TIME_COST="1", PARLEY_ARGON2_MEMORY_KIB="1024",
        PARLEY_ARGON2_PARALLELISM="1",
        # Tokens outlive the run (the default 15 minutes would end the sockets).
        PARLEY_ACCESS_TOKEN_TTL_S="7200",
        # Every socket comes from 127.0.0.1 (the per-address cap guards a real edge).
        PARLEY_WS_MAX_SOCKETS_PER_ADDRESS=str(n + 10),
    )  # fmt: skip
    procs = Processes(cfg)
    try:
        for name in PARLEY:
            procs.start(name)
        print(f"parley: signing {n} users up", file=sys.stderr, flush=True)
        tokens = await sign_up(cfg.url("auth"), n, prefix)
        url = cfg.url("gateway1").replace("http://", "ws://") + "/ws"
        pid = procs.procs["gateway1"].pid
        print(f"parley: {n} sockets to gateway1 (pid {pid})", file=sys.stderr, flush=True)
        return await hold(
            "parley", pid, n,
            lambda s, i: s.open_parley(url, tokens[i]), settle, idle,
        )  # fmt: skip
    finally:
        procs.stop_all()


async def run_peer(system: str, data_dir: Path, n: int, settle: float, idle: float) -> Result:
    cfg = StackConfig.free_ports(data_dir / system)
    procs = Processes(cfg)
    cluster: RelayCluster | None = None
    try:
        procs.start("redis")
        if system == "relay":
            cluster = start_relays(data_dir / system, cfg.url("redis"), count=1)
            url = cluster.urls[0]

            def opener(s: Sockets, i: int) -> object:
                return s.open_relay(url, f"user{i}")
        else:
            port = StackConfig.free_ports(data_dir / system).gateway1_port
            cluster = start_peers(data_dir / system, cfg.url("redis"), [port], "idle")
            url = cluster.urls[0]

            def opener(s: Sockets, i: int) -> object:
                return s.open_socketio(url)

        [pid] = cluster.pids().values()
        print(f"{system}: {n} sockets (pid {pid})", file=sys.stderr, flush=True)
        return await hold(system, pid, n, opener, settle, idle)
    finally:
        if cluster is not None:
            cluster.stop()
        procs.stop_all()


def table(results: list[Result]) -> str:
    lines = [
        "| system | sockets | server RSS before | with the sockets | per socket | idle CPU |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.system} | {r.sockets:,} | {r.rss_before_mb} MB | {r.rss_after_mb} MB "
            f"| **{r.per_socket_kib} KiB** | {r.idle_cpu_pct} % of a core |"
        )
    return "\n".join(lines)


async def main_async(opts: argparse.Namespace) -> list[Result]:
    data_dir = Path(tempfile.mkdtemp(prefix="parley-idle-"))
    results = []
    try:
        for system in opts.systems.split(","):
            if system == "parley":
                results.append(await run_parley(data_dir, opts.sockets, opts.settle, opts.idle))
            else:
                results.append(
                    await run_peer(system, data_dir, opts.sockets, opts.settle, opts.idle)
                )
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--systems", default="parley,relay,socketio")
    parser.add_argument("--settle", type=float, default=5.0, help="quiet seconds before measuring")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle CPU measured")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args(argv)
    results = asyncio.run(main_async(opts))
    if opts.json:
        print(orjson.dumps([asdict(r) for r in results]).decode())
    else:
        print(f"{datetime.now(UTC):%Y-%m-%d %H:%MZ}, {opts.sockets} sockets per system")
        print(table(results))


if __name__ == "__main__":
    main()
