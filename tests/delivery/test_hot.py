"""The hot inbox (Redis) and its persister, against the real embedded servers (#13)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.common.clients import mongo_client, redis_client, service_db
from services.common.config import Settings
from services.delivery.store import DeliveryStore, item_id


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[DeliveryStore]:
    mongo, redis = mongo_client(settings), redis_client(settings)
    st = DeliveryStore(settings, service_db(mongo, settings, "delivery"), redis)
    await st.ensure_indexes()
    yield st
    await mongo.close()
    await redis.aclose()


def item(inbox: str, n: int = 0, sender: str = "s", cid: str | None = None) -> dict[str, Any]:
    return {
        "server_id": uuid.uuid4().hex, "inbox": inbox, "user": inbox, "device": 1,
        "kind": "message", "from": sender, "from_device": 1,
        "client_id": cid or f"c{n}", "conversation": "dm", "body": f"b{n}",
        "commitment": None, "sent_at": 0, "stored_at": time.time(),
    }  # fmt: skip


def later(store: DeliveryStore) -> float:
    """A moment when everything stored so far is due for the persister."""
    return time.time() + store.settings.hot_persist_after_s + 1


async def in_mongo(store: DeliveryStore, inbox: str) -> list[int]:
    return sorted([int(d["seq"]) async for d in store.inbox.find({"inbox": inbox}, {"seq": 1})])


async def test_new_items_live_in_redis_and_never_reach_mongodb_when_acknowledged(
    store: DeliveryStore,
) -> None:
    out = await store.store_hot([item("ann", n) for n in range(5)])
    assert [d["seq"] for d in out] == [1, 2, 3, 4, 5]
    assert await in_mongo(store, "ann") == []
    page, more = await store.page("ann", 0, 10)
    assert [d["client_id"] for d in page] == [f"c{n}" for n in range(5)] and not more
    acked = await store.acknowledge_many({"ann": 5})
    assert [d["client_id"] for d in acked["ann"]] == [f"c{n}" for n in range(5)]
    assert await store.persist_due(now=later(store)) == (0, pytest.approx(time.time() + 1, abs=5))
    assert await in_mongo(store, "ann") == []  # nothing ever written there
    assert await store.page("ann", 0, 10) == ([], False)


async def test_duplicates_are_recognised_in_redis(store: DeliveryStore) -> None:
    first = await store.store_hot([item("bob", 1, cid="x")])
    again = await store.store_hot([item("bob", 2, cid="x"), item("bob", 3, cid="y"),
                                   item("bob", 4, cid="y")])  # fmt: skip
    assert again[0]["duplicate"] is True and again[0]["seq"] == 1
    assert again[0]["server_id"] == first[0]["server_id"] and again[0]["body"] == "b1"
    assert again[1]["seq"] == 2 and "duplicate" not in again[1]
    assert again[2]["duplicate"] is True and again[2]["seq"] == 2
    # Once acknowledged, a resend is still recognised (and not pushed again).
    await store.acknowledge_many({"bob": 2})
    late = await store.store_hot([item("bob", 5, cid="x")])
    assert late[0]["duplicate"] is True and late[0]["acked"] is True
    assert await store.page("bob", 0, 10) == ([], False)


async def test_what_waits_moves_to_mongodb_and_stays_readable(store: DeliveryStore) -> None:
    """An offline device: its items are persisted after hot_persist_after_s, then
    a page reads them from MongoDB, in order with what is still hot."""
    await store.store_hot([item("cat", n) for n in range(3)])
    assert await store.persist_due(now=time.time()) == (0, pytest.approx(time.time(), abs=60))
    written, until = await store.persist_due(now=later(store))
    assert written == 3 and until is not None
    assert await in_mongo(store, "cat") == [1, 2, 3]
    assert await store.hot.get("cat", [1, 2, 3]) == {}
    await store.store_hot([item("cat", n) for n in range(3, 5)])  # hot again
    page, _ = await store.page("cat", 0, 10)
    assert [d["seq"] for d in page] == [1, 2, 3, 4, 5]
    acked = await store.acknowledge_many({"cat": 4})
    assert [d["seq"] for d in acked["cat"]] == [1, 2, 3, 4]
    assert await in_mongo(store, "cat") == []
    assert [d["seq"] for d in (await store.page("cat", 0, 10))[0]] == [5]


async def test_an_ack_racing_the_persister_leaves_nothing_behind(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The persister read the items, then the device acknowledged two of them (the
    ack found them still hot), then the persister inserted all three: the copies
    at or below the new watermark are deleted again, the third waits in MongoDB."""
    await store.store_hot([item("dan", n) for n in range(3)])
    read = store.hot.get_many
    raced = []

    async def get_many_then_ack(wanted: dict[str, list[int]]) -> Any:
        found = await read(wanted)
        if not raced:
            raced.append(True)
            acked = await store.acknowledge_many({"dan": 2})
            assert [d["seq"] for d in acked["dan"]] == [1, 2]
        return found

    monkeypatch.setattr(store.hot, "get_many", get_many_then_ack)
    written, _ = await store.persist_due(now=later(store))
    assert raced and written == 3
    assert await in_mongo(store, "dan") == [3]
    page, _ = await store.page("dan", 0, 10)
    assert [d["seq"] for d in page] == [3]


async def test_a_sequence_number_taken_by_another_message_moves_the_new_one(
    store: DeliveryStore,
) -> None:
    """Overlapping reservations (two consumers during a rebalance) never overwrite."""
    await store.store_hot([item("eve", 1, cid="a")])
    await store.counters.update_one({"_id": "eve"}, {"$set": {"n": 0}})  # a stale counter
    out = await store.store_hot([item("eve", 2, cid="b")])
    assert out[0]["seq"] == 2 and out[0]["_id"] == item_id("eve", 2)
    page, _ = await store.page("eve", 0, 10)
    assert [(d["seq"], d["client_id"]) for d in page] == [(1, "a"), (2, "b")]
