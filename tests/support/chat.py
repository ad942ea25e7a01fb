"""Protocol-level chat helpers for fault tests: a sender that resends what was not
accepted after a disconnect, a receiver that drops repeats, acks and resyncs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from typing import Any

import aiohttp

from tests.support.stack import System
from tests.support.users import User
from tests.support.wsclient import WsClient, send_frame

log = logging.getLogger(__name__)


class Sender:
    """Sends numbered messages; after a disconnect, reconnects and resends what was not
    accepted. Message ``i`` goes to ``to`` or, given several recipients, to
    ``to[i % len(to)]``."""

    def __init__(self, system: System, user: User, to: str | list[str], tag: str) -> None:
        self.system, self.user, self.tag = system, user, tag
        self.to = [to] if isinstance(to, str) else to
        self.accepted: set[str] = set()
        self.client: WsClient | None = None
        self.reconnects = 0
        self.written = asyncio.Event()  # the first socket has all of them written

    async def connect(self) -> None:
        while True:
            try:
                self.client = await WsClient.connect(self.system.ws_url, self.user.token)
                return
            except (AssertionError, TimeoutError, OSError, aiohttp.ClientError):
                await asyncio.sleep(0.2)  # the pod is gone: HAProxy picks the other one

    async def run(self, n: int, pace: float = 0.002) -> None:
        pending = [f"{self.tag}-{i}" for i in range(n)]
        await self.connect()
        while pending:
            assert self.client is not None
            try:
                for cid in pending:
                    to = self.to[int(cid.rsplit("-", 1)[1]) % len(self.to)]
                    await self.client.send(send_frame(cid, to, b64(cid)))
                    await asyncio.sleep(pace)
                self.written.set()
                while len(self.accepted) < n:
                    frame = await self.client.next(timeout=5)
                    if frame["op"] == "accepted":
                        self.accepted.add(frame["id"])
                    elif frame["op"] == "error":
                        pass  # e.g. service_unavailable while a pod dies: resent below
            except (TimeoutError, ConnectionResetError, RuntimeError, aiohttp.ClientError):
                log.info("sender lost its socket; resending what was not accepted")
            # Collect what was acknowledged before a disconnect.
            while not self.client.frames.empty():
                frame = self.client.frames.get_nowait()
                if frame["op"] == "accepted":
                    self.accepted.add(frame["id"])
            pending = [
                f"{self.tag}-{i}" for i in range(n) if f"{self.tag}-{i}" not in self.accepted
            ]
            if pending:
                self.reconnects += 1
                with contextlib.suppress(Exception):
                    await self.client.close()
                await self.connect()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def unb64(text: str) -> str:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()


async def receive_all(system: System, user: User, n: int, timeout: float = 120) -> Receiver:
    """Connect as ``user``, page through the inbox and take pushes until ``n`` messages
    came (each once), then close: the receiver, for its ``bodies``."""
    receiver = Receiver(system, user)
    try:
        await receiver.sync()
        await receiver.listen_until(n, timeout=timeout)
    finally:
        await receiver.close()
    return receiver


class Receiver:
    """Pages through its inbox and takes pushes, counts each message once, acks what it has
    seen.

    Once means by ``seq`` and by ``server_id``, as docs/protocol.md asks of every
    client: after Redis lost the hot inbox, a message may be stored again under
    a new ``seq`` with the same ``server_id`` (``restored`` counts those).

    Pushes (the fast path) may arrive while it pages with later seqs than the
    page it is reading: they are taken, but the paging cursor follows the
    pages, so nothing in between is skipped, nor acknowledged unseen.
    """

    def __init__(self, system: System, user: User) -> None:
        self.system, self.user = system, user
        self.last = 0  # every seq up to here was seen (sync pages cover them)
        self.seen: set[int] = set()
        self.server_ids: set[str] = set()
        self.restored = 0
        self.bodies: list[str] = []
        self.client: WsClient | None = None

    async def sync(self) -> None:
        """Connect (again) and page through everything after the last processed seq.

        A page that fails (the inbox is briefly down: an `error` frame, or no
        answer, or the socket closes) is asked for again on a fresh socket.
        """
        while True:
            if self.client is not None:
                await self.client.close()
            try:
                self.client = await WsClient.connect(self.system.ws_url, self.user.token)
                if await self._page_all():
                    return
            except (AssertionError, TimeoutError, OSError, RuntimeError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.2)

    async def _page_all(self) -> bool:
        assert self.client is not None
        more = True
        while more:
            cursor = self.last
            await self.client.send({"op": "sync", "id": f"s{cursor}", "after": cursor})
            while True:
                frame = await self.client.next()
                if frame["op"] == "synced":
                    more = frame["more"]
                    self.last = max(self.last, frame["last"])
                    break
                if frame["op"] == "error":
                    return False
                self.take(frame)
            await self.client.send({"op": "ack", "seq": self.last})
        return True

    def take(self, frame: dict[str, Any]) -> None:
        if frame.get("op") == "message" and frame["seq"] not in self.seen:
            self.seen.add(frame["seq"])
            if frame["server_id"] in self.server_ids:
                self.restored += 1
                return
            self.server_ids.add(frame["server_id"])
            self.bodies.append(unb64(frame["body"]))

    async def listen_until(self, count: int, timeout: float = 60) -> None:
        async def loop() -> None:
            while len(self.bodies) < count:
                assert self.client is not None
                try:
                    frame = await self.client.next(timeout=3)
                except TimeoutError:
                    if self.client.closed.is_set():
                        await self.sync()
                    else:
                        with contextlib.suppress(ConnectionResetError, RuntimeError):
                            await self.client.send({"op": "ack", "seq": self.last})
                    continue
                if frame.get("op") == "resync":
                    await self.sync()  # the pod lost frames meant for this socket
                else:
                    self.take(frame)
            assert self.client is not None
            # Everything expected has arrived: acknowledge up to the newest (on a socket
            # its pod's death closed after the frames came, nothing to acknowledge on).
            with contextlib.suppress(ConnectionResetError, RuntimeError):
                await self.client.send({"op": "ack", "seq": max(self.seen, default=self.last)})

        await asyncio.wait_for(loop(), timeout)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


def assert_exactly_once_in_order(bodies: list[str], tag: str, n: int) -> None:
    expected = [f"{tag}-{i}" for i in range(n)]
    assert len(bodies) == len(set(bodies)), "a message arrived twice"
    assert sorted(bodies, key=lambda b: int(b.rsplit("-", 1)[1])) == expected, "a message was lost"


async def inbox_items(
    http: aiohttp.ClientSession, lb: str, token: str
) -> list[dict[str, Any]] | None:
    """Everything waiting in the token's device inbox, paged over HTTP through the load
    balancer (nothing is acknowledged); None while the inbox does not answer."""
    items: list[dict[str, Any]] = []
    after = 0
    while True:
        async with http.get(
            f"{lb}/delivery/v1/inbox", params={"after": str(after), "limit": "200"},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:  # fmt: skip
            if resp.status != 200:
                return None
            page = await resp.json()
        items += page["messages"]
        if not page["messages"] or not page["more"]:
            return items
        after = page["messages"][-1]["seq"]
