"""The baseline Parley is measured against: a raw WebSocket relay over Redis pub/sub.

No durability, no Kafka, no MongoDB, no token check: a client authenticates
with its user id, a ``send`` is PUBLISHed on Redis to the channel of the
process hosting the recipient (found once in Redis, then cached), and that
process pushes it. The sender gets ``accepted`` once Redis has taken the
PUBLISH. Frames have the same fields as Parley's (``message`` carries seq,
server_id, kind, from, conversation, body, commitment, sent_at), so that the
bytes on the wire are the same size.

What a competent minimal relay would do and no more: PUBLISHes are coalesced
into one pipeline per event-loop turn, and the receiving process forwards the
frame's bytes without decoding them again.

Run one process: ``python -m loadtest.relay_baseline --id r1 --port 9001
--redis redis://127.0.0.1:6379/0``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import redis.asyncio as aioredis
from aiohttp import WSMsgType, web

from loadtest.common import tune_gc
from scripts.stack import ROOT, StackConfig, wait_port

PRESENCE = "relay:presence:{}"
CHANNEL = "relay:ch:{}"
RELAY_ID = web.AppKey("relay_id", str)


class Relay:
    def __init__(self, relay_id: str, redis_url: str) -> None:
        self.id = relay_id
        self.redis = aioredis.from_url(redis_url)
        self.channel = CHANNEL.format(relay_id).encode()
        self.local: dict[str, web.WebSocketResponse] = {}
        self.where: dict[str, bytes] = {}
        self.outbox: list[tuple[bytes, bytes, web.WebSocketResponse, bytes]] = []
        self.wake = asyncio.Event()
        self.seq = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, _: web.Application) -> None:
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._flush())]

    async def stop(self, _: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.redis.aclose()

    # Redis side -------------------------------------------------------------------
    async def _listen(self) -> None:
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.channel)
        async for msg in pubsub.listen():
            if msg["type"] != "message":
                continue
            user, _, frame = msg["data"].partition(b"\n")
            ws = self.local.get(user.decode())
            if ws is not None and not ws.closed:
                with contextlib.suppress(ConnectionResetError, RuntimeError):
                    await ws.send_frame(frame, WSMsgType.TEXT)

    async def _flush(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            batch, self.outbox = self.outbox, []
            if not batch:
                continue
            async with self.redis.pipeline(transaction=False) as pipe:
                for channel, data, _, _ in batch:
                    pipe.publish(channel, data)
                await pipe.execute()
            for _, _, ws, accepted in batch:
                if not ws.closed:
                    with contextlib.suppress(ConnectionResetError, RuntimeError):
                        await ws.send_frame(accepted, WSMsgType.TEXT)

    async def _route(self, user: str) -> bytes | None:
        channel = self.where.get(user)
        if channel is None:
            host = await self.redis.get(PRESENCE.format(user))
            if host is None:
                return None
            channel = self.where[user] = CHANNEL.format(host.decode()).encode()
        return channel

    # WebSocket side -----------------------------------------------------------------
    async def websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=256 * 1024, compress=False, heartbeat=30)
        await ws.prepare(request)
        first = await ws.receive(timeout=10)
        try:
            user = str(orjson.loads(first.data)["token"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            await ws.close(code=4001, message=b"auth_required")
            return ws
        self.local[user] = ws
        await self.redis.set(PRESENCE.format(user), self.id)
        await ws.send_str(
            orjson.dumps(
                {"op": "ready", "protocol": 1, "user_id": user, "gateway": self.id}
            ).decode()
        )
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    await self._frame(ws, user, orjson.loads(msg.data))
                except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                    err = {"op": "error", "code": "bad_request"}
                    await ws.send_str(orjson.dumps(err).decode())
        finally:
            if self.local.get(user) is ws:
                del self.local[user]
                await self.redis.delete(PRESENCE.format(user))
        return ws

    async def _frame(self, ws: web.WebSocketResponse, user: str, frame: dict[str, object]) -> None:
        op = frame.get("op")
        if op == "ping":
            await ws.send_str(orjson.dumps({"op": "pong", "id": frame.get("id")}).decode())
            return
        if op != "send":
            return  # `ack` and the rest: nothing is stored, so nothing to do
        to, client_id = str(frame["to"]), frame["id"]
        channel = await self._route(to)
        if channel is None:
            err = {"op": "error", "code": "recipient_offline", "id": client_id}
            await ws.send_str(orjson.dumps(err).decode())
            return
        self.seq += 1
        now = int(time.time() * 1000)
        server_id = f"{now:012x}{secrets.token_hex(8)}"
        lo, hi = sorted((user, to))
        conversation = f"dm:{lo}:{hi}"
        # The same fields, in the same order, as Parley's pushed `message`.
        message = {
            "seq": self.seq, "server_id": server_id, "kind": "message", "from": user,
            "conversation": conversation, "body": frame["body"],
            "commitment": frame.get("commitment"), "sent_at": now, "op": "message",
        }  # fmt: skip
        accepted = {
            "op": "accepted", "id": client_id, "server_id": server_id,
            "conversation": conversation,
        }  # fmt: skip
        self.outbox.append(
            (channel, to.encode() + b"\n" + orjson.dumps(message), ws, orjson.dumps(accepted))
        )
        self.wake.set()


def create_app(relay_id: str, redis_url: str) -> web.Application:
    relay = Relay(relay_id, redis_url)
    app = web.Application()
    app[RELAY_ID] = relay_id
    app.on_startup.append(relay.start)
    app.on_cleanup.append(relay.stop)
    app.router.add_get("/ws", relay.websocket)
    return app


# Running it -------------------------------------------------------------------------
@dataclass
class RelayCluster:
    """Relay processes (started by :func:`start_relays`) and the Redis they share."""

    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    urls: list[str] = field(default_factory=list)

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.procs.items()}

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def spawn(self, data_dir: Path, name: str, argv: list[str], port: int, url: str) -> None:
        """Start one server process (``python -m ...``), logged to ``<name>.out``, and
        wait for its port; ``url`` is how clients reach it."""
        data_dir.mkdir(parents=True, exist_ok=True)
        with open(data_dir / f"{name}.out", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", *argv], cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_port("127.0.0.1", port)
        self.urls.append(url)

    def front_with_haproxy(self, data_dir: Path) -> None:
        """Put HAProxy in front of the processes, as any deployment of more than one
        needs (Parley's own sockets pass through it): HTTP mode, ``leastconn``, the
        timeouts of deploy/haproxy/haproxy.cfg; clients then connect to it alone."""
        first = urlsplit(self.urls[0])
        ports = [urlsplit(u).port for u in self.urls]
        lb = StackConfig.free_ports(data_dir / "lb").lb_port
        servers = "\n".join(f"    server s{i} 127.0.0.1:{p}" for i, p in enumerate(ports, 1))
        cfg = data_dir / "haproxy.cfg"
        cfg.write_text(
            "global\n    maxconn 8000\n"
            "defaults\n    mode http\n    option forwardfor\n    timeout connect 2s\n"
            "    timeout client 60s\n    timeout server 60s\n    timeout tunnel 1h\n"
            f"frontend public\n    bind 127.0.0.1:{lb}\n    default_backend peers\n"
            f"backend peers\n    balance leastconn\n{servers}\n"
        )
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        with open(data_dir / "haproxy.out", "ab") as log:
            self.procs["haproxy"] = subprocess.Popen(
                [haproxy, "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_port("127.0.0.1", lb)
        self.urls = [first._replace(netloc=f"127.0.0.1:{lb}").geturl()]


def start_relays(data_dir: Path, redis_url: str, count: int = 2) -> RelayCluster:
    cluster = RelayCluster()
    ports = StackConfig.free_ports(data_dir)
    try:
        for i, port in enumerate((ports.gateway1_port, ports.gateway2_port)[:count], 1):
            argv = ["loadtest.relay_baseline", "--id", f"relay{i}", "--host", "127.0.0.1",
                    "--port", str(port), "--redis", redis_url]  # fmt: skip
            cluster.spawn(data_dir, f"relay{i}", argv, port, f"ws://127.0.0.1:{port}/ws")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--id", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - non-Linux platforms
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    tune_gc()
    web.run_app(
        create_app(args.id, args.redis),
        host=args.host,
        port=args.port,
        loop=loop,
        print=None,
        access_log=None,
    )


if __name__ == "__main__":
    main()
