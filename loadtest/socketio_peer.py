"""The peer a user would pick instead: python-socketio 5.x emits, for rooms and 1:1.

Two processes of this server share one Redis through ``AsyncRedisManager``
(socket.io's own way to scale out). Every client that connects enters the
room ``r`` and, when its connect payload names a ``user``, that user's own
room. A ``send`` event with a ``to`` is emitted to that user's room (a 1:1
message, loadtest/bench_messaging.py); without one, to the room ``r`` (every
member but the sender, on both processes: loadtest/bench_fanout.py). Either
way the sender gets the event's acknowledgement. No storage, no
authentication, no encryption: what python-socketio gives.

Tuned as its documentation suggests for throughput: uvloop, the aiohttp
server, WebSocket transport only, no logging. And a Redis connection pool
large enough for the emits in flight (``redis_options``): redis-py 8 caps a
pool at 100 connections, every emit holds one for its ``PUBLISH``, and a
saturated process has up to ~800 in flight; past the cap redis-py raises and
python-socketio builds a new Redis client and retries, for each emit that
met the cap. That churn (a new connection pool, and redis-py reading its own
version from the package metadata for each new connection) took one process
to a full core and the peer to a third of its throughput: the "outlier" of
the 2026-12-04 benchmark runs (docs/BENCHMARKS.md).

Run one process: ``python -m loadtest.socketio_peer --port 9101 --redis redis://...``.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import socketio
from aiohttp import web

from loadtest.common import tune_gc
from loadtest.relay_baseline import RelayCluster

ROOM = "r"
REDIS_POOL = 2048
"""Connections one process may open to Redis (redis-py 8's default is 100)."""


def create_app(redis_url: str, channel: str) -> web.Application:
    mgr = socketio.AsyncRedisManager(
        redis_url, channel=channel, redis_options={"max_connections": REDIS_POOL}
    )
    sio = socketio.AsyncServer(
        async_mode="aiohttp", client_manager=mgr, transports=["websocket"],
        logger=False, engineio_logger=False, cors_allowed_origins=[],
    )  # fmt: skip

    @sio.event
    async def connect(sid: str, environ: Any, auth: Any = None) -> None:
        await sio.enter_room(sid, ROOM)
        if isinstance(auth, dict) and isinstance(auth.get("user"), str):
            await sio.enter_room(sid, "u:" + auth["user"])

    @sio.event
    async def send(sid: str, data: Any) -> str:
        to = data.get("to") if isinstance(data, dict) else None
        if isinstance(to, str):
            await sio.emit("message", data, room="u:" + to)
        else:
            await sio.emit("message", data, room=ROOM, skip_sid=sid)
        return "ok"

    app = web.Application()
    sio.attach(app)
    return app


def start_peers(data_dir: Path, redis_url: str, ports: list[int], channel: str) -> RelayCluster:
    """Two (or more) peer processes, as loadtest/relay_baseline.py starts its relays."""
    cluster = RelayCluster()
    try:
        for i, port in enumerate(ports, 1):
            argv = ["loadtest.socketio_peer", "--port", str(port), "--redis", redis_url,
                    "--channel", channel]  # fmt: skip
            url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
            cluster.spawn(data_dir, f"sio{i}", argv, port, url)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--channel", default="parley-bench-sio")
    args = parser.parse_args(argv)
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - non-Linux platforms
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    tune_gc()
    web.run_app(create_app(args.redis, args.channel), host=args.host, port=args.port, loop=loop,
                print=None, access_log=None)  # fmt: skip


if __name__ == "__main__":
    main()
