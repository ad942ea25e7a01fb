"""The inbox store against the real embedded MongoDB and Redis."""

from __future__ import annotations

import time
from typing import Any

from pymongo import AsyncMongoClient, monitoring

from services.common.clients import redis_client, service_db
from services.common.config import Settings
from services.delivery import counters
from services.delivery.store import DeliveryStore
from tests.delivery.conftest import item


async def ack(store: DeliveryStore, user: str, seq: int) -> list[dict[str, Any]]:
    return (await store.acknowledge_many({user: seq}))[user]


async def test_sequence_numbers_are_reserved_in_blocks(store: DeliveryStore) -> None:
    assert await store.reserve("u1", 3) == 1
    assert await store.reserve("u1", 2) == 4
    assert await store.reserve("u2", 1) == 1


async def test_duplicates_return_the_earlier_copy(store: DeliveryStore) -> None:
    first = await store.store_hot([item("bob", 1, cid="x")])
    again = await store.store_hot([item("bob", 2, cid="x"), item("bob", 3, cid="y")])
    assert first[0]["seq"] == 1 and "duplicate" not in first[0]
    assert again[0]["seq"] == 1 and again[0]["duplicate"] is True
    assert again[0]["server_id"] == first[0]["server_id"]  # the original identity
    assert again[0]["body"] == "b1"  # the stored copy, not the resent one
    assert again[1]["seq"] == 2
    page, more = await store.page("bob", 0, 10)
    assert [d["client_id"] for d in page] == ["x", "y"]
    assert more is False


async def test_a_repeat_inside_one_batch_is_stored_once(store: DeliveryStore) -> None:
    out = await store.store_hot([item("ida", cid="a"), item("ida", cid="a"), item("ida", cid="b")])
    assert [d["seq"] for d in out] == [1, 1, 2]
    assert [d.get("duplicate", False) for d in out] == [False, True, False]
    assert [d["client_id"] for d in (await store.page("ida", 0, 10))[0]] == ["a", "b"]


async def test_the_same_client_id_from_two_senders_or_to_two_inboxes_is_two_messages(
    store: DeliveryStore,
) -> None:
    out = await store.store_hot(
        [item("ann", sender="s1", cid="x"), item("ann", sender="s2", cid="x"),
         item("bea", sender="s1", cid="x")]
    )  # fmt: skip
    assert [d.get("duplicate", False) for d in out] == [False, False, False]
    assert len((await store.page("ann", 0, 10))[0]) == 2
    assert len((await store.page("bea", 0, 10))[0]) == 1


async def test_acks_are_cumulative_idempotent_and_per_user(store: DeliveryStore) -> None:
    await store.store_hot([item("bob", s) for s in range(1, 6)] + [item("eve", 1, cid="e1")])
    assert [d["client_id"] for d in await ack(store, "bob", 3)] == ["c1", "c2", "c3"]
    assert await ack(store, "bob", 2) == []
    assert await ack(store, "bob", 3) == []
    assert [d["client_id"] for d in await ack(store, "bob", 9)] == ["c4", "c5"]
    assert (await store.page("bob", 0, 10))[0] == []
    # Acknowledged items are deleted, not kept as tombstones.
    assert await store.inbox.count_documents({"user": "bob"}) == 0
    # Bob's acks never touched Eve's inbox.
    assert [d["seq"] for d in (await store.page("eve", 0, 10))[0]] == [1]
    # The dedup record keeps a resend after the ack from being stored again.
    again = await store.store_hot([item("bob", 7, cid="c2")])
    assert again[0]["duplicate"] is True and again[0]["acked"] is True
    assert (await store.page("bob", 0, 10))[0] == []


async def test_pages_follow_the_cursor(store: DeliveryStore) -> None:
    await store.store_hot([item("pat", s) for s in range(1, 8)])
    await store.reserve("pat", 2)  # seq 8 and 9 never stored (a gap, as after a clash)
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
        await store.store_hot([item(user, s, cid=f"{user}{s}") for s in range(1, 4)])
    acked = await store.acknowledge_many({"ann": 2, "ben": 3, "cat": 0, "nobody": 5})
    assert [d["client_id"] for d in acked["ann"]] == ["ann1", "ann2"]
    assert [d["client_id"] for d in acked["ben"]] == ["ben1", "ben2", "ben3"]
    assert acked["cat"] == [] and acked["nobody"] == []
    assert [d["seq"] for d in (await store.page("ann", 0, 10))[0]] == [3]
    assert [d["seq"] for d in (await store.page("cat", 0, 10))[0]] == [1, 2, 3]


async def test_one_ack_over_a_long_hot_backlog_is_taken_in_bounded_calls(
    store: DeliveryStore, monkeypatch: Any
) -> None:
    """Before: one cumulative ack over the whole hot range was one script, which walked
    every item (up to 100,000 kept hot by a MongoDB outage) holding Redis, and returned
    all of them in one reply. Now each call takes at most ACK_SPAN numbers."""
    for first in range(1, 5001, 1000):
        await store.store_hot([item("max", s, cid=f"m{s}") for s in range(first, first + 1000)])
    sizes: list[int] = []
    execute = store.redis.pipeline

    def counted(*args: Any, **kwargs: Any) -> Any:
        pipe = execute(*args, **kwargs)
        run = pipe.execute

        async def recorded(*a: Any, **k: Any) -> Any:
            results = await run(*a, **k)
            # {acked before, n, gaps, where the call stopped, item...}
            sizes.extend(len(r) - 4 for r in results if isinstance(r, list) and len(r) >= 4)
            return results

        pipe.execute = recorded
        return pipe

    monkeypatch.setattr(store.redis, "pipeline", counted)
    acked = await ack(store, "max", 5000)
    monkeypatch.undo()
    assert [d["client_id"] for d in acked] == [f"m{s}" for s in range(1, 5001)]
    assert sizes and max(sizes) <= counters.ACK_SPAN and sum(sizes) == 5000, sizes
    assert (await store.page("max", 0, 10))[0] == []


async def test_a_taken_sequence_number_moves_the_new_message_instead_of_dropping_it(
    store: DeliveryStore,
) -> None:
    """Two writers that reserved overlapping numbers (a rebalance overlap)."""
    await store.store_hot([item("zoe", cid="first")])
    # Wind the counter back, as an overlapping reservation would see it.
    await store.redis.hset(store.ctr.key("zoe"), "n", 0)
    out = await store.store_hot([item("zoe", cid="second")])
    assert out[0]["seq"] == 2
    page, _ = await store.page("zoe", 0, 10)
    assert [(d["seq"], d["client_id"]) for d in page] == [(1, "first"), (2, "second")]
    # The claim follows the message: a resend finds it at its new number.
    again = await store.store_hot([item("zoe", cid="second")])
    assert again[0]["duplicate"] is True and again[0]["seq"] == 2


async def test_an_item_moved_to_mongodb_is_still_a_duplicate(store: DeliveryStore) -> None:
    """A resend of an item the persister moved (no longer hot) is recognised and
    not pushed again (``acked``: the device gets it by sync)."""
    await store.store_hot([item("kim", cid="a"), item("kim", cid="b")])
    await store.persist_due(now=time.time() + store.settings.hot_persist_after_s + 1)
    out = await store.store_hot([item("kim", 9, cid="b")])
    assert out[0]["seq"] == 2 and out[0]["duplicate"] is True
    page, _ = await store.page("kim", 0, 10)
    assert [(d["seq"], d["client_id"]) for d in page] == [(1, "a"), (2, "b")]


async def test_expired_dedup_collections_are_dropped_whole(store: DeliveryStore) -> None:
    from services.delivery.store import DAY_S, DEDUP_DAYS

    # Written by versions before the hot inbox: dropped whole once expired.
    await store.store_hot([item("tom", s) for s in range(1, 4)])
    await store._dedup_collections(time.time())[0].insert_one({"_id": "tom|s|c1", "seq": 1})
    assert await store.drop_expired_dedup() == []  # today's is kept
    later = time.time() + (DEDUP_DAYS + 1) * DAY_S
    dropped = await store.drop_expired_dedup(now=later)
    assert len(dropped) == 1 and dropped[0].startswith("dedup_")
    # Waiting items are untouched.
    assert [d["seq"] for d in (await store.page("tom", 0, 10))[0]] == [1, 2, 3]


class FindFilters(monitoring.CommandListener):
    """Records the filter of every ``find`` (and the update/delete filters) sent."""

    def __init__(self) -> None:
        self.filters: list[tuple[str, dict[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        cmd = event.command
        if event.command_name == "find":
            self.filters.append((str(cmd["find"]), dict(cmd.get("filter", {}))))
        for op in cmd.get("deletes", []) + cmd.get("updates", []):
            self.filters.append((event.command_name, dict(op.get("q", {}))))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_resends_against_a_large_inbox_are_primary_key_lookups(settings: Settings) -> None:
    """Tens of thousands of waiting items, then a burst of resends of stored ids.

    0.1 looked duplicates up with ``$or`` over (from, client_id), a table scan
    on the embedded server (500 keys: 139 s on a 63k-item inbox) that stalled
    delivery for everyone. Duplicates are now found in Redis, and every MongoDB
    look-up of storing, persisting, acking and paging is by primary key (``_id``
    equality or ``$in``), so its cost does not grow with the inbox: checked on
    every command the store sends, with the whole inbox moved to MongoDB (an
    offline device).
    """
    listener = FindFilters()
    mongo = AsyncMongoClient(settings.mongo_url, event_listeners=[listener], tz_aware=True)
    redis = redis_client(settings)
    store = DeliveryStore(settings, service_db(mongo, settings, "delivery"), redis)
    try:
        users = [f"big{i}" for i in range(20)]
        total, batch = 30_000, 500
        for start in range(0, total, batch):
            await store.store_hot(
                [item(users[n % 20], n, cid=f"m{n}") for n in range(start, start + batch)]
            )
        await store.persist_due(now=time.time() + settings.hot_persist_after_s + 1)
        assert await store.inbox.count_documents({}) == total
        listener.filters.clear()
        resend = [item(users[n % 20], n, cid=f"m{n}") for n in range(0, total, total // 500)]
        out = await store.store_hot(resend)
        assert len(out) == 500 and all(d["duplicate"] is True for d in out)
        await store.acknowledge_many({u: 10 for u in users})
        await store.page(users[0], 0, 200)
        assert listener.filters, "the listener saw no command"
        for coll, flt in listener.filters:
            assert set(flt) <= {"_id", "acked"}, (coll, flt)
            assert isinstance(flt["_id"], str) or set(flt["_id"]) == {"$in"}, (coll, flt)
        assert await store.inbox.count_documents({}) == total - 20 * 10
    finally:
        await mongo.close()
        await redis.aclose()


async def _pending(store: DeliveryStore, inbox: str) -> dict[str, int]:
    from services.common.routing import pending_key

    raw = await store.redis.hgetall(pending_key(store.prefix, inbox))
    return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}


async def test_waiting_counts_follow_stores_acks_and_drops(store: DeliveryStore) -> None:
    """What the gateways read to enforce the inbox caps (#20)."""
    await store.store_hot([item("ann", n, sender="s1" if n < 3 else "s2") for n in range(5)])
    assert await _pending(store, "ann") == {"*": 5, "s1": 3, "s2": 2}
    # A resend or a redelivery is not counted again.
    await store.store_hot([item("ann", n, sender="s1" if n < 3 else "s2") for n in range(5)])
    assert await _pending(store, "ann") == {"*": 5, "s1": 3, "s2": 2}
    await ack(store, "ann", 3)
    assert await _pending(store, "ann") == {"*": 2, "s2": 2}  # s1's field is gone at zero
    await store.drop_inbox("ann")
    assert await _pending(store, "ann") == {}


async def test_unacknowledged_items_expire_by_a_job_not_on_read(store: DeliveryStore) -> None:
    """Expiry (30 days by default) deletes the oldest waiting items of every inbox.

    Twenty thousand items in one inbox (a phone left in a drawer for a
    month), the older half expired: the job deletes exactly those, in
    primary-key chunks, moves the watermark past them, lowers the counts,
    and leaves the rest and other inboxes alone; a resend of an expired
    message is a recognised duplicate, not a new item.
    """
    expiry = store.settings.inbox_expiry_s
    now = time.time()
    old, new = 10_000, 10_000
    for start in range(0, old + new, 1000):
        batch = [item("drawer", n, cid=f"m{n}") for n in range(start, start + 1000)]
        for it in batch:
            n = int(it["client_id"][1:])
            it["stored_at"] = now - expiry - 60 if n < old else now - 60
        await store.store_hot(batch)
    fresh = [{**item("other", n, cid=f"o{n}"), "stored_at": now} for n in range(3)]
    await store.store_hot(fresh)
    # Unacknowledged, all of it moved from the hot inbox to MongoDB long ago.
    await store.persist_due(now=time.time() + store.settings.hot_persist_after_s + 1)
    # Not on read: a page still shows the expired items until the job runs.
    page, _ = await store.page("drawer", 0, 5)
    assert [d["client_id"] for d in page] == ["m0", "m1", "m2", "m3", "m4"]

    assert await store.purge_expired(now=now) == old
    page, more = await store.page("drawer", 0, 5)
    assert [d["client_id"] for d in page] == [f"m{n}" for n in range(old, old + 5)] and more
    assert await store.inbox.count_documents({"inbox": "drawer"}) == new
    assert await _pending(store, "drawer") == {"*": new, "s": new}
    assert len((await store.page("other", 0, 10))[0]) == 3
    assert await store.purge_expired(now=now) == 0  # nothing more, and idempotent
    again = await store.store_hot([item("drawer", 0, cid="m0")])
    assert again[0]["duplicate"] is True and again[0].get("acked") is True
    assert await store.inbox.count_documents({"inbox": "drawer"}) == new
