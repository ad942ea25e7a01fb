"""Gaps in an inbox's sequence numbers (numbers handed out and never used) cost a page
or an ack a bounded number of reads, whatever their length; and a repeat of a message
takes no number at all.

Audit finding: every item of a batch took a number before the dedup look-up, a
repeat's left unused; a repeat raises no waiting count, so no cap refuses it, and a
sender resending one message at the allowed rate grew a gap in the recipient's
inbox without limit. Pages walked it a chunk at a time (200,000 repeats: a page of
one item was 1,000 MongoDB and 1,000 Redis round trips; a million, past the gateway's
timeout: the device never synced), and an ack across it listed every number (25 MB).
Gaps built here by raising the counter directly, as those repeats left it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from parley_contract import envelopes as e
from prometheus_client import CollectorRegistry
from pymongo import AsyncMongoClient, monitoring

from services.common.clients import redis_client, service_db
from services.common.config import Settings
from services.delivery import hot as hot_module
from services.delivery.store import DeliveryStore
from services.delivery.worker import Worker
from tests.delivery.conftest import item, later


class Reads(monitoring.CommandListener):
    """Counts the MongoDB commands that read the inbox."""

    def __init__(self) -> None:
        self.count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in ("find", "aggregate", "getMore"):
            self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
async def counted(settings: Settings) -> AsyncIterator[tuple[DeliveryStore, Reads, list[int]]]:
    """A store whose MongoDB reads and Redis round trips are counted."""
    reads = Reads()
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongo_url, event_listeners=[reads]
    )
    redis = redis_client(settings)
    st = DeliveryStore(settings, service_db(mongo, settings, "delivery"), redis)
    await st.ensure_indexes()
    trips = [0]
    call = redis._call  # type: ignore[attr-defined]

    async def counting(*args: Any, **kwargs: Any) -> Any:
        trips[0] += 1
        return await call(*args, **kwargs)

    redis._call = counting  # type: ignore[attr-defined]
    yield st, reads, trips
    await mongo.close()
    await redis.aclose()


async def _gap(store: DeliveryStore, inbox: str, numbers: int) -> None:
    """Hand out ``numbers`` numbers nothing is stored under (what repeats left)."""
    await store.redis.hincrby(store.ctr.key(inbox), "n", numbers)


def _env(cid: str) -> e.MessageEnvelope:
    return e.MessageEnvelope(
        server_id=e.message_server_id("mal", cid), to="vic", to_device=1, from_="mal",
        client_id=cid, conversation="dm:mal:vic", sent_at=int(time.time() * 1000),
        from_device=1, body="QUFBQQ",
    )  # fmt: skip


async def test_repeats_of_a_message_take_no_sequence_numbers(
    store: DeliveryStore, settings: Settings
) -> None:
    worker = Worker(settings, store, CollectorRegistry(), None)  # type: ignore[arg-type]
    await worker._store_items([_env("real-1")], time.time())
    for _ in range(20):  # one message resent 10,000 times, in batches of 500
        await worker._store_items([_env("spam")] * 500, time.time())
    assert (await store.ctr.get(["vic.1"]))["vic.1"].n == 2  # real-1, spam: once each
    await worker._store_items([_env("real-2")], time.time())
    page, more = await store.page("vic.1", 0, 10)
    assert [(d["seq"], d["client_id"]) for d in page] == [(1, "real-1"), (2, "spam"),
                                                         (3, "real-2")]  # fmt: skip
    assert more is False


async def test_a_page_over_a_gap_of_a_million_numbers_makes_a_few_reads(
    counted: tuple[DeliveryStore, Reads, list[int]],
) -> None:
    store, reads, trips = counted
    await store.store_hot([item("gap", 0, cid="before")])
    await _gap(store, "gap", 1_000_000)
    await store.store_hot([item("gap", 1, cid="cold")])
    await store.persist_due(now=later(store))  # both in MongoDB
    await _gap(store, "gap", 1_000_000)
    await store.store_hot([item("gap", 2, cid="hot")])
    reads.count, trips[0] = 0, 0
    page, more = await store.page("gap", 0, 10)
    assert [(d["seq"], d["client_id"]) for d in page] == [
        (1, "before"), (1_000_002, "cold"), (2_000_003, "hot")
    ]  # fmt: skip
    assert more is False
    # Two gaps: each costs a chunk that holds nothing and a look for the next item.
    assert reads.count <= 8 and trips[0] <= 16, (reads.count, trips[0])  # 6 and 11 now
    reads.count, trips[0] = 0, 0
    page, more = await store.page("gap", 1, 10)
    assert [d["client_id"] for d in page] == ["cold", "hot"] and more is False
    assert reads.count <= 5 and trips[0] <= 10, (reads.count, trips[0])


async def test_an_ack_over_a_gap_of_a_million_numbers_makes_a_few_reads(
    counted: tuple[DeliveryStore, Reads, list[int]],
) -> None:
    store, reads, trips = counted
    await store.store_hot([item("gack", 0, sender="s", cid="cold")])
    await store.persist_due(now=later(store))
    await _gap(store, "gack", 1_000_000)
    await store.store_hot([item("gack", 1, sender="s", cid="hot")])
    reads.count, trips[0] = 0, 0
    acked = await store.acknowledge_many({"gack": 1_000_002})
    assert [d["client_id"] for d in acked["gack"]] == ["cold", "hot"]
    # One ack script (the hot hash's fields read, not a million numbers: 500 calls of
    # 2,000), the copies in MongoDB by an _id range (not a million ids: 2,000 finds).
    assert reads.count <= 2 and trips[0] <= 4, (reads.count, trips[0])
    assert await store.inbox.count_documents({"inbox": "gack"}) == 0
    assert await store.redis.hgetall(f"{store.prefix}:pending:{{gack}}") == {}
    assert await store.page("gack", 0, 10) == ([], False)


async def test_pages_over_many_gaps_return_every_item_once_in_order(
    store: DeliveryStore,
) -> None:
    """Items 1,000 numbers apart, the first half persisted: a page runs out of reads
    and says ``more``; paging on from its last item returns each item once, in order."""
    for i in range(40):
        await _gap(store, "many", 999)
        await store.store_hot([item("many", i, cid=f"m{i}")])
        if i == 19:
            await store.persist_due(now=later(store))
    got: list[int] = []
    after, pages = 0, 0
    while True:
        page, more = await store.page("many", after, 50)
        pages += 1
        got += [d["seq"] for d in page]
        if not more:
            break
        assert page, "a page that says more returns something"
        after = page[-1]["seq"]
    assert got == [1000 * (i + 1) for i in range(40)]
    assert pages > 1


@pytest.mark.parametrize("bound", [20, 2000])
async def test_a_page_over_a_wide_gap_and_a_large_hot_hash_is_never_empty_with_more(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch, bound: int
) -> None:
    """Review finding: with more than NEXT_HOT_MOST items hot (each look for the next item
    then covers that many numbers) and a gap wider than PAGE_STEPS looks, a page came
    back empty with ``more``; the client asks again from the same place, for ever. At
    the real bound: 2,005 items hot past a gap of 100,000 numbers."""
    monkeypatch.setattr(hot_module, "NEXT_HOT_MOST", bound)
    inbox = "wide.1"
    await store.store_hot([item(inbox, 0, cid="first")])
    await store.acknowledge_many({inbox: 1})
    await store.redis.hincrby(store.ctr.key(inbox), "n", 50 * bound)  # a gap, as repeats left
    for s in range(0, bound + 5, 500):
        await store.store_hot(
            [item(inbox, i, cid=f"h{i}") for i in range(s, min(s + 500, bound + 5))]
        )
    seen: list[str] = []
    after = 1
    while True:
        page, more = await store.page(inbox, after, 100)
        assert page or not more
        seen += [d["client_id"] for d in page]
        if not more:
            break
        after = page[-1]["seq"]
    assert seen == [f"h{i}" for i in range(bound + 5)]


async def test_a_drop_and_the_expiry_over_a_gap_of_a_million_numbers_make_a_few_reads(
    counted: tuple[DeliveryStore, Reads, list[int]],
) -> None:
    """The shared walks too (review): removing a device's inbox listed every number
    issued past its watermark (a million ids, 2,000 deletes, one ZREM of a million
    members over a gap a resent message left), and the hourly expiry read the gap 500
    numbers at a time. Both read by ``_id`` range now."""
    store, reads, trips = counted
    await store.store_hot([item("gdrop", 0, cid="old")])
    await store.persist_due(now=later(store))
    await store.inbox.update_one({"inbox": "gdrop"}, {"$set": {"stored_at": 0}})  # expired
    await _gap(store, "gdrop", 1_000_000)
    await store.store_hot([item("gdrop", 1, cid="cold")])
    await store.persist_due(now=later(store))
    await _gap(store, "gdrop", 1_000_000)
    await store.store_hot([item("gdrop", 2, cid="hot")])
    reads.count, trips[0] = 0, 0
    counter = (await store.ctr.get(["gdrop"]))["gdrop"]
    cutoff = time.time() - store.settings.inbox_expiry_s
    assert await store._purge_inbox("gdrop", counter, cutoff) == 1  # "old", not "cold"
    assert reads.count <= 3, reads.count  # its run, and the next up to the first kept
    page, _ = await store.page("gdrop", 0, 10)
    assert [d["client_id"] for d in page] == ["cold", "hot"]
    reads.count, trips[0] = 0, 0
    assert await store.drop_inbox("gdrop") == 1  # the persisted "cold"
    assert reads.count <= 4 and trips[0] <= 12, (reads.count, trips[0])
    assert await store.inbox.count_documents({"inbox": "gdrop"}) == 0
    assert await store.redis.hlen(store.hot.key("gdrop")) == 0
    assert await store.page("gdrop", 0, 10) == ([], False)
