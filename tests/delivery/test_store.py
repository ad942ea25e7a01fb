"""The inbox store against the real embedded MongoDB and Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.common.clients import mongo_client, redis_client, service_db
from services.common.config import Settings
from services.delivery.store import DeliveryStore, inbox_id


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[DeliveryStore]:
    mongo, redis = mongo_client(settings), redis_client(settings)
    st = DeliveryStore(settings, service_db(mongo, settings, "delivery"), redis)
    await st.ensure_indexes()
    yield st
    await mongo.close()
    await redis.aclose()


def item(user: str, seq: int, sender: str = "s", cid: str | None = None) -> dict[str, Any]:
    return {
        "_id": inbox_id(user, seq), "server_id": uuid.uuid4().hex, "user": user, "seq": seq,
        "kind": "message", "from": sender, "client_id": cid or f"c{seq}", "conversation": "dm",
        "body": f"b{seq}", "commitment": None, "sent_at": 0, "acked": False,
    }  # fmt: skip


async def ack(store: DeliveryStore, user: str, seq: int) -> list[dict[str, Any]]:
    return (await store.acknowledge_many({user: seq}))[user]


async def test_sequence_numbers_are_reserved_in_blocks(store: DeliveryStore) -> None:
    assert await store.reserve("u1", 3) == 1
    assert await store.reserve("u1", 2) == 4
    assert await store.reserve("u2", 1) == 1


async def test_duplicates_return_the_earlier_copy(store: DeliveryStore) -> None:
    await store.reserve("bob", 3)
    first = await store.insert([item("bob", 1, cid="x")])
    again = await store.insert([item("bob", 2, cid="x"), item("bob", 3, cid="y")])
    assert first[0]["seq"] == 1
    assert again[0]["seq"] == 1 and again[0]["duplicate"] is True
    assert again[1]["seq"] == 3
    page, more = await store.page("bob", 0, 10)
    assert [d["seq"] for d in page] == [1, 3]
    assert more is False


async def test_acks_are_cumulative_idempotent_and_per_user(store: DeliveryStore) -> None:
    await store.reserve("bob", 7)
    await store.reserve("eve", 1)
    await store.insert([item("bob", s) for s in range(1, 6)] + [item("eve", 1, cid="e1")])
    assert [d["client_id"] for d in await ack(store, "bob", 3)] == ["c1", "c2", "c3"]
    assert await ack(store, "bob", 2) == []
    assert await ack(store, "bob", 3) == []
    assert [d["client_id"] for d in await ack(store, "bob", 9)] == ["c4", "c5"]
    assert (await store.page("bob", 0, 10))[0] == []
    # Bob's acks never touched Eve's inbox.
    assert [d["seq"] for d in (await store.page("eve", 0, 10))[0]] == [1]
    # A tombstone keeps a redelivered record from being stored again.
    again = await store.insert([item("bob", 7, cid="c2")])
    assert again[0]["duplicate"] is True
    assert (await store.page("bob", 0, 10))[0] == []


async def test_pages_follow_the_cursor(store: DeliveryStore) -> None:
    await store.reserve("pat", 9)  # seq 8 and 9 never stored (a gap, as after a duplicate)
    await store.insert([item("pat", s) for s in range(1, 8)])
    page, more = await store.page("pat", 2, 3)
    assert [d["seq"] for d in page] == [3, 4, 5]
    assert more is True
    page, more = await store.page("pat", 5, 3)
    assert [d["seq"] for d in page] == [6, 7]
    page, more = await store.page("pat", 7, 3)
    assert page == []
    assert more is False


async def test_many_users_are_acknowledged_in_one_call(store: DeliveryStore) -> None:
    for user in ("ann", "ben", "cat"):
        await store.reserve(user, 3)
        await store.insert([item(user, s, cid=f"{user}{s}") for s in range(1, 4)])
    acked = await store.acknowledge_many({"ann": 2, "ben": 3, "cat": 0, "nobody": 5})
    assert [d["client_id"] for d in acked["ann"]] == ["ann1", "ann2"]
    assert [d["client_id"] for d in acked["ben"]] == ["ben1", "ben2", "ben3"]
    assert acked["cat"] == [] and acked["nobody"] == []
    assert [d["seq"] for d in (await store.page("ann", 0, 10))[0]] == [3]
    assert [d["seq"] for d in (await store.page("cat", 0, 10))[0]] == [1, 2, 3]


async def test_a_taken_sequence_number_fails_loudly_instead_of_dropping(
    store: DeliveryStore,
) -> None:
    from services.delivery.store import SequenceCollision

    await store.reserve("zoe", 1)
    await store.insert([item("zoe", 1, cid="first")])
    # A new message (new client id) given a seq that is already used:
    with pytest.raises(SequenceCollision):
        await store.insert([item("zoe", 1, cid="second")])
    # Retried with a fresh number, it is stored.
    seq = await store.reserve("zoe", 1)
    assert (await store.insert([item("zoe", seq, cid="second")]))[0]["seq"] == 2


async def test_old_tombstones_are_purged_and_waiting_items_kept(store: DeliveryStore) -> None:
    await store.reserve("tom", 3)
    await store.insert([item("tom", s) for s in range(1, 4)])
    await ack(store, "tom", 2)
    assert await store.purge_tombstones(older_than_s=3600) == 0  # too young
    assert await store.purge_tombstones(older_than_s=-1) == 2
    assert [d["seq"] for d in (await store.page("tom", 0, 10))[0]] == [3]
