"""Review of 25e52b9: what reads MongoDB by ``_id`` range steps over the skipped ranges,
a dropped inbox earns no receipt, the shadow grace outlasts the clocks' skew, and the
look for the next hot item is bounded.

Findings: a wide ack (and the upkeep, and the drain of a deferred wide ack) read every
copy from the watermark to its top, so a copy numbered inside a range a Redis loss
skipped (never paged) was deleted and its sender told `delivered`; a persister pass
landing between ``drop_inbox``'s delete and its raise left a copy below the watermark
that the upkeep deleted with a `delivered` receipt; ``SHADOW_GRACE_S`` (60 s) compared
clocks allowed to be 300 s apart, and the drain of a deferred wide ack used no grace;
``_NEXT_HOT`` read every field of a hot hash of up to 100,000 items.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from services.delivery import hot as hot_module
from services.delivery.counters import GAP, format_gaps
from services.delivery.hot import DEDUP_SKEW_S
from services.delivery.store import SHADOW_GRACE_S, DeliveryStore, item_id
from tests.delivery.conftest import in_mongo, item, receipts_of


def _name() -> str:
    return f"u{uuid.uuid4().hex[:8]}.1"


def cold_doc(inbox: str, seq: int, cid: str, moved_at: float | None = None) -> dict[str, Any]:
    d = item(inbox, seq, cid=cid)
    moved = time.time() - 3600 if moved_at is None else moved_at
    d.update({"_id": item_id(inbox, seq), "seq": seq, "acked": False, "moved_at": moved})
    return d


async def _after_a_loss(store: DeliveryStore, inbox: str) -> None:
    """A counter as seeded after a loss (checkpoint 5,000, a jump of GAP), with a copy
    waiting below the range and one persisted inside it (numbered after the checkpoint,
    before the loss)."""
    await store.redis.hset(store.ctr.key(inbox), mapping={
        "n": 5000 + GAP, "acked": 5, "g": format_gaps([(5000, 5000 + GAP)])})  # fmt: skip
    await store.inbox.insert_one(cold_doc(inbox, 8, "below"))
    await store.inbox.insert_one(cold_doc(inbox, 5002, "in-gap"))


async def test_a_wide_ack_leaves_a_copy_inside_a_skipped_range(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = _name()
    await _after_a_loss(store, inbox)
    page, _ = await store.page(inbox, 0, 200)
    assert [d["client_id"] for d in page] == ["below"]  # the in-gap copy is never shown
    top = (await store.store_hot([item(inbox, 1, cid="new")]))[0]["seq"]
    sent = receipts_of(store, monkeypatch)
    acked = await store.acknowledge_many({inbox: top})  # > 2,000 numbers: by _id range
    assert sorted(d["client_id"] for d in acked[inbox]) == ["below", "new"]
    assert await in_mongo(store, inbox) == [5002]
    store._sweep_at = ""  # the upkeep steps over it too
    await store.sweep_acked()
    assert await store.acknowledge_many({inbox: top}) == {inbox: []}  # again
    assert await in_mongo(store, inbox) == [5002]
    assert "in-gap" not in sent


async def test_a_deferred_wide_ack_leaves_a_copy_inside_a_skipped_range(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same ack while MongoDB is down: its range waits as ``~<inbox>|<top>``; the
    drain steps over the skipped range."""
    inbox = _name()
    await _after_a_loss(store, inbox)
    top = (await store.store_hot([item(inbox, 1, cid="new")]))[0]["seq"]
    up = store.inbox
    down: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300"
    )
    try:
        store.inbox = down.x.inbox
        acked = await store.acknowledge_many({inbox: top})
        assert [d["client_id"] for d in acked[inbox]] == ["new"]
    finally:
        store.inbox = up
        await down.close()
    entries = await store.redis.smembers(store.cold_acks)
    assert any(e.startswith(f"~{inbox}|{top}|".encode()) for e in entries)
    drained = await store.drain_cold_acks()
    assert [d["client_id"] for d in drained if d["inbox"] == inbox] == ["below"]
    assert await in_mongo(store, inbox) == [5002]


async def test_a_copy_persisted_while_its_inbox_is_dropped_earns_no_receipt(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A persister pass read the item hot; ``drop_inbox`` deleted MongoDB's copies (none
    yet); the pass's insert landed; then the drop raised the watermark. The upkeep
    deletes that copy below the watermark, without a `delivered` receipt."""
    inbox = _name()
    seq = (await store.store_hot([item(inbox, 1, cid="never-read")]))[0]["seq"]
    hot = await store.hot.get(inbox, [seq])
    raise_acked = store.ctr.raise_acked

    async def persisted_meanwhile(tops: dict[str, int]) -> Any:
        await store.inbox.insert_one({**hot[seq], "moved_at": time.time() - 3600})
        return await raise_acked(tops)

    monkeypatch.setattr(store.ctr, "raise_acked", persisted_meanwhile)
    await store.drop_inbox(inbox)
    assert await in_mongo(store, inbox) == [seq]  # below the watermark
    sent = receipts_of(store, monkeypatch)
    store._sweep_at = ""
    await store.sweep_acked()
    assert await in_mongo(store, inbox) == []
    assert "never-read" not in sent


@pytest.mark.parametrize("skew", [-DEDUP_SKEW_S, DEDUP_SKEW_S])
async def test_a_copy_moved_moments_ago_by_a_skewed_clock_is_left_alone(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch, skew: int
) -> None:
    """A copy below the watermark whose ``moved_at`` (the mover's clock) is up to
    ``DEDUP_SKEW_S`` off now: neither the upkeep nor the drain of a deferred wide ack
    deletes it (it may be a shadow still being moved); one moved long ago goes."""
    inbox = _name()
    await store.redis.hset(store.ctr.key(inbox), mapping={"n": 3, "acked": 3})
    await store.inbox.insert_one(cold_doc(inbox, 1, "old"))
    await store.inbox.insert_one(cold_doc(inbox, 2, "young", time.time() + skew))
    await store.redis.sadd(store.cold_acks, f"~{inbox}|3")
    drained = await store.drain_cold_acks()
    assert [d["client_id"] for d in drained if d["inbox"] == inbox] == ["old"]
    store._sweep_at = ""
    await store.sweep_acked()
    assert await in_mongo(store, inbox) == [2]


async def test_a_page_past_the_hot_search_bound_returns_the_right_items(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More hot items than ``_NEXT_HOT`` reads whole (the bound made 20 here): the page
    looks 20 numbers at a time past a gap and finds what is beyond it, hot and
    persisted."""
    monkeypatch.setattr(hot_module, "NEXT_HOT_MOST", 20)
    inbox = _name()
    await store.store_hot([item(inbox, n, cid=f"a{n}") for n in range(2)])
    await store.redis.hincrby(store.ctr.key(inbox), "n", 50)  # numbers nothing took
    await store.store_hot([item(inbox, 0, cid="cold")])  # 53
    await store.persist_due(now=time.time() + 3600)
    await store.redis.hincrby(store.ctr.key(inbox), "n", 50)
    await store.store_hot([item(inbox, n, cid=f"b{n}") for n in range(25)])  # 104..128
    assert await store.hot.next_hot(inbox, 53, 500) == (None, 73)  # 20 looked at
    assert await store.hot.next_hot(inbox, 90, 500) == (104, 500)
    want = ["a0", "a1", "cold"] + [f"b{n}" for n in range(25)]
    got: list[str] = []
    after, more = 0, True
    while more:
        page, more = await store.page(inbox, after, 10)
        got += [d["client_id"] for d in page]
        after = int(page[-1]["seq"])
    assert got == want
    monkeypatch.setattr(hot_module, "NEXT_HOT_MOST", 2000)
    assert await store.hot.next_hot(inbox, 53, 500) == (104, 500)


# Review of the fixes above ------------------------------------------------------------


async def test_a_drop_sends_the_receipts_of_what_the_device_acknowledged_before_it(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drop's marker named every number up to its top, so copies the device had
    acknowledged before (left below the watermark by an ack cut short) lost their
    `delivered` receipts too. It names the range the drop found unread now."""
    inbox = _name()
    stored = await store.store_hot([item(inbox, n, cid=f"c{n}") for n in range(3)])
    await store.persist_due(now=time.time() + 3600)
    await store.inbox.update_many({"inbox": inbox}, {"$set": {"moved_at": time.time() - 3600}})
    await store.ctr.ack_hot({inbox: stored[-1]["seq"]})  # its MongoDB delete cut short
    await store.store_hot([item(inbox, 9, cid="unread")])
    await store.drop_inbox(inbox)
    sent = receipts_of(store, monkeypatch)
    store._sweep_at = ""
    await store.sweep_acked()
    assert await in_mongo(store, inbox) == []
    assert sorted(sent) == ["c0", "c1", "c2"]


async def test_an_expired_copy_inside_a_skipped_range_is_deleted_without_a_receipt(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy numbered inside a skipped range (persisted just before Redis lost the
    counter) is stepped over by every walk, so it stayed in MongoDB for good: the
    upkeep deletes it once past the inbox's expiry, as every copy, with no receipt."""
    inbox = _name()
    await store.redis.hset(
        store.ctr.key(inbox),
        mapping={"n": 5000 + GAP, "acked": 5, "g": format_gaps([(5000, 5000 + GAP)])},
    )
    expired = time.time() - store.settings.inbox_expiry_s - 60
    for seq, at in ((5002, expired), (5003, time.time() - 3600)):
        doc = item(inbox, seq, cid=f"in-gap-{seq}")
        doc.update({"_id": item_id(inbox, seq), "seq": seq, "acked": False,
                    "moved_at": at, "stored_at": at})  # fmt: skip
        await store.inbox.insert_one(doc)
    top = (await store.store_hot([item(inbox, 1, cid="new")]))[0]["seq"]
    await store.acknowledge_many({inbox: top})
    sent = receipts_of(store, monkeypatch)
    store._sweep_at = ""
    await store.sweep_acked()
    assert await in_mongo(store, inbox) == [5003]  # not expired yet: kept
    assert sent == []


async def test_a_deferred_wide_ack_drains_copies_moved_before_it(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drain of a deferred wide ack skipped every copy moved in the last
    SHADOW_GRACE_S, so one run soon after a MongoDB blip left the whole acknowledged
    backlog (counted as waiting, receipts unsent) to the hourly upkeep. Only copies
    moved after the ack (less the clocks' skew) may be shadows now."""
    inbox = _name()
    n = 2500  # wide: deferred as one ~inbox|top|at entry
    for s in range(0, n, 500):
        await store.store_hot([item(inbox, i, cid=f"p{i}") for i in range(s, s + 500)])
    await store.persist_due(now=time.time() + 3600)
    moved = time.time() - DEDUP_SKEW_S - 30  # before the ack by more than the skew
    await store.inbox.update_many({"inbox": inbox}, {"$set": {"moved_at": moved}})
    assert moved > time.time() - SHADOW_GRACE_S  # within the old grace: it was left
    top = (await store.store_hot([item(inbox, n, cid="hot")]))[0]["seq"]
    up = store.inbox
    down: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300"
    )
    try:
        store.inbox = down.x.inbox
        await store.acknowledge_many({inbox: top})
    finally:
        store.inbox = up
        await down.close()
    sent = receipts_of(store, monkeypatch)
    drained = await store.drain_cold_acks()
    assert len(drained) == n and await in_mongo(store, inbox) == []
    assert len(sent) == n and await store.redis.scard(store.cold_acks) == 0
