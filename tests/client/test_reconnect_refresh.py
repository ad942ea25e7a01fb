"""A connection whose token must be refreshed while the server cannot be reached, or
answers "later" (429, 5xx), keeps trying and comes back; only a refusal that will not
change (the session ended, the account is blocked) stops it for good
(docs/client.md, "Connection").

Before, a refresh that got no answer (the laptop's network is down when its access token
runs out) stopped the connection for good: the chat never reconnected, and every line
typed since said "Cannot reach the server" although it was queued, and went at the next
connection (typed again, it arrived twice).

The client talks to the real system through a TCP forwarder that the test switches off
and on: what an outage looks like from the client (connections dropped, new ones refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from parley import Client
from parley.errors import ApiError, NotLoggedIn, ServerUnavailable

from tests.client.conftest import CHEAP_KDF, PASSWORD, MakeClient, new_username
from tests.support.cli_runs import expire_access_token
from tests.support.stack import System


class Outage:
    """A TCP forwarder to the load balancer: :meth:`down` drops every connection and
    refuses new ones (the network is gone), :meth:`up` listens again on the same port."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        assert parts.hostname and parts.port
        self.host, self.port = parts.hostname, parts.port
        self.listen_port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.listen_port)
        self.listen_port = self.server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.close()
        self.writers.clear()
        await self.server.wait_closed()
        self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.close()
            return
        self.writers.update({writer, up_writer})

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def _until(check: Callable[[], bool], seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.1)
    return False


async def test_an_outage_longer_than_the_token_ends_in_a_reconnection_and_one_delivery(
    make_client: MakeClient, system: System, tmp_path: Path
) -> None:
    outage = Outage(system.lb)
    await outage.up()
    name = new_username("r")
    alice = Client(outage.url, data_dir=tmp_path / name, passphrase="test passphrase",
                   kdf=CHEAP_KDF, backoff_start=0.1, backoff_max=0.5)  # fmt: skip
    bob = await make_client()
    assert bob.username and bob.user_id
    async with alice:
        await alice.signup(name, PASSWORD, f"{name}@example.test")
        await alice.connect()
        await bob.connect()
        await alice.send(bob.username, "before", wait="stored")
        conn = alice.messenger.conn
        assert conn is not None

        await expire_access_token(alice)
        await outage.down()
        # It tries again meanwhile: each try's refresh finds no server.
        assert await _until(lambda: "Cannot reach" in conn.last_error or conn.failed is not None)
        await asyncio.sleep(1)  # a few more tries
        assert conn.failed is None, conn.failed
        assert not alice.connected

        await outage.up()
        # Written as the network comes back: queued, and sent once the connection is.
        await alice.send(bob.username, "after the outage", wait="accepted", timeout=20)
        assert alice.connected and conn.failed is None
        assert await _until(lambda: not alice.outbox())
        await alice.send(bob.username, "and on", wait="stored", timeout=15)
        await asyncio.sleep(1)  # a second copy, if any, would have come by now
        await bob.sync()
        texts = [e["text"] for e in bob.history(alice.user_id or "")]
        assert texts == ["before", "after the outage", "and on"]
    await outage.down()


@pytest.mark.parametrize(
    "later",
    [
        ApiError("rate_limited", "Too many requests.", 429, retry_after=0.2),
        ApiError("internal_error", "Internal error.", 500),
        ServerUnavailable("The server is unavailable: try again shortly."),
    ],
    ids=["429", "500", "unavailable"],
)
async def test_a_refresh_that_says_later_is_tried_again(
    make_client: MakeClient, later: Exception
) -> None:
    """The reconnection's refresh fails twice "for now", then works: it reconnects."""
    alice = await make_client()
    await alice.connect()
    conn = alice.messenger.conn
    assert conn is not None
    real, calls = conn._token, []

    async def token(force: bool) -> str:
        calls.append(force)
        if len(calls) <= 2:
            raise later
        return await real(force)

    conn._token = token
    await conn.drop("the test")  # reconnects
    assert await _until(lambda: conn.connects == 2 or conn.failed is not None)
    assert conn.failed is None and len(calls) == 3
    assert await _until(lambda: alice.connected)


async def test_a_refused_refresh_stops_for_good(make_client: MakeClient) -> None:
    alice = await make_client()
    await alice.connect()
    conn = alice.messenger.conn
    assert conn is not None

    async def token(force: bool) -> str:
        raise NotLoggedIn("Your session has ended. Run `parley login`.")

    conn._token = token
    await conn.drop("the test")
    assert await _until(lambda: conn.failed is not None)
    assert isinstance(conn.failed, NotLoggedIn) and not alice.connected
