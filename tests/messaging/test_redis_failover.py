"""A Redis failover that promotes a replica behind its primary (docs/delivery.md,
"Redis failover"), on real redis-servers: a primary, its replica (the replication
link through a proxy the test can hold, so that the replica lags on cue), and the
services reaching "the primary" through a proxy that switches to the promoted
replica, as ElastiCache's primary endpoint does.

A message whose hot item the primary holds but its replica does not is lost in
such a failover without a trace: the replica's ``hotbeat`` is where the persister
last saw it (no loss is noticed, nothing is consumed again) and the next passes
settle the record. With ``PARLEY_REDIS_WAIT_REPLICAS`` the write waits for the
replica (``WAIT``, in its pipeline) before it counts: the failover breaks the wait,
the batch goes again on the new primary, and the message is delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from parley_contract import envelopes as e

from loadtest.bench_redis_wait import linked
from scripts.stack import _free_ports, redis_command
from services.common.inbox import hot_key
from tests.messaging.test_hot_path import _persister_held, synced_all, uid
from tests.support.aio import eventually
from tests.support.messaging import Messaging, start_messaging
from tests.support.tokens import TokenIssuer
from tests.support.wsclient import send_frame

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")


class Proxy:
    """Forwards each connection to ``target``; ``hold()`` stops passing on what the
    target sends (kept, never delivered), ``switch()`` cuts every connection and
    sends new ones elsewhere."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.held = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pairs: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def hold(self) -> None:
        self.held = True

    def switch(self, target: int) -> None:
        self.target, self.held = target, False
        for writer in list(self._pairs):
            writer.transport.abort()
        self._pairs.clear()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        self.switch(self.target)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._pairs |= {writer, up_writer}
        tasks = [
            asyncio.create_task(self._pump(reader, up_writer, upstream=False)),
            asyncio.create_task(self._pump(up_reader, writer, upstream=True)),
        ]
        self._tasks.update(tasks)
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for w in (writer, up_writer):
            w.transport.abort()
            self._pairs.discard(w)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if upstream and self.held:
                    continue  # what the target sent, never delivered
                writer.write(data)
                await writer.drain()


class Server:
    """A redis-server of its own (no persistence), optionally a replica."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.dir = tmp / name
        self.dir.mkdir()
        [self.port] = _free_ports(1)
        self.proc: asyncio.subprocess.Process | None = None
        self.client: aioredis.Redis = aioredis.Redis(port=self.port, decode_responses=True)

    async def start(self, replica_of: int | None = None) -> Server:
        argv = redis_command("127.0.0.1", self.port, self.dir, replica_of)
        self.proc = await asyncio.create_subprocess_exec(*argv)
        await eventually(self._ping, lambda ok: ok)
        if replica_of is not None:
            await eventually(lambda: linked(self.client), lambda up: up)
        return self

    async def _ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (aioredis.ConnectionError, OSError):
            return False

    async def blocked_in_wait(self) -> int:
        """Clients of this server blocked in ``WAIT``."""
        return sum(1 for c in await self.client.client_list() if c.get("cmd") == "wait")

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        await self.client.aclose()


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    primary = await Server(tmp_path, "primary").start()
    link = await Proxy(primary.port).start()  # the replication link
    replica = await Server(tmp_path, "replica").start(replica_of=link.port)
    front = await Proxy(primary.port).start()  # "the primary endpoint"
    spare = Server(tmp_path, "spare")
    yield {"primary": primary, "replica": replica, "spare": spare, "link": link, "front": front}
    for proxy in (front, link):
        await proxy.stop()
    for server in (primary, replica, spare):
        await server.kill()


@pytest.mark.parametrize("wait", [1, 0], ids=["waits-for-the-replica", "no-wait"])
async def test_a_failover_to_a_replica_behind_loses_no_accepted_message(
    servers: dict[str, Any],
    issuer: TokenIssuer,
    make_client: Any,
    monkeypatch: pytest.MonkeyPatch,
    wait: int,
) -> None:
    primary, replica, spare = servers["primary"], servers["replica"], servers["spare"]
    link, front = servers["link"], servers["front"]
    # The wait outlasts the test's steps between the write and the failover, however
    # slow the machine (and stays below the socket timeout, as the settings require).
    m: Messaging = await start_messaging(
        issuer, make_client, redis_url=f"redis://127.0.0.1:{front.port}/0",
        redis_wait_replicas=wait, redis_wait_timeout_ms=60_000, dependency_timeout_ms=90_000,
    )  # fmt: skip
    try:
        worker, persist_once = _persister_held(m, monkeypatch)
        bob_id = uid()
        m.issuer.users.add(bob_id)
        alice = await m.connect(uid(), pod=0)
        # A backlog first, at a size a device offline for a while has: 800 messages
        # (under a socket's sends in flight per chunk), each batch waiting for the replica.
        before = [(f"k{i}", f"b{i:03d}") for i in range(800)]
        for start in range(0, len(before), 200):
            await alice.send_stored(bob_id, before[start : start + 200])
        await persist_once()  # a beat
        beat = f"{m.settings.redis_prefix}:hotbeat"
        want = await primary.client.get(beat)
        await eventually(lambda: replica.client.get(beat), lambda got: got == want)

        # The replica falls behind; the last message reaches the primary.
        link.hold()
        await alice.send(send_frame("last", bob_id, "bGFzdA"))
        hot = hot_key(m.settings.redis_prefix, e.inbox_id(bob_id, 1))
        await eventually(lambda: primary.client.hlen(hot), lambda n: n == len(before) + 1)
        if wait:  # the write is held in its wait: not stored, not pushed
            await eventually(primary.blocked_in_wait, lambda n: n == 1)
            assert not [f for f in alice.drain() if f["op"] == "stored" and f.get("id") == "last"]

        # Failover: the primary dies, its replica is promoted (without it) and gets a
        # replica of its own; the endpoint now leads there.
        await primary.kill()
        await replica.client.replicaof("NO", "ONE")
        await spare.start(replica_of=replica.port)
        front.switch(replica.port)
        lost = worker.hot_lost._value.get()
        await persist_once()
        assert worker.hot_lost._value.get() == lost  # a failover is no restart: no rewind

        if wait:
            # The wait broke with the connection: the batch went again on the new primary.
            await eventually(
                lambda: replica.client.hlen(hot), lambda n: n == len(before) + 1, timeout=30
            )
        bob = await m.connect(bob_id, pod=1)
        bodies = [str(i["body"]) for i in await synced_all(bob)]
        # Without the wait the last one is gone: accepted, never delivered, unnoticed.
        # Exactly once, in the order sent.
        sent = [body for _, body in before]
        assert bodies == ([*sent, "bGFzdA"] if wait else sent)
    finally:
        for c in m.clients:
            await c.close()
