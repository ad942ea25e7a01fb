"""The hot inbox (Redis) and its persister, against the real embedded servers (#13)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from parley_contract import envelopes as e
from prometheus_client import CollectorRegistry
from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure, ServerSelectionTimeoutError

from services.common.config import Settings
from services.common.routing import gateway_channel, pending_key, presence_key, presence_value
from services.delivery.hot import Removal, Replicas
from services.delivery.store import DeliveryStore, dedup_key, item_id
from services.delivery.worker import Worker
from services.gateway.acks import DirectAcks
from tests.delivery.conftest import in_mongo, item, later


async def test_new_items_live_in_redis_and_never_reach_mongodb_when_acknowledged(
    store: DeliveryStore,
) -> None:
    out = await store.store_hot([item("ann", n) for n in range(5)])
    assert [d["seq"] for d in out] == [1, 2, 3, 4, 5]
    assert await in_mongo(store, "ann") == []
    page, more = await store.page("ann", 0, 10)
    assert [d["client_id"] for d in page] == [f"c{n}" for n in range(5)] and not more
    assert len(await store.hot.due(time.time() + 1, 100)) == 5  # the persister's to look at
    acked = await store.acknowledge_many({"ann": 5})
    assert [d["client_id"] for d in acked["ann"]] == [f"c{n}" for n in range(5)]
    assert await store.hot.due(time.time() + 1, 100) == []  # the ack's script took them out
    assert await store.persist_due(now=later(store)) == (0, pytest.approx(time.time() + 1, abs=5))
    assert await in_mongo(store, "ann") == []  # nothing ever written there
    assert await store.page("ann", 0, 10) == ([], False)


async def test_writes_go_on_unconfirmed_when_no_replica_answers_and_stop_waiting_awhile(
    store: DeliveryStore,
) -> None:
    """PARLEY_REDIS_WAIT_REPLICAS set, and this Redis has no replica: the first write
    waits its timeout, is stored all the same and counted unconfirmed; the next ones do
    not wait (a replica down must not cost a timeout per batch), and are counted too.
    The failover itself: tests/messaging/test_redis_failover.py."""
    short: list[int] = []
    store.hot.replicas = Replicas(wanted=1, timeout_ms=50, on_short=short.append)
    first = await store.store_hot([item("unc", n) for n in range(3)])
    assert short == [3] and [d["seq"] for d in first] == [1, 2, 3]
    assert store.hot.replicas.due() is False
    second = await store.store_hot([item("unc", 3)])
    assert short == [3, 1] and second[0]["seq"] == 4  # no wait, counted all the same
    assert [d["seq"] for d in (await store.page("unc", 0, 10))[0]] == [1, 2, 3, 4]
    store.hot.replicas._pause_until = 0.0  # the pause over: writes wait again
    assert store.hot.replicas.due() is True
    await store.store_hot([item("unc", 4)])
    assert short == [3, 1, 1]


async def test_an_item_written_under_a_number_the_counter_lacks_raises_it(
    store: DeliveryStore,
) -> None:
    """A write sent again after a failover (redis-py retries a pipeline on a fresh
    connection) can reach a primary without the reservation made a round trip before:
    the item lands under a number past the counter, and pages stopped at the counter,
    so it was never read. The write raises the counter to it."""
    [first] = await store.store_hot([item("rsv", 0)])
    assert first["seq"] == 1
    doc = {**item("rsv", 1), "seq": 2, "_id": item_id("rsv", 2)}
    clashes, _ = await store.hot.put([(dedup_key("rsv", "s", "c1"), doc)], time.time())
    assert not clashes
    assert int(await store.redis.hget(store.ctr.key("rsv"), "n")) == 2
    page, _ = await store.page("rsv", 0, 10)
    assert [d["seq"] for d in page] == [1, 2]
    [third] = await store.store_hot([item("rsv", 2)])
    assert third["seq"] == 3  # the next number is past it


async def test_an_item_written_to_an_inbox_without_a_counter_seeds_and_raises_it(
    store: DeliveryStore,
) -> None:
    """The same retry after a failover that lost the inbox's first seeding too: the
    promoted replica holds no counter at all. The write has it seeded and raised
    before the item is confirmed, so a page finds it and the next number is past it."""
    first = await store.reserve("new", 1)
    await store.redis.delete(store.ctr.key("new"))  # the replica never had it
    doc = {**item("new", 0), "seq": first, "_id": item_id("new", first)}
    clashes, _ = await store.hot.put([(dedup_key("new", "s", "c0"), doc)], time.time())
    assert not clashes
    assert int(await store.redis.hget(store.ctr.key("new"), "n")) == first
    assert await store.redis.sismember(f"{store.prefix}:ctrdirty", "new")
    # The batch consumed again after that seeding failed: it finds its item written
    # (its dedup record), so it is not written again, and the counter is made sure of.
    await store.redis.delete(store.ctr.key("new"))
    [again] = await store.store_hot([{**item("new", 0), "client_id": "c0"}])
    assert again["duplicate"] is True and again["seq"] == first
    assert int(await store.redis.hget(store.ctr.key("new"), "n")) == first
    page, _ = await store.page("new", 0, 10)
    assert [d["seq"] for d in page] == [first]
    [second] = await store.store_hot([item("new", 1)])
    assert second["seq"] == first + 1


async def test_an_item_numbered_below_the_ack_watermark_takes_a_fresh_number(
    store: DeliveryStore,
) -> None:
    """A rebalance: the old owner of the partition reserved a number, the new owner
    stored a later message, the device acknowledged it, and then the old owner wrote
    its item under the number it reserved, below the watermark: pages start past it,
    so the device never read it. It takes a fresh number now."""
    stale = await store.reserve("ovl", 1)  # the old owner's reservation ...
    [newer] = await store.store_hot([item("ovl", 9)])  # ... the new owner's message
    assert newer["seq"] == stale + 1
    await store.acknowledge_many({"ovl": newer["seq"]})
    [late] = (await store.store_and_route([item("ovl", 1)], numbers={"ovl": stale}))[0]
    assert late["seq"] == newer["seq"] + 1
    page, _ = await store.page("ovl", newer["seq"], 10)
    assert [d["seq"] for d in page] == [late["seq"]]


async def test_an_index_entry_whose_write_is_still_under_way_is_kept(
    store: DeliveryStore,
) -> None:
    """A write's index entry goes first, with the time taken before its first try; a
    write redis-py sends again after a connection error can land seconds later. The
    persister dropped every entry whose item it did not find: such an item was left
    unindexed, never moved to MongoDB, and its Kafka record committed past. An entry
    without its item is now dropped only once no write can still be under way."""
    from services.delivery.store import ORPHAN_GRACE_S

    [first] = await store.store_hot([item("late", 0)])
    seq = first["seq"] + 1
    stored_at = later(store) - store.settings.hot_persist_after_s - 1
    await store.redis.zadd(store.hot.index, {f"late|{seq}": stored_at})  # ... and the
    await store.persist_due(now=later(store))  # persister passes before the item lands
    assert await store.redis.zscore(store.hot.index, f"late|{seq}") is not None
    doc = {**item("late", 1), "seq": seq, "_id": item_id("late", seq)}
    await store.hot.put([(dedup_key("late", "s", "c1"), doc)], stored_at)  # it lands
    await store.persist_due(now=later(store))
    assert await in_mongo(store, "late") == [first["seq"], seq]
    # A write cut short for good: its entry goes once the grace is over.
    await store.redis.zadd(store.hot.index, {"late|99": stored_at})
    await store.persist_due(now=later(store) + ORPHAN_GRACE_S + 1)
    assert await store.redis.zscore(store.hot.index, "late|99") is None


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


async def test_a_removal_racing_the_persister_never_shows_the_copy_it_leaves(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The persister read three items, then the second's message was removed (its
    hot copy taken, a marker left), then the persister inserted all three: until it
    deletes that copy again, a page reading MongoDB does not return it."""
    stored = await store.store_hot([item("fay", n) for n in range(3)])
    second = stored[1]
    read, remove = store.hot.get_many, store.hot.remove
    pages: list[list[int]] = []

    async def get_many_then_unsend(wanted: dict[str, list[int]]) -> Any:
        found = await read(wanted)
        removal = Removal("fay", 2, second["server_id"], second["from"])
        if not pages:
            assert await store.remove_copies([removal]) == 1
        return found

    async def page_then_remove(items: Any) -> list[bool]:
        items = list(items)
        taken = await remove(items)
        # The persister's window: the removed copy is in MongoDB, not yet deleted.
        assert 2 in await in_mongo(store, "fay")
        pages.append([d["seq"] for d in (await store.page("fay", 0, 10))[0]])
        return taken

    monkeypatch.setattr(store.hot, "get_many", get_many_then_unsend)
    monkeypatch.setattr(store.hot, "remove", page_then_remove)
    written, _ = await store.persist_due(now=later(store))
    assert written == 3
    assert pages == [[1, 3]]
    assert await in_mongo(store, "fay") == [1, 3]  # and then it was deleted


async def test_a_removed_message_stored_twice_loses_both_copies(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a Redis loss a message can wait twice in one inbox: the copy persisted
    before the loss (MongoDB, its old seq) and the one the replay stored again (hot,
    a new seq: the dedup record went with Redis). Its removal finds the hot one; the
    other was left in MongoDB and came back in pages. Now both go, each counted
    once; with MongoDB down the hot one still goes."""
    stored = await store.store_hot([item("ina", n) for n in range(2)])
    await store.persist_due(now=later(store))  # seq 1, 2: in MongoDB
    first = stored[0]
    spans = store.hot.dedup.spans(time.time())
    await store.redis.delete(*[store.hot.dedup.key("ina", n) for n in spans])  # lost
    again = await store.store_hot([{**item("ina", 0), "server_id": first["server_id"]}])
    assert again[0]["seq"] == 3 and "duplicate" not in again[0]
    counts = pending_key(store.prefix, "ina")
    assert int(await store.redis.hget(counts, "*")) == 3
    assert await store.remove_copies([Removal("ina", 3, first["server_id"], "s")]) == 2
    page, _ = await store.page("ina", 0, 10)
    assert [d["seq"] for d in page] == [2]
    assert await in_mongo(store, "ina") == [2]
    assert int(await store.redis.hget(counts, "*")) == 1

    # MongoDB down: the hot copy of another message still goes (no MongoDB needed),
    # and the next removals found hot do not ask MongoDB again for a while (each
    # look would hold their batch for the server selection timeout).
    late = await store.store_hot([item("ina", 5), item("ina", 6)])
    up, cold_copies = store.inbox, store._cold_copies
    looks: list[int] = []

    async def counted(wanted: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
        looks.append(len(wanted))
        return await cold_copies(wanted)

    down: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300"
    )
    monkeypatch.setattr(store, "_cold_copies", counted)
    try:
        store.inbox = down.x.inbox
        for doc in late:
            removal = Removal("ina", doc["seq"], doc["server_id"], "s")
            assert await asyncio.wait_for(store.remove_copies([removal]), 10) == 1
        assert looks == [1]  # the second removal did not look
        # A removal that needs MongoDB (its copy is not hot) is left for the persister
        # (test_a_removal_that_needs_mongodb_while_it_is_down_waits_for_the_persister).
        await store.remove_copies([Removal("ina", 2, stored[1]["server_id"], "s")])
        assert looks == [1]
    finally:
        store.inbox = up
        await down.close()
    # Marked before it was left: pages leave it out until the persister deletes it.
    assert (await store.page("ina", 0, 10))[0] == []
    assert await in_mongo(store, "ina") == [2]
    assert await store.drain_cold_removals() == 1  # the persister's pass: it looks
    assert await in_mongo(store, "ina") == [] and looks == [1, 1]
    # Once MongoDB answers again (the pause over), removals found hot look again.
    store._second_look_at = 0.0
    [last] = await store.store_hot([item("ina", 7)])
    assert await store.remove_copies([Removal("ina", last["seq"], last["server_id"], "s")]) == 1
    assert looks == [1, 1, 1]


async def test_a_removal_that_needs_mongodb_while_it_is_down_waits_for_the_persister(
    store: DeliveryStore, settings: Settings
) -> None:
    """An unsend whose copy waits in MongoDB (persisted), while MongoDB is down: the
    removal raised, and its batch, with every inbox of the partition behind it,
    waited for MongoDB (connected devices' messages too). It is left for the
    persister now: the tombstone's batch goes on, and the first pass once MongoDB
    answers deletes the copy and lowers the waiting counts."""
    stored = await store.store_hot([item("jon", n) for n in range(3)])
    await store.persist_due(now=later(store))  # seq 1, 2, 3: in MongoDB only
    counts = pending_key(store.prefix, "jon")
    up = store.inbox
    down: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300"
    )
    try:
        store.inbox = down.x.inbox
        # A removal searched for (no seq) and one naming its copy's seq.
        unsend = Removal("jon", None, stored[1]["server_id"], "s")
        assert await asyncio.wait_for(store.remove_copies([unsend]), 10) == 0
        started = time.monotonic()
        by_seq = Removal("jon", 1, stored[0]["server_id"], "s")
        assert await asyncio.wait_for(store.remove_copies([by_seq]), 10) == 0
        assert time.monotonic() - started < 0.25  # MongoDB failed just now: not asked
        assert await store.redis.scard(store.cold_removals) == 2
        with pytest.raises(ServerSelectionTimeoutError):
            await store.drain_cold_removals()  # still down: kept for the next pass
        assert await store.redis.scard(store.cold_removals) == 2
    finally:
        store.inbox = up
        await down.close()
    assert await in_mongo(store, "jon") == [1, 2, 3]
    assert int(await store.redis.hget(counts, "*")) == 3
    # Meanwhile pages leave out the copy named by its seq (its removal mark).
    assert [d["seq"] for d in (await store.page("jon", 0, 10))[0]] == [2, 3]
    # The persister's next pass (MongoDB answers again) does it, once.
    worker = Worker(settings, store, CollectorRegistry(), None)  # type: ignore[arg-type]
    worker._next_checkpoint = float("inf")  # this pass: no checkpoint, no warm-up
    await worker.persist_once()
    assert await in_mongo(store, "jon") == [3]
    assert int(await store.redis.hget(counts, "*")) == 1
    assert await store.redis.scard(store.cold_removals) == 0
    assert await store.drain_cold_removals() == 0


async def test_a_first_page_of_entries_without_their_items_does_not_end_the_pass(
    store: DeliveryStore,
) -> None:
    """Redis lost its data and a batch's write was refused after its index entries
    went in (hot.GUARD): entries without items, kept ``ORPHAN_GRACE_S``. A pass whose
    first page held nothing else read no further and still reported its cutoff: the
    batches stored behind them were committed while their items were only in Redis.
    The pass now reads past them and moves what is due."""
    store.settings = store.settings.model_copy(update={"hot_persist_batch": 5})
    refused = time.time() - 10  # older than what follows, within the grace
    await store.redis.zadd(store.hot.index, {f"orf|{n}": refused for n in range(100, 107)})
    stored = await store.store_hot([item("orf", n) for n in range(3)])
    now = later(store)
    written, until = await store.persist_due(now=now)
    assert await in_mongo(store, "orf") == [d["seq"] for d in stored]
    assert written == 3 and until == now - store.settings.hot_persist_after_s
    assert await store.redis.hlen(store.hot.key("orf")) == 0
    # The refused entries stay for their grace (a write may still land).
    assert await store.redis.zcard(store.hot.index) == 7


async def test_a_failed_clean_up_after_a_move_is_done_by_the_next_pass(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the persister moved four items, the device acknowledged the first and the
    third's message was removed; MongoDB then failed the clean-up that deletes those
    two copies again. The items have left Redis, so no later pass would look at them:
    the acknowledged copy stayed for good, the removed one came back in pages once its
    marker expired. The next pass now deletes both first."""
    stored = await store.store_hot([item("hap", n) for n in range(4)])
    third = stored[2]
    read, remove = store.hot.get_many, store.hot.remove
    delete_many = store.inbox.delete_many
    failing: list[bool] = []

    async def get_many_then_race(wanted: dict[str, list[int]]) -> Any:
        found = await read(wanted)
        if not failing:
            assert [d["seq"] for d in (await store.acknowledge_many({"hap": 1}))["hap"]] == [1]
            assert (
                await store.remove_copies([Removal("hap", 3, third["server_id"], third["from"])])
                == 1
            )
        return found

    async def remove_then_fail(items: Any) -> list[bool]:
        taken = await remove(items)
        failing.append(True)
        return taken

    async def delete_many_or_fail(*args: Any, **kwargs: Any) -> Any:
        if failing == [True]:
            failing.append(False)
            raise ServerSelectionTimeoutError("MongoDB went away")
        return await delete_many(*args, **kwargs)

    monkeypatch.setattr(store.hot, "get_many", get_many_then_race)
    monkeypatch.setattr(store.hot, "remove", remove_then_fail)
    monkeypatch.setattr(store.inbox, "delete_many", delete_many_or_fail)
    with pytest.raises(ServerSelectionTimeoutError):
        await store.persist_due(now=later(store))
    assert await in_mongo(store, "hap") == [1, 2, 3, 4]  # the two copies left behind
    assert await store.hot.due(later(store), 100) == []  # and nothing left to move

    assert (await store.persist_due(now=later(store)))[0] == 0  # nothing left to move
    assert await in_mongo(store, "hap") == [2, 4]
    await store.redis.delete(store.hot.rm_key("hap"))  # the removal marker expired
    page, _ = await store.page("hap", 0, 10)
    assert [d["seq"] for d in page] == [2, 4]


async def test_a_sequence_number_taken_by_another_message_moves_the_new_one(
    store: DeliveryStore,
) -> None:
    """Overlapping reservations (two consumers during a rebalance) never overwrite."""
    await store.store_hot([item("eve", 1, cid="a")])
    await store.redis.hset(store.ctr.key("eve"), "n", 0)  # a counter seeded too low
    out = await store.store_hot([item("eve", 2, cid="b")])
    assert out[0]["seq"] == 2 and out[0]["_id"] == item_id("eve", 2)
    page, _ = await store.page("eve", 0, 10)
    assert [(d["seq"], d["client_id"]) for d in page] == [(1, "a"), (2, "b")]


async def test_a_large_hot_inbox_is_paged_acked_and_dropped_without_mongodb(
    store: DeliveryStore,
) -> None:
    """Tens of thousands of items in one device's hot inbox (a device that reads
    slowly, with the persister behind): every page, the cumulative ack of all of
    them and a drop stay in Redis, in bounded commands; MongoDB holds nothing."""
    n = 25_000
    for start in range(0, n, 500):
        await store.store_hot([item("big", i, cid=f"m{i}") for i in range(start, start + 500)])
    seen = 0
    after = 0
    while True:
        page, more = await store.page("big", after, 200)
        seen += len(page)
        if not page:
            break
        after = int(page[-1]["seq"])
        if not more:
            break
    assert seen == n and after == n
    over: dict[str, int] = {}  # the "was it issued" check, as every ack flush asks it
    acked = await store.acknowledge_many({"big": n}, over)
    assert over == {} and len(acked["big"]) == n
    assert await store.hot.redis.hlen(store.hot.key("big")) == 0
    assert await store.hot.redis.zcard(store.hot.index) == 0
    assert await in_mongo(store, "big") == []
    # A second device inbox, dropped whole while 25,000 items wait.
    for start in range(0, n, 500):
        await store.store_hot([item("gone", i, cid=f"g{i}") for i in range(start, start + 500)])
    await store.drop_inbox("gone")
    assert await store.hot.redis.exists(store.hot.key("gone")) == 0
    assert await store.hot.redis.zcard(store.hot.index) == 0
    assert await store.page("gone", 0, 10) == ([], False)


async def test_a_batch_reads_its_repeats_and_takes_its_numbers_in_one_round_trip(
    store: DeliveryStore,
) -> None:
    """A batch's first round trip reads its dedup records and, in the same script,
    reserves numbers for its new items only (a repeat's went unused until
    2026-12-07: a resent message grew a gap without limit); an inbox whose counter
    is missing gets none there and is seeded on the way. The pipeline that writes
    the items reads their users' gateways, after them."""
    await store.store_hot([item("fay", 1, cid="x")])
    batch = [item("fay", 2, cid="x"), item("fay", 3, cid="y"), item("gus", 4)]
    claims, gone, numbers = await store.claims_and_numbers(batch, [batch[1]["server_id"]])
    assert set(claims) == {dedup_key("fay", "s", "x")} and gone == set()
    assert numbers == {"fay": 2}  # gus has no counter yet
    await store.redis.hset(presence_key(store.prefix, "fay"), "c1", presence_value("gw-a"))
    out, where = await store.store_and_route(batch, claims, numbers, ["fay", "gus", "fay"])
    assert [d["seq"] for d in out] == [1, 2, 1] and out[0]["duplicate"] is True
    assert where == {"fay": {"gw-a"}}
    later_one = await store.store_hot([item("fay", 5, cid="z")])
    assert later_one[0]["seq"] == 3  # the repeat took no number
    page, _ = await store.page("fay", 0, 10)
    assert [d["seq"] for d in page] == [1, 2, 3]


async def test_items_stored_again_after_a_clash_are_routed_by_a_fresh_read(
    store: DeliveryStore,
) -> None:
    """Numbers that clash (a counter seeded too low) are stored again under fresh ones:
    the gateways read before that second write are not returned."""
    await store.store_hot([item("hal", 1, cid="a")])
    await store.redis.hset(store.ctr.key("hal"), "n", 0)  # the next number is taken
    out, where = await store.store_and_route([item("hal", 2, cid="b")], route=["hal"])
    assert out[0]["seq"] == 2 and where is None


async def test_an_ack_past_the_last_number_issued_changes_nothing_when_checked(
    store: DeliveryStore,
) -> None:
    await store.store_hot([item("ida", n) for n in range(3)])
    over: dict[str, int] = {}
    acked = await store.acknowledge_many({"ida": 4, "new": 1}, over)
    assert over == {"ida": 3, "new": 0} and acked == {"ida": [], "new": []}
    page, _ = await store.page("ida", 0, 10)
    assert [d["seq"] for d in page] == [1, 2, 3]  # nothing acknowledged
    assert len(await store.hot.due(time.time() + 1, 100)) == 3
    # Within what was issued: acknowledged as usual, and ``over`` stays empty.
    over = {}
    acked = await store.acknowledge_many({"ida": 2}, over)
    assert over == {} and [d["seq"] for d in acked["ida"]] == [1, 2]


async def test_the_gateways_hot_only_ack_steps_over_skipped_ranges(store: DeliveryStore) -> None:
    """The gateway's direct ack (services/gateway/acks.py) runs the ack script in its
    hot-only mode: a range past a loss's skipped numbers counts only the numbers
    issued, so two hot items a billion apart from the watermark are one small ack;
    a range with one number not hot (persisted) changes nothing."""
    acks = DirectAcks(store.redis, store.prefix, 60, CollectorRegistry())
    await store.store_hot([item("gia", n) for n in range(2)])
    assert await acks.ack("gia", 2)
    # A loss's jump: numbers 3 .. 10**9 skipped; the next two items come after it.
    await store.redis.hset(store.ctr.key("gia"), mapping={"n": 10**9, "g": f"2:{10**9}"})
    out = await store.store_hot([item("gia", n) for n in range(2, 4)])
    assert [d["seq"] for d in out] == [10**9 + 1, 10**9 + 2]
    assert await acks.ack("gia", 10**9 + 2)
    assert (await store.ctr.get(["gia"]))["gia"].acked == 10**9 + 2
    assert await store.page("gia", 0, 10) == ([], False)
    # Persisted items: the gateway leaves them (and the watermark) to delivery.
    await store.store_hot([item("gia", n) for n in range(4, 6)])
    await store.persist_due(now=later(store))
    assert not await acks.ack("gia", 10**9 + 4)
    assert (await store.ctr.get(["gia"]))["gia"].acked == 10**9 + 2
    acked = await store.acknowledge_many({"gia": 10**9 + 4})
    assert [d["seq"] for d in acked["gia"]] == [10**9 + 3, 10**9 + 4]
    assert await in_mongo(store, "gia") == []


async def test_an_ack_over_persisted_items_while_mongodb_is_down_finishes_later(
    store: DeliveryStore,
) -> None:
    """Items persisted to MongoDB, then MongoDB goes down and the device acknowledges
    them with a hot one: the ack goes through (the hot item's receipt at once, no
    page returns any of them), and the persisted ones are deleted, with their
    receipts, once MongoDB answers again (the persister's drain_cold_acks)."""
    await store.store_hot([item("hal", i, cid=f"p{i}") for i in range(1, 3)])
    await store.persist_due(now=time.time() + 3600)  # seq 1, 2: in MongoDB only
    await store.store_hot([item("hal", 3, cid="h3")])  # seq 3: hot
    assert await in_mongo(store, "hal") == [1, 2]
    up = store.inbox
    down: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300"
    )
    try:
        store.inbox = down.x.inbox
        acked = await asyncio.wait_for(store.acknowledge_many({"hal": 3}), 10)
        assert [d["client_id"] for d in acked["hal"]] == ["h3"]
        assert await store.redis.scard(store.cold_acks) == 2
        with pytest.raises(ServerSelectionTimeoutError):
            await store.drain_cold_acks()  # still down: kept for the next run
        assert await store.redis.scard(store.cold_acks) == 2
    finally:
        store.inbox = up
        await down.close()
    assert (await store.page("hal", 0, 10))[0] == []
    # The receipts reach the sender's gateway (its channel, as every push does).
    await store.redis.hset(presence_key(store.prefix, "s"), "c1", presence_value("gw-h"))
    pubsub = store.redis.pubsub()
    await pubsub.subscribe(gateway_channel(store.prefix, "gw-h"))
    try:
        drained = await store.drain_cold_acks()
        assert sorted(d["client_id"] for d in drained) == ["p1", "p2"]
        assert await in_mongo(store, "hal") == []
        assert await store.redis.scard(store.cold_acks) == 0
        assert await store.drain_cold_acks() == []  # once
        msg = None
        while msg is None:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        decoded = e.decode_routed(msg["data"])
        frames = [
            orjson.loads(bytes(r.frame))
            for r in (decoded if isinstance(decoded, list) else [decoded])
        ]
        assert sorted((fr["op"], fr["id"]) for fr in frames) == [
            ("delivered", "p1"),
            ("delivered", "p2"),
        ]
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_an_ack_whose_mongodb_delete_fails_otherwise_finishes_later_too(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only a lost connection: MongoDB refusing the delete (any error) leaves the
    persisted items for the persister, as an outage does. (Only ConnectionFailure
    did: other errors lost them, their copies kept below the watermark for good and
    their `delivered` receipts never sent.)"""
    await store.store_hot([item("ivy", i, cid=f"p{i}") for i in range(1, 3)])
    await store.persist_due(now=time.time() + 3600)  # in MongoDB only
    await store.store_hot([item("ivy", 3, cid="h3")])
    find = store.inbox.find

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OperationFailure("interrupted at shutdown", code=11600)

    monkeypatch.setattr(store.inbox, "find", refuse)
    acked = await store.acknowledge_many({"ivy": 3})
    assert [d["client_id"] for d in acked["ivy"]] == ["h3"]
    assert await store.redis.scard(store.cold_acks) == 2
    monkeypatch.setattr(store.inbox, "find", find)
    assert sorted(d["client_id"] for d in await store.drain_cold_acks()) == ["p1", "p2"]
    assert await in_mongo(store, "ivy") == []


async def test_twenty_thousand_persisted_items_acked_while_mongodb_is_down(
    store: DeliveryStore,
) -> None:
    """At the size an offline device reaches: 20,000 items in MongoDB, acknowledged at
    once while it is down. The ack answers in bounded time (the hot one), the range
    waits in Redis (one entry: its ids were 20,000, and over a gap one per number),
    and one drain deletes them all, in chunks, each item once."""
    n = 20_000
    for start in range(0, n, 500):
        await store.store_hot([item("ivy", i, cid=f"p{i}") for i in range(start, start + 500)])
    await store.persist_due(now=time.time() + 3600)
    # Moved long ago: the drain leaves a copy moved in the last SHADOW_GRACE_S alone.
    await store.inbox.update_many({"inbox": "ivy"}, {"$set": {"moved_at": time.time() - 3600}})
    await store.store_hot([item("ivy", n, cid="hot")])
    assert await store.inbox.count_documents({"inbox": "ivy"}) == n
    up = store.inbox
    down: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300"
    )
    try:
        store.inbox = down.x.inbox
        acked = await asyncio.wait_for(store.acknowledge_many({"ivy": n + 1}), 30)
        assert [d["client_id"] for d in acked["ivy"]] == ["hot"]
        assert [e.rpartition(b"|")[0] for e in await store.redis.smembers(store.cold_acks)] == [
            f"~ivy|{n + 1}".encode()
        ]  # with the ack's time after it
    finally:
        store.inbox = up
        await down.close()
    drained = await store.drain_cold_acks()
    assert sorted(d["client_id"] for d in drained) == sorted(f"p{i}" for i in range(n))
    assert await store.inbox.count_documents({"inbox": "ivy"}) == 0
    assert await store.redis.scard(store.cold_acks) == 0
