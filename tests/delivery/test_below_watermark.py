"""Acknowledged copies left in MongoDB below their inbox's watermark are deleted, their
waiting counts lowered once and their `delivered` receipts sent.

Audit finding: the expiry job walked each inbox from its watermark up, so a copy
below it stayed for good, counted as waiting (docs/delivery.md said it expired).
Three ways one gets there: the ack's script ran and its reply came late (FastRedis
sent the script again, which found the range acknowledged and did nothing more);
a persister pass inserted its items and failed to take them out of Redis, and the
device acknowledged them hot; the process died between the ack's script and its
MongoDB delete.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.delivery.store import SWEEP_PER_INBOX, DeliveryStore
from tests.common.test_fastredis import late_reply
from tests.delivery.conftest import counts, in_mongo, item, later, receipts_of


async def moved_long_ago(store: DeliveryStore, inbox: str) -> None:
    """The copies were persisted an hour ago (not moments ago: a copy moved in the last
    seconds is left to its persister's own clean-up)."""
    await store.inbox.update_many({"inbox": inbox}, {"$set": {"moved_at": time.time() - 3600}})


def _ack_script(payload: bytes) -> bool:
    """The inbox's ack script (its keys: the persister's index and the dirty set)."""
    return b"EVALSHA" in payload and b"ctrdirty" in payload and b"hotidx" in payload


async def test_an_ack_sent_again_after_a_late_reply_deletes_what_its_first_run_left(
    impatient: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ack's script ran (watermark raised, the hot item taken and counted) and its
    reply came late. It is no longer sent again by the client (services/common/
    fastredis.py): the ack fails; the device acks again, the script says the range
    is acknowledged, and its persisted copies are deleted all the same."""
    store = impatient
    await store.store_hot([item("late", n, cid=f"c{n}") for n in range(3)])
    await store.persist_due(now=later(store))  # 1..3 wait in MongoDB
    await moved_long_ago(store, "late")
    await store.store_hot([item("late", 9, cid="hot")])  # 4 is hot
    assert await counts(store, "late") == {"*": 4, "s": 4}
    sent = receipts_of(store, monkeypatch)
    with late_reply(_ack_script) as state, pytest.raises(RedisTimeoutError):
        await store.acknowledge_many({"late": 4}, {})
    assert state["sent"] == 1  # the script ran once
    assert (await store.ctr.get(["late"]))["late"].acked == 4
    acked = await store.acknowledge_many({"late": 4}, {})  # the device's ack, again
    assert [d["client_id"] for d in acked["late"]] == ["c0", "c1", "c2"]
    assert await in_mongo(store, "late") == []
    assert await counts(store, "late") == {}
    assert sent == []  # the handler publishes what acknowledge_many returns
    assert (await store.acknowledge_many({"late": 4}, {}))["late"] == []  # once


async def test_copies_left_below_the_watermark_are_deleted_by_the_upkeep(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ack's script ran, then the process died before its MongoDB delete."""
    await store.store_hot([item("bw", n, cid=f"c{n}") for n in range(3)])
    await store.store_hot([item("other", n, cid=f"o{n}") for n in range(2)])
    await store.persist_due(now=later(store))
    await moved_long_ago(store, "bw")
    await moved_long_ago(store, "other")
    await store.ctr.ack_hot({"bw": 3, "other": 1})  # acknowledge_many's first step; the kill
    assert await in_mongo(store, "bw") == [1, 2, 3]
    sent = receipts_of(store, monkeypatch)
    assert await store.sweep_acked() == 4
    assert await in_mongo(store, "bw") == []
    assert await in_mongo(store, "other") == [2]  # still waiting
    assert await counts(store, "bw") == {}
    assert await counts(store, "other") == {"*": 1, "s": 1}
    assert sorted(sent) == ["c0", "c1", "c2", "o0"]
    assert await store.sweep_acked() == 0  # once
    assert [d["seq"] for d in (await store.page("other", 0, 10))[0]] == [2]


async def test_a_pass_that_failed_taking_its_items_out_of_redis_cleans_up_the_next(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass inserted its items into MongoDB and failed taking them out of Redis; the
    device acknowledged them while they were hot (the ack never looks in MongoDB
    for those). The next pass deletes those copies, and counts nothing twice."""
    await store.store_hot([item("cut", n, cid=f"c{n}") for n in range(3)])
    remove = store.hot.remove

    async def fails(items: Any) -> list[bool]:
        raise RedisConnectionError("Redis went away")

    monkeypatch.setattr(store.hot, "remove", fails)
    with pytest.raises(RedisConnectionError):
        await store.persist_due(now=later(store))
    monkeypatch.setattr(store.hot, "remove", remove)
    assert await in_mongo(store, "cut") == [1, 2, 3]
    acked = await store.acknowledge_many({"cut": 3})
    assert [d["client_id"] for d in acked["cut"]] == ["c0", "c1", "c2"]
    assert await counts(store, "cut") == {}
    sent = receipts_of(store, monkeypatch)
    await store.persist_due(now=later(store))
    assert await in_mongo(store, "cut") == []
    assert await counts(store, "cut") == {}
    assert sent == []  # the ack sent theirs


async def test_the_upkeep_walks_many_inboxes_a_bounded_number_a_run(
    store: DeliveryStore,
) -> None:
    """300 inboxes with copies below their watermark and one waiting each, written
    directly: runs of 100 inboxes go on where the last stopped, and together delete
    every copy below a watermark and none above."""
    docs = []
    for i in range(300):
        inbox = f"many{i:03d}.1"
        for seq in (1, 2, 3):
            docs.append({**item(inbox, seq, cid=f"{i}.{seq}"), "_id": f"{inbox}|{seq:016d}",
                         "seq": seq, "acked": False, "moved_at": 0})  # fmt: skip
        await store.redis.hset(store.ctr.key(inbox), mapping={"n": 3, "acked": 2})
        await store.redis.hset(f"{store.prefix}:pending:{{{inbox}}}", mapping={"*": 3, "s": 3})
    await store.inbox.insert_many(docs)
    deleted = [await store.sweep_acked(inboxes=100) for _ in range(4)]
    assert sum(deleted) == 600 and deleted[-1] == 0, deleted
    left = [d["_id"] async for d in store.inbox.find({"inbox": {"$regex": "^many"}})]
    assert sorted(left) == [f"many{i:03d}.1|{3:016d}" for i in range(300)]
    assert await counts(store, "many042.1") == {"*": 1, "s": 1}


async def test_an_inbox_of_thirty_thousand_copies_left_below_its_watermark_is_swept(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At size: an ack of 30,000 persisted items whose MongoDB delete was cut short (the
    process killed after its script), ten items still waiting after them. The upkeep
    takes a bounded share a run (SWEEP_PER_INBOX), goes on where it stopped, and in the
    end has deleted every acknowledged copy once, each counted down once with one
    receipt, and none of the waiting ones, which still page."""
    inbox, n, waiting = "big.1", 30_000, 10
    docs = [
        {**item(inbox, seq, cid=f"c{seq}"), "_id": f"{inbox}|{seq:016d}", "seq": seq,
         "acked": False, "moved_at": 0}
        for seq in range(1, n + waiting + 1)
    ]  # fmt: skip
    for i in range(0, len(docs), 5_000):
        await store.inbox.insert_many(docs[i : i + 5_000])
    await store.redis.hset(store.ctr.key(inbox), mapping={"n": n + waiting, "acked": n})
    await store.redis.hset(
        f"{store.prefix}:pending:{{{inbox}}}", mapping={"*": n + waiting, "s": n + waiting}
    )
    sent = receipts_of(store, monkeypatch)
    runs = []
    while deleted := await store.sweep_acked():
        runs.append(deleted)
        assert deleted <= SWEEP_PER_INBOX
    assert sum(runs) == n and len(sent) == len(set(sent)) == n
    assert await in_mongo(store, inbox) == list(range(n + 1, n + waiting + 1))
    assert await counts(store, inbox) == {"*": waiting, "s": waiting}
    page, more = await store.page(inbox, n, 100)
    assert [d["seq"] for d in page] == list(range(n + 1, n + waiting + 1)) and not more
