"""The rooms service in-process on the real embedded servers, a client for it, its events."""

from __future__ import annotations

import contextlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.common.clients import Topics, kafka_consumer
from services.common.config import Settings
from services.common.ratelimit import Limit
from services.common.state import KAFKA, STARTUP
from services.rooms.app import create_app
from services.rooms.config import RoomsConfig
from services.rooms.state import ROOMS, Rooms
from tests.support.messaging import Messaging, messaging
from tests.support.tokens import TokenIssuer

__all__ = ["Messaging", "messaging"]

# Generous limits: the tests of the limits themselves pass their own.
TEST_CONFIG = RoomsConfig(
    create_limit=Limit(10_000, 3600), post_limit=Limit(100_000, 60),
    join_limit=Limit(100_000, 60), invite_limit=Limit(100_000, 60),
    edit_limit=Limit(100_000, 60),
)  # fmt: skip


@dataclass
class RoomsApi:
    """Calls the rooms service as a given user; returns (status, JSON body)."""

    client: TestClient[web.Request, web.Application]
    issuer: TokenIssuer
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def rooms(self) -> Rooms:
        return self.client.server.app[ROOMS]

    @property
    def settings(self) -> Settings:
        return self.issuer.settings

    def user(self, username: str | None = None) -> str:
        """A new user (with a username the users look-up answers to); returns its id."""
        user_id = uuid.uuid4().hex
        self.issuer.users.add(user_id)
        self.issuer.usernames[username or f"u{secrets.token_hex(4)}"] = user_id
        return user_id

    def username(self, user_id: str) -> str:
        return next(n for n, u in self.issuer.usernames.items() if u == user_id)

    def headers(self, user: str) -> dict[str, str]:
        if user not in self.tokens:
            self.tokens[user] = self.issuer.token(user)
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    async def call(
        self, method: str, path: str, user: str | None, json: Any = None, **kw: Any
    ) -> tuple[int, Any]:
        headers = dict(kw.pop("headers", None) or (self.headers(user) if user else {}))
        if json is not None:
            kw["data"] = orjson.dumps(json)
            headers["Content-Type"] = "application/json"
        resp = await self.client.request(method, "/rooms" + path, headers=headers, **kw)
        body = await resp.read()
        return resp.status, (orjson.loads(body) if body else None)

    # One call per route.

    async def create(self, user: str, name: str = "general", kind: str = "public",
                     **extra: Any) -> tuple[int, Any]:  # fmt: skip
        return await self.call("POST", "/v1/rooms", user, {"name": name, "kind": kind, **extra})

    async def room(self, user: str, kind: str = "public", name: str = "general") -> str:
        status, body = await self.create(user, name, kind)
        assert status == 201, body
        return str(body["room_id"])

    async def get(self, user: str, room: str) -> tuple[int, Any]:
        return await self.call("GET", f"/v1/rooms/{room}", user)

    async def lookup(self, user: str, rooms: Any) -> tuple[int, Any]:
        return await self.call("POST", "/v1/lookup", user, {"rooms": rooms})

    async def mine(self, user: str, query: str = "") -> tuple[int, Any]:
        return await self.call("GET", f"/v1/rooms{query}", user)

    async def directory(self, user: str, query: str = "") -> tuple[int, Any]:
        return await self.call("GET", f"/v1/directory{query}", user)

    async def patch(self, user: str, room: str, body: Any) -> tuple[int, Any]:
        return await self.call("PATCH", f"/v1/rooms/{room}", user, body)

    async def join(self, user: str, room: str) -> tuple[int, Any]:
        return await self.call("POST", f"/v1/rooms/{room}/join", user)

    async def leave(self, user: str, room: str) -> tuple[int, Any]:
        return await self.call("POST", f"/v1/rooms/{room}/leave", user)

    async def members(self, user: str, room: str, query: str = "") -> tuple[int, Any]:
        return await self.call("GET", f"/v1/rooms/{room}/members{query}", user)

    async def remove(self, user: str, room: str, target: str) -> tuple[int, Any]:
        return await self.call("DELETE", f"/v1/rooms/{room}/members/{target}", user)

    async def ban(self, user: str, room: str, target: str) -> tuple[int, Any]:
        return await self.call("PUT", f"/v1/rooms/{room}/bans/{target}", user)

    async def unban(self, user: str, room: str, target: str) -> tuple[int, Any]:
        return await self.call("DELETE", f"/v1/rooms/{room}/bans/{target}", user)

    async def bans(self, user: str, room: str, query: str = "") -> tuple[int, Any]:
        return await self.call("GET", f"/v1/rooms/{room}/bans{query}", user)

    async def promote(self, user: str, room: str, target: str) -> tuple[int, Any]:
        return await self.call("PUT", f"/v1/rooms/{room}/moderators/{target}", user)

    async def demote(self, user: str, room: str, target: str) -> tuple[int, Any]:
        return await self.call("DELETE", f"/v1/rooms/{room}/moderators/{target}", user)

    async def transfer(self, user: str, room: str, target: str) -> tuple[int, Any]:
        return await self.call("PUT", f"/v1/rooms/{room}/owner", user, {"user_id": target})

    async def invite(self, user: str, room: str, target: str) -> tuple[int, Any]:
        return await self.call("POST", f"/v1/rooms/{room}/invitations", user, {"user": target})

    async def accept(self, user: str, room: str) -> tuple[int, Any]:
        return await self.call("POST", f"/v1/rooms/{room}/invitation/accept", user)

    async def decline(self, user: str, room: str) -> tuple[int, Any]:
        return await self.call("POST", f"/v1/rooms/{room}/invitation/decline", user)

    async def invitations(self, user: str, query: str = "") -> tuple[int, Any]:
        return await self.call("GET", f"/v1/invitations{query}", user)

    async def post(self, user: str, room: str, text: str,
                   client_id: str | None = None) -> tuple[int, Any]:  # fmt: skip
        body = {"client_id": client_id or secrets.token_hex(8), "text": text}
        return await self.call("POST", f"/v1/rooms/{room}/messages", user, body)

    async def messages(self, user: str, room: str, query: str = "") -> tuple[int, Any]:
        return await self.call("GET", f"/v1/rooms/{room}/messages{query}", user)

    async def notifications(self, user: str, query: str = "") -> tuple[int, Any]:
        return await self.call("GET", f"/v1/notifications{query}", user)

    async def read(self, user: str, up_to: Any) -> tuple[int, Any]:
        return await self.call("POST", "/v1/notifications/read", user, {"up_to": up_to})

    # What is stored.

    async def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Every document of the service's database (the tests' databases are small)."""
        db = self.rooms.store.db
        out = {}
        for name in sorted(await db.list_collection_names()):
            out[name] = sorted((await db[name].find({}).to_list()), key=lambda d: str(d["_id"]))
        return out


RoomsFactory = Callable[..., Awaitable[RoomsApi]]


@pytest.fixture
async def make_rooms(issuer: TokenIssuer, make_client: Any) -> RoomsFactory:
    async def make(config: RoomsConfig | None = None, **settings: Any) -> RoomsApi:
        s = issuer.settings.model_copy(update=settings) if settings else issuer.settings
        app = await create_app(s, config or TEST_CONFIG)
        client = await make_client(app)
        await app[KAFKA].wait_ready(30)
        await app[STARTUP].done.wait()
        return RoomsApi(client, issuer)

    return make


@pytest.fixture
async def api(make_rooms: RoomsFactory) -> RoomsApi:
    return await make_rooms()


class EventLog:
    """The per-test rooms topic, read from the start without a consumer group."""

    def __init__(self, consumer: AIOKafkaConsumer, api: RoomsApi) -> None:
        self.consumer = consumer
        self.api = api
        self.records: list[tuple[bytes | None, dict[str, Any]]] = []

    @property
    def events(self) -> list[dict[str, Any]]:
        return [value for _, value in self.records]

    async def _poll(self) -> None:
        batches = await self.consumer.getmany(timeout_ms=200)
        for records in batches.values():
            for r in records:
                self.records.append((r.key, orjson.loads(r.value)))

    async def until(self, accept: Callable[[dict[str, Any]], bool], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not any(accept(e) for e in self.events):
            if time.monotonic() > deadline:
                raise AssertionError(f"no such event after {timeout}s; got {self.events!r}")
            await self._poll()

    async def settle(self, room_id: str) -> list[dict[str, Any]]:
        """Every event of ``room_id`` so far: a marker with the same key comes after them."""
        marker = {"type": "test_marker", "room_id": room_id, "n": len(self.records)}
        sent = await self.api.rooms.store.send_event(room_id, orjson.dumps(marker), [])
        assert sent
        await self.until(lambda e: e == marker)
        return [
            e for e in self.events if e.get("room_id") == room_id and e["type"] != "test_marker"
        ]


@contextlib.asynccontextmanager
async def event_log(api: RoomsApi) -> AsyncIterator[EventLog]:
    """The rooms topic of ``api``'s prefix, read from the start."""
    settings = api.settings
    consumer = kafka_consumer(settings, (), group_id=None)  # type: ignore[arg-type]
    await consumer.start()
    try:
        topic = Topics(settings).rooms
        consumer.assign([TopicPartition(topic, p) for p in range(settings.kafka_partitions)])
        yield EventLog(consumer, api)
    finally:
        await consumer.stop()


@pytest.fixture
async def events(api: RoomsApi) -> AsyncIterator[EventLog]:
    async with event_log(api) as log:
        yield log


class RecordLog:
    """A per-test topic read from the start without a consumer group (raw values)."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer
        self.records: list[tuple[bytes | None, bytes]] = []

    async def until(self, accept: Callable[[list[bytes]], bool], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not accept([v for _, v in self.records]):
            if time.monotonic() > deadline:
                raise AssertionError(f"no such records after {timeout}s; got {self.records!r}")
            batches = await self.consumer.getmany(timeout_ms=200)
            for records in batches.values():
                self.records += [(r.key, r.value or b"") for r in records]


@pytest.fixture
async def notices(api: RoomsApi) -> AsyncIterator[RecordLog]:
    """``<prefix>notifications``: the mention notices the service produced."""
    settings = api.settings
    consumer = kafka_consumer(settings, (), group_id=None)  # type: ignore[arg-type]
    await consumer.start()
    topic = Topics(settings).notifications
    consumer.assign([TopicPartition(topic, p) for p in range(settings.kafka_partitions)])
    yield RecordLog(consumer)
    await consumer.stop()
