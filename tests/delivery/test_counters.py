"""Inbox counters in Redis with checkpoints in MongoDB (services/delivery/counters.py):
numbers start at 1, are never handed out twice, survive Redis losing its data by
jumping past anything it may have handed out, and an upgrade from counters kept
in MongoDB goes on from them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymongo import AsyncMongoClient
from pymongo.errors import ServerSelectionTimeoutError

from services.common.errors import ApiError
from services.delivery import counters
from services.delivery.counters import GAP, Counter, CountersUnseeded, InboxCounters
from services.delivery.handlers import Inbox
from services.delivery.outage import unavailable
from services.delivery.store import DeliveryStore
from tests.support.losses import lose_redis

from .conftest import item
from .test_store import FindFilters


async def test_numbers_start_at_one_and_checkpoints_reach_mongodb(store: DeliveryStore) -> None:
    out = await store.store_hot([item("ann", i) for i in range(3)])
    assert [d["seq"] for d in out] == [1, 2, 3]
    assert await store.counters.count_documents({}) == 0  # not before a checkpoint
    assert await store.ctr.checkpoint() == 1
    assert await store.counters.find_one({"_id": "ann"}) == {"_id": "ann", "n": 3, "acked": 0}
    acked = await store.acknowledge_many({"ann": 2})
    assert [d["seq"] for d in acked["ann"]] == [1, 2]
    await store.ctr.checkpoint()
    assert (await store.counters.find_one({"_id": "ann"}) or {})["acked"] == 2


async def test_concurrent_reservations_never_share_a_number(store: DeliveryStore) -> None:
    firsts = await asyncio.gather(*(store.reserve("bea", 5) for _ in range(40)))
    numbers = [f + k for f in firsts for k in range(5)]
    assert sorted(numbers) == list(range(1, 201))


async def test_concurrent_acks_cover_each_number_once(store: DeliveryStore) -> None:
    await store.store_hot([item("cat", i) for i in range(50)])
    results = await asyncio.gather(*(store.acknowledge_many({"cat": s}) for s in range(1, 51)))
    seqs = [d["seq"] for r in results for d in r["cat"]]
    assert sorted(seqs) == list(range(1, 51))


async def test_after_redis_lost_its_data_numbers_jump_past_what_it_handed_out(
    store: DeliveryStore,
) -> None:
    await store.store_hot([item("dan", i) for i in range(5)])
    await store.ctr.checkpoint()  # n = 5 in MongoDB
    await store.store_hot([item("dan", i) for i in range(5, 9)])  # 6..9, never checkpointed
    await store.acknowledge_many({"dan": 7})
    await lose_redis(store.redis, store.prefix)
    # The messages come back from Kafka (same client ids: no dedup record any more).
    again = await store.store_hot([item("dan", i) for i in range(5, 9)])
    seqs = [d["seq"] for d in again]
    assert seqs == list(range(5 + GAP + 1, 5 + GAP + 5)), "a number at or below 9 again"
    # An inbox nobody used before the loss starts past the gap too: its numbers
    # cannot be told apart from ones lost with Redis.
    assert (await store.store_hot([item("eli", 0)]))[0]["seq"] == GAP + 1
    # A client's ack of a number it saw before the loss is not "never issued".
    assert (await store.ctr.get(["dan"]))["dan"].n >= 9
    page, _ = await store.page("dan", 0, 10)
    assert [d["seq"] for d in page] == seqs
    # Acknowledging across the skipped numbers takes exactly the items there are.
    acked = await store.acknowledge_many({"dan": seqs[-1]})
    assert [d["seq"] for d in acked["dan"]] == seqs
    assert (await store.page("dan", 0, 10))[0] == []


async def test_an_upgrade_goes_on_from_the_counters_kept_in_mongodb(store: DeliveryStore) -> None:
    # Before this version: counters in MongoDB only, nothing in Redis, no marker.
    await store.counters.insert_one({"_id": "fay", "n": 41, "acked": 40})
    out = await store.store_hot([item("fay", 0)])
    assert out[0]["seq"] == 42
    page, _ = await store.page("fay", 0, 10)
    assert [d["seq"] for d in page] == [42]


def test_walks_step_over_the_numbers_skipped_after_a_loss() -> None:
    c = Counter(n=GAP + 12, acked=3, gaps=((10, GAP + 10),))
    assert c.numbers(4, GAP + 12) == [4, 5, 6, 7, 8, 9, 10, GAP + 11, GAP + 12]
    assert c.numbers(GAP + 11, GAP + 12) == [GAP + 11, GAP + 12]
    assert c.skip(10) == GAP + 10 and c.skip(9) == 9 and c.skip(GAP + 10) == GAP + 10
    assert c.stop(3, 100) == 10 and c.stop(GAP + 10, 100) == GAP + 12
    plain = Counter(n=8, acked=0)
    assert plain.numbers(1, 8) == list(range(1, 9)) and plain.skip(5) == 5
    # Two losses: two ranges, both stepped over.
    two = Counter(n=2 * GAP + 20, acked=0, gaps=((5, GAP + 5), (GAP + 8, 2 * GAP + 8)))
    assert two.numbers(1, 2 * GAP + 10) == [1, 2, 3, 4, 5, GAP + 6, GAP + 7, GAP + 8,
                                            2 * GAP + 9, 2 * GAP + 10]  # fmt: skip
    assert two.skip(5) == GAP + 5 and two.skip(GAP + 8) == 2 * GAP + 8
    assert two.stop(0, 100) == 5 and two.stop(GAP + 5, 100) == GAP + 8


async def test_after_two_losses_a_page_and_an_ack_step_over_both_skipped_ranges(
    store: DeliveryStore,
) -> None:
    """A member who acknowledged nothing since before the first loss: the first loss's
    range must not be forgotten at the second (a page then walked a billion numbers
    in chunks, and the ack script walked them inside Redis)."""
    await store.store_hot([item("hal", i) for i in range(3)])  # 1..3
    await store.persist_due(now=10**10)  # waiting in MongoDB
    await store.ctr.checkpoint()
    await lose_redis(store.redis, store.prefix)
    second = await store.store_hot([item("hal", i) for i in range(3, 5)])
    assert [d["seq"] for d in second] == [3 + GAP + 1, 3 + GAP + 2]
    await store.persist_due(now=10**10)
    await store.ctr.checkpoint()
    await lose_redis(store.redis, store.prefix)
    third = await store.store_hot([item("hal", 5)])
    assert [d["seq"] for d in third] == [3 + 2 * GAP + 3]
    assert (await store.ctr.get(["hal"]))["hal"].gaps == (
        (3, 3 + GAP), (3 + GAP + 2, 3 + 2 * GAP + 2),
    )  # fmt: skip
    wanted = [1, 2, 3, 3 + GAP + 1, 3 + GAP + 2, 3 + 2 * GAP + 3]
    page, more = await asyncio.wait_for(store.page("hal", 0, 10), 10)
    assert [d["seq"] for d in page] == wanted and not more
    acked = await asyncio.wait_for(store.acknowledge_many({"hal": wanted[-1]}), 10)
    assert sorted(d["seq"] for d in acked["hal"]) == wanted
    assert (await store.page("hal", 0, 10))[0] == []


async def test_an_ack_over_hot_and_persisted_items_deletes_and_uncounts_each_once(
    store: DeliveryStore,
) -> None:
    from services.common.routing import pending_key

    await store.store_hot([item("gus", i, sender="s1" if i % 2 else "s2") for i in range(6)])
    # The first four wait long enough to be moved to MongoDB; two stay hot.
    await store.persist_due(now=10**10)
    await store.store_hot([item("gus", i, sender="s1") for i in range(6, 8)])
    acked = await store.acknowledge_many({"gus": 7})
    assert [d["seq"] for d in acked["gus"]] == list(range(1, 8))
    assert await store.inbox.count_documents({"inbox": "gus"}) == 0
    raw = await store.redis.hgetall(pending_key(store.prefix, "gus"))
    assert {k.decode(): int(v) for k, v in raw.items()} == {"*": 1, "s1": 1}  # seq 8 waits


async def test_an_ack_reads_each_items_sender_and_kind_whatever_its_text(
    store: DeliveryStore,
) -> None:
    """The ack script finds an item's kind and sender by plain search in its JSON: text
    that looks like those keys inside a value (a client id may hold quotes) is escaped
    there and never taken for them."""
    from services.common.routing import pending_key

    tricky = item("hal", 0, sender="s1", cid='x","from":"s2","kind":"key_changed')
    notice = {**item("hal", 1, sender="s3", cid="n1"), "kind": "key_changed"}
    quoted = item("hal", 2, sender="s2", cid='"kind":"message"')
    await store.store_hot([tricky, notice, quoted])
    key = pending_key(store.prefix, "hal")
    raw = await store.redis.hgetall(key)
    assert {k.decode(): int(v) for k, v in raw.items()} == {"*": 3, "s1": 1, "s2": 1}
    acked = await store.acknowledge_many({"hal": 2})
    assert [d["client_id"] for d in acked["hal"]] == [tricky["client_id"], "n1"]
    raw = await store.redis.hgetall(key)
    assert {k.decode(): int(v) for k, v in raw.items()} == {"*": 1, "s2": 1}
    await store.acknowledge_many({"hal": 3})
    assert await store.redis.hgetall(key) == {}


@given(
    cuts=st.lists(st.integers(0, 120), min_size=0, max_size=6),
    first=st.integers(1, 130),
    span=st.integers(0, 60),
    n_extra=st.integers(0, 10),
)
def test_walks_match_a_plain_filter_whatever_the_ranges(
    cuts: list[int], first: int, span: int, n_extra: int
) -> None:
    """``numbers``, and a page-style walk with ``skip``/``stop``, give exactly the
    numbers outside every skipped range, for any ranges (disjoint, ascending)."""
    points = sorted(set(cuts))
    gaps = tuple((points[i], points[i + 1]) for i in range(0, len(points) - 1, 2))
    n = (points[-1] if points else 0) + n_extra
    c = Counter(n=n, acked=0, gaps=gaps)
    skipped = {k for f, t in gaps for k in range(f + 1, t + 1)}
    last = min(first + span, n)
    assert c.numbers(first, last) == [k for k in range(first, last + 1) if k not in skipped]
    walked, start = [], first - 1
    while (start := c.skip(start)) < n:
        stop = c.stop(start, 7)
        assert stop > start
        walked.extend(range(start + 1, stop + 1))
        start = stop
    assert walked == [k for k in range(first, n + 1) if k not in skipped]


async def test_a_20000_item_inbox_through_two_losses_pages_and_acks_in_full(
    store: DeliveryStore,
) -> None:
    """At the size an offline member's inbox reaches: 20,000 items, 15,000 of them
    waiting in MongoDB across two losses, paged to the end and acknowledged at once."""
    for start in range(0, 10_000, 2_000):
        await store.store_hot([item("ida", i) for i in range(start, start + 2_000)])
    await store.persist_due(now=10**10)
    await store.ctr.checkpoint()
    await lose_redis(store.redis, store.prefix)
    await store.store_hot([item("ida", i) for i in range(10_000, 15_000)])
    await store.persist_due(now=10**10)
    await store.ctr.checkpoint()
    await lose_redis(store.redis, store.prefix)
    await store.store_hot([item("ida", i) for i in range(15_000, 20_000)])  # hot
    seen: list[int] = []
    after, more = 0, True
    while more:
        page, more = await asyncio.wait_for(store.page("ida", after, 200), 10)
        seen += [d["seq"] for d in page]
        after = seen[-1]
    assert len(seen) == 20_000 and seen == sorted(set(seen))
    assert seen[10_000] == 10_000 + GAP + 1 and seen[15_000] == 15_000 + 2 * GAP + 1
    acked = await asyncio.wait_for(store.acknowledge_many({"ida": seen[-1]}), 60)
    assert len(acked["ida"]) == 20_000
    assert (await store.page("ida", 0, 10))[0] == []


@contextlib.asynccontextmanager
async def _without_mongodb(store: DeliveryStore) -> AsyncIterator[InboxCounters]:
    """The store's counters as they are while MongoDB is down: the same Redis, and a
    MongoDB client whose server never answers (a port nothing listens on)."""
    down: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300"
    )
    try:
        yield InboxCounters(store.redis, store.prefix, down.x.counters, down.x.meta)
    finally:
        await down.close()


async def test_a_first_start_seeds_new_inboxes_without_mongodb(store: DeliveryStore) -> None:
    assert [d["seq"] for d in await store.store_hot([item("jan", 0)])] == [1]
    async with _without_mongodb(store) as ctr:
        assert await asyncio.wait_for(ctr.reserve("kim", 2), 5) == 1
    assert (await store.ctr.get(["kim"]))["kim"] == Counter(n=2, acked=0)


async def test_after_a_loss_the_checkpoints_are_copied_so_no_first_item_waits_for_mongodb(
    store: DeliveryStore,
) -> None:
    """Redis lost its data, then MongoDB goes down: once the persister has copied the
    checkpoints into Redis, neither an inbox that had items before the loss nor a new
    one needs MongoDB to number its first item; the new one's jump reaches MongoDB
    with the next checkpoint, and a second loss numbers nothing twice."""
    await store.store_hot([item("lea", i) for i in range(3)])
    await store.ctr.checkpoint()
    await lose_redis(store.redis, store.prefix)
    async with _without_mongodb(store) as ctr:
        # Before the copy, a counter missing from Redis is read from its checkpoint.
        with pytest.raises(ServerSelectionTimeoutError):
            await store.store_hot([item("zed", 0)])  # decides this lifetime's base
            await ctr.reserve("lea", 1)
        assert await store.ctr.warm() == 1
        assert await store.ctr.warm() == 0  # done: one read of the flag
        assert await asyncio.wait_for(ctr.reserve("lea", 1), 5) == 3 + GAP + 1
        assert await asyncio.wait_for(ctr.reserve("max", 2), 5) == GAP + 1
    assert await store.ctr.checkpoint() >= 2
    saved = await store.counters.find_one({"_id": "max"})
    assert saved == {"_id": "max", "n": GAP + 2, "acked": 0, "g": f"0:{GAP}"}
    # A counter started after the loss and not checkpointed before the next one: the
    # next loss's floor is past whatever it handed out.
    await store.store_hot([item("ned", 0)])  # GAP + 1, only in Redis
    await lose_redis(store.redis, store.prefix)
    again = await store.store_hot([item("ned", 1), item("max", 9), item("lea", 9)])
    assert [d["seq"] for d in again] == [2 * GAP + 1, 2 * GAP + 3, 3 + 2 * GAP + 2]
    page, _ = await store.page("max", 0, 10)
    assert [d["seq"] for d in page] == [2 * GAP + 3]


async def test_a_warm_up_does_not_call_itself_complete_past_a_counter_another_held(
    store: DeliveryStore,
) -> None:
    """A consumer was seeding an inbox (its lock held) when the warm-up came, and died:
    the warm-up skipped that inbox, trusting the holder. It used to set ``ctrall``
    anyway, and once the lock expired the inbox was seeded as a new one at the floor
    (its checkpoint and the items it numbers in MongoDB skipped). Now ``ctrall`` waits
    for a warm-up that finds every checkpoint's counter in Redis."""
    await store.store_hot([item("ola", i) for i in range(3)] + [item("pia", 0)])
    await store.ctr.checkpoint()
    await lose_redis(store.redis, store.prefix)
    await store.store_hot([item("zoe", 0)])  # a first write: this lifetime's base
    lock = store.ctr.seed_lock_key("ola")
    await store.redis.set(lock, "a seeder that died", ex=60)
    assert await store.ctr.warm() == 1  # pia's
    assert not await store.redis.exists(store.ctr.all_key)
    await store.redis.delete(lock)  # its lock expires
    assert await store.ctr.warm() == 1  # ola's, from its checkpoint
    assert await store.redis.exists(store.ctr.all_key)
    assert [d["seq"] for d in await store.store_hot([item("ola", 3)])] == [3 + GAP + 1]


async def test_an_upgrade_copies_the_counters_kept_in_mongodb_before_trusting_redis(
    store: DeliveryStore,
) -> None:
    await store.counters.insert_many(
        [{"_id": f"old{i}", "n": 10 + i, "acked": 5} for i in range(2 * 3 + 1)]
    )
    assert (await store.store_hot([item("old0", 0)]))[0]["seq"] == 11  # read from MongoDB
    assert await store.ctr.warm(page=3) == 6  # the rest, three pages and a bit
    async with _without_mongodb(store) as ctr:
        assert await asyncio.wait_for(ctr.reserve("old6", 1), 5) == 17
        assert await asyncio.wait_for(ctr.reserve("new", 1), 5) == 1
    assert (await store.ctr.get(["old3"]))["old3"] == Counter(n=13, acked=5)


async def test_thirty_thousand_checkpoints_are_copied_back_after_a_loss(
    store: DeliveryStore,
) -> None:
    """At the size a deployment reaches (30,000 device inboxes): after a loss every
    one of them is in Redis again, from its checkpoint and past the jump, and none
    needs MongoDB for its next number."""
    inboxes = 30_000
    await store.store_hot([item("seed", 0)])  # a first start: the base is decided
    await store.counters.insert_many(
        [{"_id": f"u{i}.1", "n": i % 50 + 1, "acked": i % 50} for i in range(inboxes)]
    )
    await lose_redis(store.redis, store.prefix)
    # Read with one cursor: the embedded server reads every document for each
    # ``_id`` range, so pages by range read n²/2,000 (100,000 inboxes: 94 s, now 31 s).
    listener = FindFilters()
    watched: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        store.settings.mongo_url, event_listeners=[listener]
    )
    try:
        ctr = InboxCounters(store.redis, store.prefix,
                            watched[store.counters.database.name]["counters"],
                            watched[store.counters.database.name]["meta"])  # fmt: skip
        assert await asyncio.wait_for(ctr.warm(), 120) == inboxes
    finally:
        await watched.close()
    assert [f for coll, f in listener.filters if coll == "counters"] == [{}]
    got = await store.ctr.get([f"u{i}.1" for i in range(0, inboxes, 997)])
    assert all(
        c.n == i % 50 + 1 + GAP for i, c in zip(range(0, inboxes, 997), got.values(), strict=True)
    )
    async with _without_mongodb(store) as ctr:
        assert await asyncio.wait_for(ctr.reserve(f"u{inboxes - 1}.1", 1), 5) == 50 + GAP + 1


async def test_reading_a_new_inbox_hands_out_nothing_and_records_nothing(
    store: DeliveryStore,
) -> None:
    """A device that syncs or acknowledges before it ever had an item: its counter is
    made in Redis, and nothing reaches MongoDB (no number was handed out)."""
    await store.store_hot([item("pat", 0)])  # a first start: every counter is in Redis
    assert (await store.ctr.get(["quinn"]))["quinn"] == Counter(n=0, acked=0)
    await store.ctr.checkpoint()
    assert await store.counters.find_one({"_id": "quinn"}) is None


async def test_a_warm_up_racing_a_first_item_leaves_no_range_uncovered(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a loss, a consumer's first item to an inbox and the warm-up's copy seed the
    same counter at once. The interleaving the soak met (Redis killed twice): the
    consumer writes the checkpoint, the warm-up reads it, finds Redis still without
    the counter and writes its own (a second jump), then the consumer's counter
    lands in Redis. The next checkpoint kept the warm-up's ``n`` with the consumer's
    ranges, and after one more loss a page walked a billion numbers. Seeding is one
    seeder at a time per inbox: the warm-up leaves an inbox a consumer holds."""
    await store.store_hot([item("kim", i) for i in range(3)])  # 1..3
    await store.persist_due(now=10**10)
    await store.ctr.checkpoint()
    await lose_redis(store.redis, store.prefix)
    ctr = store.ctr
    original = ctr.checkpoints.bulk_write
    warm_wrote, consumer_done = asyncio.Event(), asyncio.Event()
    warm: asyncio.Task[int] | None = None
    calls = 0

    async def bulk_write(ops: Any, **kw: Any) -> Any:
        nonlocal calls, warm
        calls += 1
        result = await original(ops, **kw)
        if calls == 1:  # the consumer's: now the warm-up runs, up to its own write
            warm = asyncio.create_task(ctr.warm())
            wrote = asyncio.create_task(warm_wrote.wait())
            await asyncio.wait([warm, wrote], timeout=10, return_when=asyncio.FIRST_COMPLETED)
            wrote.cancel()
        elif warm is not None and not warm.done():  # the warm-up's: after the consumer
            warm_wrote.set()
            await consumer_done.wait()
        return result

    monkeypatch.setattr(ctr.checkpoints, "bulk_write", bulk_write)
    first = await store.store_hot([item("kim", 3)])
    consumer_done.set()
    assert warm is not None
    await asyncio.wait_for(warm, 10)
    monkeypatch.setattr(ctr.checkpoints, "bulk_write", original)
    assert [d["seq"] for d in first] == [3 + GAP + 1]
    assert not await store.redis.exists(ctr.seed_lock_key("kim"))  # let go
    await store.store_hot([item("kim", 4)])  # 3 + GAP + 2
    await store.persist_due(now=10**10)
    await store.ctr.checkpoint()
    saved = await store.counters.find_one({"_id": "kim"})
    assert saved is not None and saved["n"] == 3 + GAP + 2, saved
    # One more loss: the page steps over every skipped range.
    await lose_redis(store.redis, store.prefix)
    third = await store.store_hot([item("kim", 5)])
    wanted = [1, 2, 3, 3 + GAP + 1, 3 + GAP + 2, third[0]["seq"]]
    page, more = await asyncio.wait_for(store.page("kim", 0, 10), 10)
    assert [d["seq"] for d in page] == wanted and not more


async def test_a_seeder_waits_for_the_inbox_another_seeder_holds(store: DeliveryStore) -> None:
    """A consumer finding an inbox's seeding lock taken writes no checkpoint of its
    own: it waits until the holder's counter is in Redis and numbers from it."""
    await store.store_hot([item("uma", i) for i in range(2)])  # 1..2
    await store.persist_due(now=10**10)
    await store.ctr.checkpoint()
    await lose_redis(store.redis, store.prefix)
    ctr = store.ctr
    at = await ctr._base()  # this lifetime's base, decided once
    await store.redis.set(ctr.seed_lock_key("uma"), "another seeder")
    waiting = asyncio.create_task(ctr.seed(["uma"]))
    saved = await store.counters.find_one({"_id": "uma"})
    assert saved is not None
    await asyncio.sleep(0)  # the waiter has found the lock taken
    assert not waiting.done()
    # The holder: its checkpoint, then its counter in Redis, then it lets go.
    await ctr._seed(["uma"], {"uma": (saved["n"], saved["acked"], ())}, at)
    await store.redis.delete(ctr.seed_lock_key("uma"))
    await asyncio.wait_for(waiting, 5)
    assert await ctr.reserve("uma", 1) == 2 + GAP + 1
    assert (await store.counters.find_one({"_id": "uma"}))["n"] == 2 + GAP  # one jump


async def test_an_ack_of_an_inbox_another_seeder_holds_is_unavailable_and_changes_nothing(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding: an ack of an inbox whose counter another process was seeding
    (stuck on MongoDB after a Redis loss, or dead holding its lock) was answered 200
    ``{"acked": 0}``: nothing acknowledged, no receipts, an unissued number not
    refused, and the gateway took it for done (never sent again). It is answered
    ``service_unavailable`` as the inbox's page is; an ack of another inbox in the
    same flush is acknowledged as ever."""
    monkeypatch.setattr(counters, "SEED_WAIT_S", 0.3)
    await store.store_hot([item("held.1", s) for s in range(3)])
    await store.persist_due(now=10**10)
    await store.ctr.checkpoint()
    await lose_redis(store.redis, store.prefix)
    free = (await store.store_hot([item("free.1", 0)]))[0]["seq"]  # this lifetime's first
    await store.redis.set(store.ctr.seed_lock_key("held.1"), "another-process", ex=30)
    inbox = Inbox(store)
    held, unissued, free_acked = await asyncio.gather(
        inbox.ack("held.1", 3), inbox.ack("held.1", 999), inbox.ack("free.1", free),
        return_exceptions=True,
    )  # fmt: skip
    for answer in (held, unissued):
        assert isinstance(answer, ApiError) and answer.code == "service_unavailable", answer
    assert free_acked == 1
    # Nothing of the held inbox was acknowledged: once its seeder is done, all three wait.
    await store.redis.delete(store.ctr.seed_lock_key("held.1"))
    page, _ = await store.page("held.1", 0, 10)
    assert [d["seq"] for d in page] == [1, 2, 3]
    await lose_redis(store.redis, store.prefix)
    await store.store_hot([item("free.1", 1)])
    await store.redis.set(store.ctr.seed_lock_key("held.1"), "another-process", ex=30)
    with pytest.raises(CountersUnseeded):  # without a set to put them in
        await store.ctr.ack_hot({"held.1": 3})


async def test_a_counter_another_seeder_holds_is_a_dependency_away_not_a_missing_key(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding: a page, and the removal of a device's inbox, read the counter of an
    inbox whose seeding another process held (stuck on MongoDB after a Redis loss) and
    raised KeyError: a page answered 500 ``internal``, and a device-removed event was
    counted as the record's failure (dead-lettered after a few tries). Both raise
    CountersUnseeded now: 503 ``service_unavailable`` (tests/messaging/test_acks.py),
    and the event waits, as a batch does."""
    monkeypatch.setattr(counters, "SEED_WAIT_S", 0.2)
    await store.redis.set(store.ctr.seed_lock_key("held.1"), "another-process", ex=30)
    with pytest.raises(CountersUnseeded):
        await store.page("held.1", 0, 10)
    with pytest.raises(CountersUnseeded) as err:
        await store.drop_inbox("held.1")
    assert unavailable(err.value) == "counters"
