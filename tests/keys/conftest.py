"""The key directory in-process on the real embedded servers, a client for it, its events."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.common.auth import revocation_channel
from services.common.clients import Topics, kafka_consumer
from services.common.config import Settings
from services.common.state import KAFKA, STARTUP
from services.keys.app import create_app
from services.keys.config import KeysConfig
from services.keys.state import KEYS, Keys
from services.keys.store import Kind
from tests.keys.keygen import AccountKeys, DeviceKeys, entry
from tests.support.tokens import TokenIssuer


@dataclass
class Account:
    """What a test user's devices know: the account key and the list they published."""

    key: AccountKeys = field(default_factory=AccountKeys)
    version: int = 0
    entries: dict[int, dict[str, Any]] = field(default_factory=dict)

    def next(self, user: str, entries: dict[int, dict[str, Any]]) -> dict[str, Any]:
        return self.key.signed(user, self.version + 1, list(entries.values()))


@dataclass
class KeysApi:
    """Calls the key directory as a given user; returns (status, JSON body).

    ``did=`` makes the call with a token bound to that device (as the auth
    service issues them); without it, a token with no device (as admin tools
    and older tests use).
    """

    client: TestClient[web.Request, web.Application]
    issuer: TokenIssuer
    tokens: dict[str, str] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)

    @property
    def app(self) -> web.Application:
        server = self.client.server
        assert isinstance(server, TestServer)
        return server.app

    @property
    def keys(self) -> Keys:
        return self.app[KEYS]

    @property
    def settings(self) -> Settings:
        return self.issuer.settings

    def headers(self, user: str, **claims: Any) -> dict[str, str]:
        if claims:
            return {"Authorization": f"Bearer {self.issuer.token(user, **claims)}"}
        if user not in self.tokens:
            self.tokens[user] = self.issuer.token(user)
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    async def call(
        self,
        method: str,
        path: str,
        user: str | None,
        json: Any = None,
        *,
        request_id: str | None = None,
        did: int | None = None,
        **kw: Any,
    ) -> tuple[int, Any]:
        headers = kw.pop("headers", None)
        if headers is None and user:
            headers = self.headers(user, did=did) if did is not None else self.headers(user)
        headers = headers or {}
        if request_id is not None:
            headers = {**headers, "X-Request-ID": request_id}
        if json is not None:
            kw["data"] = orjson.dumps(json)
            headers = {**headers, "Content-Type": "application/json"}
        resp = await self.client.request(method, "/keys" + path, headers=headers, **kw)
        body = await resp.read()
        self.last_headers = resp.headers
        return resp.status, (orjson.loads(body) if body else None)

    # One call per route.

    async def put_identity(self, user: str, device: int, body: Any, **kw: Any) -> tuple[int, Any]:
        return await self.call("PUT", f"/v1/devices/{device}/identity", user, body, **kw)

    async def put_signed_prekey(self, user: str, device: int, body: Any) -> tuple[int, Any]:
        return await self.call("PUT", f"/v1/devices/{device}/signed-prekey", user, body)

    async def post_one_time(self, user: str, device: int, prekeys: Any) -> tuple[int, Any]:
        body = {"prekeys": prekeys}
        return await self.call("POST", f"/v1/devices/{device}/one-time-prekeys", user, body)

    async def post_kem(self, user: str, device: int, prekeys: Any) -> tuple[int, Any]:
        return await self.call(
            "POST", f"/v1/devices/{device}/kem-prekeys", user, {"prekeys": prekeys}
        )

    async def put_last_resort(self, user: str, device: int, body: Any) -> tuple[int, Any]:
        return await self.call("PUT", f"/v1/devices/{device}/kem-last-resort", user, body)

    async def counts(self, user: str, device: int) -> tuple[int, Any]:
        return await self.call("GET", f"/v1/devices/{device}/counts", user)

    async def check(self, user: str, device: int, digest: str) -> tuple[int, Any]:
        return await self.call("POST", f"/v1/devices/{device}/check", user, {"digest": digest})

    async def delete(self, user: str, device: int) -> tuple[int, Any]:
        return await self.call("DELETE", f"/v1/devices/{device}", user)

    async def claim(self, claimer: str, target: str, query: str = "") -> tuple[int, Any]:
        return await self.call("GET", f"/v1/users/{target}/bundles{query}", claimer)

    async def claim_many(self, claimer: str, users: Any) -> tuple[int, Any]:
        """``users``: {user id: {"device_ids": [...]} or {}} (or anything, to refuse)."""
        return await self.call("POST", "/v1/users/bundles", claimer, {"users": users})

    async def device_lists(self, user: str, user_ids: Any) -> tuple[int, Any]:
        return await self.call("POST", "/v1/users/device-lists", user, {"user_ids": user_ids})

    async def identity_of(self, user: str, target: str) -> tuple[int, Any]:
        return await self.call("GET", f"/v1/users/{target}/identity", user)

    async def devices_of(self, user: str, target: str, **kw: Any) -> tuple[int, Any]:
        return await self.call("GET", f"/v1/users/{target}/devices", user, **kw)

    async def put_account(self, user: str, body: Any, **kw: Any) -> tuple[int, Any]:
        return await self.call("PUT", "/v1/account", user, body, **kw)

    async def put_device_list(self, user: str, body: Any, **kw: Any) -> tuple[int, Any]:
        return await self.call("PUT", "/v1/device-list", user, body, **kw)

    async def post_link(self, user: str, body: Any, **kw: Any) -> tuple[int, Any]:
        return await self.call("POST", "/v1/links", user, body, **kw)

    async def get_link(self, user: str, link_id: str, **kw: Any) -> tuple[int, Any]:
        return await self.call("GET", f"/v1/links/{link_id}", user, **kw)

    async def approve(self, user: str, link_id: str, sealed: str, **kw: Any) -> tuple[int, Any]:
        body = {"sealed": sealed}
        return await self.call("PUT", f"/v1/links/{link_id}/approval", user, body, **kw)

    # The account's device list, as the user's devices keep it.

    def account(self, user: str) -> Account:
        return self.accounts.setdefault(user, Account())

    async def publish(self, user: str, entries: dict[int, dict[str, Any]]) -> dict[str, Any]:
        """Publish ``entries`` as the user's next list (registering the key first)."""
        acct = self.account(user)
        if acct.version == 0:
            body = acct.key.registration(user, list(entries.values()))
            status, reply = await self.put_account(user, body)
        else:
            body = acct.next(user, entries)
            status, reply = await self.put_device_list(user, body)
        assert status == 200, reply
        acct.version = reply["version"]
        acct.entries = dict(entries)
        return dict(reply)

    async def list_device(
        self, user: str, device_id: int, dev: DeviceKeys, name: str | None = None
    ) -> dict[str, Any]:
        """Add a registered device to the user's list."""
        entries = dict(self.account(user).entries)
        entries[device_id] = entry(device_id, dev, name)
        return await self.publish(user, entries)

    async def unlist(self, user: str, *device_ids: int) -> dict[str, Any]:
        """Publish the user's list without these devices: they are removed."""
        entries = {d: e for d, e in self.account(user).entries.items() if d not in device_ids}
        return await self.publish(user, entries)

    # Set-ups.

    async def device(
        self,
        user: str,
        device_id: int = 1,
        *,
        one_time: int = 0,
        kem: int = 0,
        signed: bool = True,
        last_resort: bool = True,
        keys: DeviceKeys | None = None,
        listed: bool = True,
    ) -> DeviceKeys:
        """Register a device with an identity, then whatever is asked for; and (unless
        ``listed=False``, a pending device) add it to the user's signed device list."""
        dev = keys or DeviceKeys()
        status, body = await self.put_identity(user, device_id, dev.identity())
        assert status == 200, body
        if listed:
            await self.list_device(user, device_id, dev)
        if signed:
            status, body = await self.put_signed_prekey(user, device_id, dev.signed_prekey(7))
            assert status == 204, body
        if last_resort:
            status, body = await self.put_last_resort(user, device_id, dev.last_resort(0))
            assert status == 204, body
        for n, upload, make in (
            (one_time, self.post_one_time, dev.one_time),
            (kem, self.post_kem, dev.kem),
        ):
            while n > 0:
                status, body = await upload(user, device_id, make(min(n, 100)))
                assert status == 201, body
                n -= 100
        return dev

    async def stored(self, user: str, device_id: int = 1) -> tuple[int, int]:
        """(one-time X25519, one-time ML-KEM) prekeys held, straight from MongoDB."""
        store = self.keys.store
        colls = store.prekeys
        q = {"user_id": user, "device_id": device_id}
        return (
            await colls[Kind.ONE_TIME].count_documents(q),
            await colls[Kind.KEM].count_documents(q),
        )

    async def device_doc(self, user: str, device_id: int = 1) -> dict[str, Any] | None:
        doc = await self.keys.store.get_device(user, device_id)
        if doc is not None:
            doc.pop("updated_at", None)
        return doc


KeysFactory = Callable[..., Awaitable[KeysApi]]


@pytest.fixture
async def make_keys(issuer: TokenIssuer, make_client: Any) -> KeysFactory:
    async def make(config: KeysConfig | None = None, **settings: Any) -> KeysApi:
        s = issuer.settings.model_copy(update=settings) if settings else issuer.settings
        app = await create_app(s, config)
        client = await make_client(app)
        await app[KAFKA].wait_ready(30)
        await app[STARTUP].done.wait()
        return KeysApi(client, issuer)

    return make


@pytest.fixture
async def api(make_keys: KeysFactory) -> KeysApi:
    return await make_keys()


class EventLog:
    """The per-test events topic, read from the start without a consumer group."""

    def __init__(self, consumer: AIOKafkaConsumer, api: KeysApi) -> None:
        self.consumer = consumer
        self.api = api
        self.records: list[tuple[bytes | None, dict[str, Any], list[tuple[str, bytes]]]] = []

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event so far, without its (random) ``event_id``."""
        return [{k: v for k, v in value.items() if k != "event_id"} for _, value, _ in self.records]

    async def _poll(self) -> None:
        batches = await self.consumer.getmany(timeout_ms=200)
        for records in batches.values():
            for r in records:
                self.records.append((r.key, orjson.loads(r.value), list(r.headers)))

    async def until(self, accept: Callable[[dict[str, Any]], bool], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not any(accept(e) for e in self.events):
            if time.monotonic() > deadline:
                raise AssertionError(f"no such event after {timeout}s; got {self.events!r}")
            await self._poll()

    async def settle(self, user_id: str) -> list[dict[str, Any]]:
        """Every event for ``user_id`` so far: a marker with the same key comes after them all."""
        marker = {"type": "test_marker", "user_id": user_id, "n": len(self.records)}
        await self.api.keys.events.publish_encoded(user_id, orjson.dumps(marker))
        await self.until(lambda e: e == marker)
        return [
            e for e in self.events if e.get("user_id") == user_id and e["type"] != "test_marker"
        ]


@pytest.fixture
async def events(api: KeysApi) -> AsyncIterator[EventLog]:
    settings = api.settings
    consumer = kafka_consumer(settings, (), group_id=None)  # type: ignore[arg-type]
    await consumer.start()
    topic = Topics(settings).events
    consumer.assign([TopicPartition(topic, p) for p in range(settings.kafka_partitions)])
    yield EventLog(consumer, api)
    await consumer.stop()


class Broadcasts:
    """What the key directory says on the revocation channel (gateways listen there)."""

    MARKER = b'{"type":"test_marker"}'

    def __init__(self, api: KeysApi) -> None:
        self.api = api
        self.channel = revocation_channel(api.settings.redis_prefix)
        self.pubsub = api.keys.store.redis.pubsub()
        self.seen: list[dict[str, Any]] = []
        self.read = 0

    async def start(self) -> None:
        await self.pubsub.subscribe(self.channel)
        await self.pubsub.get_message(timeout=1)  # the subscription's confirmation

    async def settle(self) -> list[dict[str, Any]]:
        """Every message since the last call: a marker published now arrives after them."""
        await self.api.keys.store.redis.publish(self.channel, self.MARKER)
        deadline = time.monotonic() + 20
        while True:
            msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if msg is not None:
                if msg["data"] == self.MARKER:
                    new, self.read = self.seen[self.read :], len(self.seen)
                    return new
                self.seen.append(orjson.loads(msg["data"]))
            if time.monotonic() > deadline:
                raise AssertionError(f"the marker never came back; got {self.seen!r}")


@pytest.fixture
async def broadcasts(api: KeysApi) -> AsyncIterator[Broadcasts]:
    b = Broadcasts(api)
    await b.start()
    yield b
    await b.pubsub.aclose()  # type: ignore[no-untyped-call]
