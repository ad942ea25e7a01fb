"""Starting a Kafka client leaves nothing open when the start is cancelled or fails.

aiokafka's bootstrap keeps its first connection in a local variable while its
metadata request is in flight: cancelled there, it leaks a live connection that
only the garbage collector closes (with a ``ResourceWarning``, which failed a CI
run at random). ``services.common.clients.started`` is how every service starts
its producers, consumers and admin clients. These tests hold the broker's
metadata answer back with a proxy, so the cancellation lands exactly there.
"""

from __future__ import annotations

import asyncio
import gc
import struct
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError

from scripts.stack import _free_ports
from services.common.clients import started
from services.common.config import Settings


class HoldingProxy:
    """A TCP proxy to the broker that passes every request on but only the first
    ``answered`` responses of each connection back: the rest are held forever."""

    def __init__(self, bootstrap: str, answered: int = 1) -> None:
        host, port = bootstrap.rsplit(":", 1)
        self.target = (host, int(port))
        self.answered = answered
        self.requests = 0
        self.opened = 0
        self.closed = 0
        self.changed = asyncio.Condition()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def bootstrap(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> HoldingProxy:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _bump(self, name: str) -> None:
        async with self.changed:
            setattr(self, name, getattr(self, name) + 1)
            self.changed.notify_all()

    async def wait(self, predicate: Callable[[], bool], timeout: float = 20) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), timeout)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        await self._bump("opened")
        down = asyncio.create_task(self._answers(up_reader, writer))
        self.tasks.add(down)
        try:
            while True:  # requests: size-prefixed frames, passed on and counted
                size = struct.unpack(">i", await reader.readexactly(4))[0]
                up_writer.write(struct.pack(">i", size) + await reader.readexactly(size))
                await self._bump("requests")
        except (asyncio.IncompleteReadError, ConnectionError):
            await self._bump("closed")  # the client closed its end
        finally:
            down.cancel()
            up_writer.close()
            writer.close()

    async def _answers(self, up: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(self.answered):
            size = struct.unpack(">i", await up.readexactly(4))[0]
            writer.write(struct.pack(">i", size) + await up.readexactly(size))
        await asyncio.Event().wait()  # hold every later answer


@contextmanager
def unraisable() -> Iterator[list[str]]:
    """What the garbage collector reported while the block ran (collected at its end)."""
    seen: list[str] = []
    hook = sys.unraisablehook
    sys.unraisablehook = lambda u: seen.append(f"{u.exc_type.__name__}: {u.exc_value}")
    try:
        yield seen
        gc.collect()
    finally:
        sys.unraisablehook = hook


CLIENTS: dict[str, Callable[[str], Any]] = {
    "producer": lambda b: AIOKafkaProducer(
        bootstrap_servers=b, enable_idempotence=False, request_timeout_ms=1000
    ),
    "consumer": lambda b: AIOKafkaConsumer(bootstrap_servers=b, request_timeout_ms=1000),
    "admin": lambda b: AIOKafkaAdminClient(bootstrap_servers=b, request_timeout_ms=1000),
}


@pytest.mark.parametrize("kind", sorted(CLIENTS))
async def test_a_start_cancelled_mid_bootstrap_closes_its_connection(
    settings: Settings, kind: str
) -> None:
    with unraisable() as seen:
        async with HoldingProxy(settings.kafka_bootstrap, answered=1) as proxy:
            client = CLIENTS[kind](proxy.bootstrap)
            start = asyncio.create_task(started(client))
            # ApiVersions answered, the metadata request held: bootstrap is waiting.
            await proxy.wait(lambda: proxy.requests >= 2)
            start.cancel()
            with pytest.raises(asyncio.CancelledError):
                await start
            # The broker sees the connection closed, not only the garbage collector.
            await proxy.wait(lambda: proxy.closed == proxy.opened)
            assert proxy.opened == 1
            del client, start
    assert seen == []


@pytest.mark.parametrize("kind", sorted(CLIENTS))
async def test_a_start_that_fails_closes_the_client(kind: str) -> None:
    nobody = f"127.0.0.1:{_free_ports(1)[0]}"
    with unraisable() as seen:
        client = CLIENTS[kind](nobody)
        with pytest.raises(KafkaConnectionError):
            await started(client)
        del client
    assert seen == []


async def test_a_started_client_works(settings: Settings) -> None:
    admin = await started(AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap))
    try:
        assert isinstance(await admin.list_topics(), list)
    finally:
        await admin.close()
