"""A private rooms world for messaging tests: the rooms service, delivery and two
gateway pods in-process on the real embedded servers (the ``world`` fixture)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from services.common.ratelimit import Limit
from services.common.state import KAFKA, STARTUP
from services.rooms.app import create_app as rooms_app
from services.rooms.config import RoomsConfig
from tests.support.messaging import Messaging, start_messaging
from tests.support.tokens import TokenIssuer
from tests.support.wsclient import WsClient

CONFIG = RoomsConfig(create_limit=Limit(10_000, 3600), post_limit=Limit(100_000, 60))


@dataclass
class RoomWorld:
    m: Messaging
    rooms: TestClient[web.Request, web.Application]

    async def call(self, method: str, path: str, user: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.m.issuer.token(user)}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        resp = await self.rooms.request(
            method, "/rooms/v1" + path, headers=headers,
            data=orjson.dumps(body) if body is not None else None,
        )  # fmt: skip
        raw = await resp.read()
        return resp.status, (orjson.loads(raw) if raw else None)

    async def log(self, room: str, user: str, **query: Any) -> tuple[int, Any]:
        """``GET /delivery/v1/rooms/{room}/log`` as ``user``."""
        headers = {"Authorization": f"Bearer {self.m.issuer.token(user)}"}
        resp = await self.m.delivery.get(
            f"/delivery/v1/rooms/{room}/log",
            headers=headers,
            params={k: str(v) for k, v in query.items()},
        )
        raw = await resp.read()
        return resp.status, (orjson.loads(raw) if raw else None)

    async def logs(self, user: str | None, body: Any) -> tuple[int, Any]:
        """``POST /delivery/v1/rooms/logs`` as ``user`` (None: no token)."""
        headers = {"Content-Type": "application/json"}
        if user is not None:
            headers["Authorization"] = f"Bearer {self.m.issuer.token(user)}"
        resp = await self.m.delivery.post(
            "/delivery/v1/rooms/logs", headers=headers, data=orjson.dumps(body)
        )
        raw = await resp.read()
        return resp.status, (orjson.loads(raw) if raw else None)

    async def private_room(self, owner: str, members: list[str]) -> str:
        status, room = await self.call("POST", "/rooms", owner, {"name": "team", "kind": "private"})
        assert status == 201, room
        for user in members:
            await self.add(room["room_id"], owner, user)
        return str(room["room_id"])

    async def add(self, room: str, by: str, user: str) -> None:
        self.m.issuer.users.add(user)
        status, body = await self.call("POST", f"/rooms/{room}/invitations", by, {"user": user})
        assert status == 201, body
        status, body = await self.call("POST", f"/rooms/{room}/invitation/accept", user)
        assert status == 200, body

    async def connect(self, user: str, device: int = 1, pod: int = 0) -> WsClient:
        return await self.m.connect(user, pod=pod, did=device)


@pytest.fixture
async def world(issuer: TokenIssuer, make_client: Any) -> AsyncIterator[RoomWorld]:
    app = await rooms_app(issuer.settings, CONFIG)
    rooms = await make_client(app)
    await app[KAFKA].wait_ready(30)
    await app[STARTUP].done.wait()
    m = await start_messaging(issuer, make_client, rooms_url=str(rooms.make_url("")).rstrip("/"))
    yield RoomWorld(m, rooms)
    for c in m.clients:
        await c.close()
