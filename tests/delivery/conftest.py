"""The delivery store against the real embedded MongoDB and Redis: its fixture and items."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.common.clients import mongo_client, redis_client, service_db
from services.common.config import Settings
from services.common.routing import Push
from services.delivery.store import DeliveryStore


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[DeliveryStore]:
    mongo, redis = mongo_client(settings), redis_client(settings)
    st = DeliveryStore(settings, service_db(mongo, settings, "delivery"), redis)
    await st.ensure_indexes()
    yield st
    await mongo.close()
    await redis.aclose()


def item(inbox: str, n: int = 0, sender: str = "s", cid: str | None = None) -> dict[str, Any]:
    """An item as the worker hands it to ``store_hot`` (no ``_id``/``seq`` yet)."""
    return {
        "server_id": uuid.uuid4().hex, "inbox": inbox, "user": inbox, "device": 1,
        "kind": "message", "from": sender, "from_device": 1,
        "client_id": cid or f"c{n}", "conversation": "dm", "body": f"b{n}",
        "commitment": None, "sent_at": 0, "stored_at": time.time(),
    }  # fmt: skip


async def counts(store: DeliveryStore, inbox: str) -> dict[str, int]:
    """An inbox's waiting counts (``"*"`` and one per sender)."""
    raw = await store.redis.hgetall(f"{store.prefix}:pending:{{{inbox}}}")
    return {k.decode(): int(v) for k, v in raw.items()}


async def in_mongo(store: DeliveryStore, inbox: str) -> list[int]:
    """The numbers of an inbox's copies in MongoDB."""
    return sorted([int(d["seq"]) async for d in store.inbox.find({"inbox": inbox}, {"seq": 1})])


def later(store: DeliveryStore) -> float:
    """A time past which every item stored now is due to be persisted."""
    return time.time() + store.settings.hot_persist_after_s + 1


@pytest.fixture
async def impatient(settings: Settings) -> AsyncIterator[DeliveryStore]:
    """A store whose Redis replies are given up on after half a second."""
    s = settings.model_copy(update={"dependency_timeout_ms": 500})
    mongo, redis = mongo_client(s), redis_client(s)
    st = DeliveryStore(s, service_db(mongo, s, "delivery"), redis)
    await st.ensure_indexes()
    yield st
    await redis.aclose()
    await mongo.close()


def receipts_of(store: DeliveryStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The client ids of the `delivered` receipts the store publishes from now on."""
    sent: list[str] = []
    publish = store.publish

    async def recorded(frames: list[Push], where: Any = None) -> int:
        sent.extend(str(getattr(frame, "id", "")) for _, _, frame in frames)
        return await publish(frames, where)

    monkeypatch.setattr(store, "publish", recorded)
    return sent
