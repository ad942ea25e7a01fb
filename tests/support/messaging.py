"""Two gateway pods and a delivery worker, in-process, on the real embedded servers.

The ``messaging`` fixture, used by tests/gateway and tests/messaging (their
conftest.py import it).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from services.common.config import Settings
from services.common.state import KAFKA
from services.delivery.app import create_app as delivery_app
from services.delivery.state import WORKER
from services.gateway.app import create_app as gateway_app
from services.gateway.state import HUB
from tests.support.aio import eventually
from tests.support.tokens import TokenIssuer
from tests.support.wsclient import WsClient, send_frame


@dataclass
class Messaging:
    settings: Settings
    issuer: TokenIssuer
    delivery: Any
    gateways: list[Any]
    clients: list[WsClient]

    def ws_url(self, pod: int) -> str:
        return str(self.gateways[pod].make_url("/ws"))

    async def connect(self, user: str, pod: int = 0, **claims: Any) -> WsClient:
        """A socket of ``user``'s device 1 (or ``did=``) on a pod."""
        claims.setdefault("did", 1)
        client = await WsClient.connect(self.ws_url(pod), self.issuer.token(user, **claims))
        self.clients.append(client)
        return client

    def hub(self, pod: int) -> Any:
        return self.gateways[pod].server.app[HUB]

    async def many_waiting(self, n: int) -> tuple[WsClient, list[WsClient], list[int]]:
        """A sender (pod 0) stored one message ``m<i>`` for each of ``n`` new users, whose
        sockets (pod 1) synced it: (sender, sockets, each one's last seq)."""
        users = [uuid.uuid4().hex for _ in range(n)]
        for user in users:
            self.issuer.users.add(user)
        sender = await self.connect(uuid.uuid4().hex, pod=0)
        for i, user in enumerate(users):
            await sender.send(send_frame(f"m{i}", user, "Ym9keQ"))
        for i in range(n):
            await sender.expect("stored", id=f"m{i}")
        sockets = [await self.connect(u, pod=1) for u in users]
        seqs = []
        for i, sock in enumerate(sockets):
            await sock.send({"op": "sync", "id": f"s{i}", "after": 0})
            await sock.expect("synced", id=f"s{i}")
            seqs.append(max(int(f["seq"]) for f in sock.drain() if f["op"] == "message"))
        return sender, sockets, seqs


@pytest.fixture
async def messaging(issuer: TokenIssuer, make_client: Any) -> AsyncIterator[Messaging]:
    m = await start_messaging(issuer, make_client)
    yield m
    for c in m.clients:
        await c.close()


async def start_messaging(issuer: TokenIssuer, make_client: Any, **extra: Any) -> Messaging:
    """Delivery and two gateway pods (``extra``: more settings, e.g. ``rooms_url``)."""
    settings = issuer.settings.model_copy(
        update={"ws_sends_per_s": 1000.0, "ws_send_burst": 1000, **extra}
    )
    delivery = await make_client(await delivery_app(settings))
    await eventually(
        lambda: _ready(delivery.server.app[WORKER].running.is_set()), lambda ok: ok, timeout=30
    )
    base = str(delivery.make_url("")).rstrip("/")
    gateways = []
    for gw in ("gw-a", "gw-b"):
        s = settings.model_copy(update={"gateway_id": gw, "delivery_url": base})
        gateways.append(await make_client(await gateway_app(s)))
    for g in gateways:
        hub = g.server.app[HUB]
        await eventually(lambda hub=hub: _ready(hub.subscribed.is_set()), lambda ok: ok)
        # The producer connects in the background: a send before it is up is
        # refused (service_unavailable), which a test must not race.
        await g.server.app[KAFKA].wait_ready(30)
    return Messaging(settings, issuer, delivery, gateways, [])


async def _ready(value: bool) -> bool:
    return value
