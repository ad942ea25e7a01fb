"""A client that stops reading cannot hold up its pod.

Over real sockets: a raw client authenticates, then never reads again (a small
receive buffer, so the pod's writes back up into its transport). Closing such a
socket used to wait for ever (aiohttp's close drains the transport first): a
revocation or block of that user stalled the pod's Redis listener, and with it
every frame routed to every other socket of the pod; a slow consumer's or a
token's close never ended and its connection stayed open with megabytes
buffered. Now a close gives up after ``CLOSE_TIMEOUT_S`` and drops the
connection, and the listener does not wait for closes at all.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
from typing import Any

import orjson
from yarl import URL

from services.gateway.connection import CLOSE_TIMEOUT_S
from tests.support.aio import eventually
from tests.support.users import uid
from tests.support.wsclient import send_frame

from .conftest import Messaging
from .test_hub import publish_revocation

BODY = "QUJD" * 15_000  # 60,000 characters


def _client_frame(payload: bytes) -> bytes:
    """A masked text frame (the mask all zero: the payload as it is)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    elif n < 1 << 16:
        head = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


class StuckClient:
    """Authenticates, then reads nothing more."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, url: str, token: str) -> StuckClient:
        u = URL(url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (u.host, u.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {u.path} HTTP/1.1\r\nHost: {u.host}:{u.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        writer.write(_client_frame(orjson.dumps({"op": "auth", "token": token})))
        await writer.drain()
        # The `ready` frame, then nothing more is read.
        n = (await reader.readexactly(2))[1] & 0x7F
        if n == 126:
            n = int.from_bytes(await reader.readexactly(2), "big")
        ready = orjson.loads(await reader.readexactly(n))
        assert ready["op"] == "ready", ready
        return cls(reader, writer)

    async def wait_dropped(self, timeout: float) -> None:
        """Read (at last) until the pod has ended the connection."""

        async def read_all() -> None:
            with contextlib.suppress(ConnectionError):
                while await self.reader.read(1 << 20):
                    pass

        await asyncio.wait_for(read_all(), timeout)

    def close(self) -> None:
        self.writer.close()


async def _stuck(messaging: Messaging, user: str) -> tuple[StuckClient, Any]:
    """``user``'s stuck socket on pod 0, with its pod's writes backed up (more than
    the transport's high-water mark waits in it), and that socket's connection."""
    stuck = await StuckClient.connect(messaging.ws_url(0), messaging.issuer.token(user, did=1))
    hub = messaging.hub(0)
    await eventually(lambda: _value(hub.local(user)), lambda conns: len(conns) == 1)
    (conn,) = hub.local(user)
    sender = await messaging.connect(uid(), pod=1)
    for i in range(200):
        await sender.send(send_frame(f"c{i}", user, BODY))
        await sender.expect("stored", id=f"c{i}")
        if conn.transport.get_write_buffer_size() > 256 * 1024:
            break
    assert conn.transport.get_write_buffer_size() > 256 * 1024
    assert not conn._closing  # not yet a slow consumer (4 MiB)
    return stuck, conn


async def _value(v: Any) -> Any:
    return v


async def test_blocking_a_user_whose_client_stopped_reading_does_not_stall_the_pod(
    messaging: Messaging,
) -> None:
    mallory, alice, bob = uid(), uid(), uid()
    stuck, _ = await _stuck(messaging, mallory)
    try:
        bob_sock = await messaging.connect(bob, pod=0)
        alice_sock = await messaging.connect(alice, pod=1)
        await publish_revocation(messaging, {"type": "user_blocked", "user_id": mallory})
        # The pod's listener goes on routing: bob, on the same pod, gets alice's message.
        await alice_sock.send(send_frame("hello", bob, "aGk"))
        assert (await bob_sock.expect("message"))["body"] == "aGk"
        # And the stuck connection is dropped (after the close's timeout), not kept.
        await stuck.wait_dropped(CLOSE_TIMEOUT_S + 10)
        await eventually(lambda: _value(messaging.hub(0).local(mallory)), lambda c: not c)
    finally:
        stuck.close()


async def test_a_close_the_client_does_not_take_ends_the_connection(
    messaging: Messaging,
) -> None:
    """What every close of a socket whose client stopped reading did (a slow
    consumer's, an expired token's, a drain's): waited for ever, its connection
    and the megabytes buffered for it kept."""
    mallory = uid()
    stuck, conn = await _stuck(messaging, mallory)
    try:
        await conn.close(4008, "slow_consumer")
        assert conn.transport.is_closing()
        await stuck.wait_dropped(10)
        await eventually(lambda: _value(messaging.hub(0).local(mallory)), lambda c: not c)
    finally:
        stuck.close()
