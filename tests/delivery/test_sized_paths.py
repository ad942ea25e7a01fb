"""Delivery paths at the sizes real users reach, against the real embedded servers.

- the drain of acks left for later while MongoDB was down (``drain_cold_acks``), with
  more entries than one read takes (``ID_CHUNK``, 500) and some of their inboxes'
  counters missing from Redis, one of them held by another seeder;
- a persister pass killed after inserting ~10,000 items into MongoDB and before taking
  them out of Redis: the next process's pass, and pages in between, see each once;
- Redis losing its data halfway through storing a batch of 500 records: the worker
  consumes them again from Kafka and every one is in the inbox once (and the race in
  which that write and a persister pass both noticed the loss: recorded once);
- acks of about 2,000 hot items, at and just past the ack script's bound (``ACK_SPAN``,
  its "few items over a wide range" read) and delivery's ``RANGE_READ_AT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from parley_contract import envelopes as e
from prometheus_client import CollectorRegistry
from pymongo import AsyncMongoClient
from redis.exceptions import ConnectionError as RedisConnectionError

from services.common import scripts
from services.common.clients import (
    KafkaProducerHandle,
    Topics,
    mongo_client,
    redis_client,
    service_db,
)
from services.common.config import Settings
from services.common.errors import ApiError
from services.common.inbox import queue_ack
from services.delivery import counters
from services.delivery.handlers import Inbox
from services.delivery.hot import GUARD, HotInboxLost
from services.delivery.store import RANGE_READ_AT, DeliveryStore
from services.delivery.worker import Worker
from tests.delivery.conftest import counts, in_mongo, item, later, receipts_of
from tests.support.aio import eventually
from tests.support.losses import committed, lose_redis


def _name(tag: str) -> str:
    return f"{tag}{uuid.uuid4().hex[:6]}.1"


@contextlib.asynccontextmanager
async def _mongodb_down(store: DeliveryStore) -> AsyncIterator[None]:
    """The store's inbox collection on a MongoDB that never answers (nothing listens)."""
    up = store.inbox
    down: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300"
    )
    try:
        store.inbox = down.x.inbox
        yield
    finally:
        store.inbox = up
        await down.close()


async def _page_through(store: DeliveryStore, inbox: str, limit: int = 500) -> list[Any]:
    """Every item an inbox's pages return, paging on from each page's last item."""
    seen: list[dict[str, Any]] = []
    after = 0
    while True:
        page, more = await store.page(inbox, after, limit)
        seen += page
        if not more:
            return seen
        assert page, "a page that says more returns something"
        after = int(page[-1]["seq"])


def _senders(cids: list[str], sender_of: dict[str, str]) -> dict[str, int]:
    """The waiting counts ``cids`` make: ``*`` and one per sender."""
    out: dict[str, int] = {}
    for cid in cids:
        out[sender_of[cid]] = out.get(sender_of[cid], 0) + 1
    return {"*": len(cids), **out} if cids else {}


# 1. The drain of deferred acks ------------------------------------------------------


async def test_a_drain_of_hundreds_of_deferred_acks_around_held_and_unseeded_counters(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While MongoDB is down, six inboxes acknowledge 120 of their 150 persisted items
    (a narrow range: one entry per id, 720) and three acknowledge 2,050 of 2,100 (a
    wide range: one ``~`` entry each): 723 entries, more than a drain reads at once.
    Then Redis lacks two of the wide inboxes' counters: one is held by another seeder
    (its entry must wait, its copies kept), the other is seeded from its checkpoint by
    the drain itself. Every acknowledged copy is deleted once, counted down once and
    receipted once; every copy above a watermark stays, counted."""
    monkeypatch.setattr(counters, "SEED_WAIT_S", 0.2)  # a held counter is waited for
    narrow = [_name("n") for _ in range(6)]
    plain, held, unseeded = _name("wp"), _name("wh"), _name("wu")
    sizes = {
        **{i: (150, 120) for i in narrow},
        **{i: (2100, 2050) for i in (plain, held, unseeded)},
    }
    sender_of: dict[str, str] = {}
    acked: dict[str, list[str]] = {}
    kept: dict[str, list[str]] = {}
    for inbox, (n, top) in sizes.items():
        cids = [f"{inbox}/{k}" for k in range(n)]
        sender_of.update({c: f"s{k % 2}" for k, c in enumerate(cids)})
        acked[inbox], kept[inbox] = cids[:top], cids[top:]
        for s in range(0, n, 500):
            await store.store_hot([item(inbox, k, sender=f"s{k % 2}", cid=cids[k])
                                   for k in range(s, min(s + 500, n))])  # fmt: skip
    await store.persist_due(now=later(store))
    # Persisted long before the ack (a copy moved after it may be a shadow: left alone).
    await store.inbox.update_many({}, {"$set": {"moved_at": time.time() - 3600}})
    assert await store.inbox.count_documents({}) == 6 * 150 + 3 * 2100

    async with _mongodb_down(store):
        now_acked = await store.acknowledge_many({i: top for i, (_, top) in sizes.items()})
    assert all(docs == [] for docs in now_acked.values())  # nothing was hot
    assert await store.redis.scard(store.cold_acks) == 6 * 120 + 3

    # The watermarks reach their checkpoints; then two counters are missing from Redis
    # (after a loss, before the warm-up copied them), one held by another seeder.
    await store.ctr.checkpoint()
    ctr = store.ctr
    await store.redis.delete(ctr.key(held), ctr.key(unseeded), ctr.base_key, ctr.floor_key,
                             ctr.all_key)  # fmt: skip
    await store.redis.set(ctr.seed_lock_key(held), "another-process", ex=60)
    sent = receipts_of(store, monkeypatch)

    drained: list[dict[str, Any]] = []
    runs = 0
    while await store.redis.scard(store.cold_acks) > 1:
        runs += 1
        assert runs <= 2, "each run drains all it read but the held entry"
        drained += await store.drain_cold_acks()
    [left] = await store.redis.smembers(store.cold_acks)
    assert scripts.text(left).startswith(f"~{held}|2050|")
    done = [c for i in (*narrow, plain, unseeded) for c in acked[i]]
    assert sorted(d["client_id"] for d in drained) == sorted(done)
    assert sorted(sent) == sorted(done)  # each once
    for inbox, (n, top) in sizes.items():
        first = 1 if inbox == held else top + 1
        assert await in_mongo(store, inbox) == list(range(first, n + 1)), inbox
        waiting = acked[inbox] + kept[inbox] if inbox == held else kept[inbox]
        assert await counts(store, inbox) == _senders(waiting, sender_of), inbox
    # The counter the drain seeded kept its watermark (from the checkpoint).
    page = await _page_through(store, unseeded)
    assert [d["client_id"] for d in page] == kept[unseeded]

    # The other seeder died; its lock is gone. The next run seeds and drains that one.
    await store.redis.delete(ctr.seed_lock_key(held))
    last = await store.drain_cold_acks()
    assert sorted(d["client_id"] for d in last) == sorted(acked[held])
    assert await store.redis.scard(store.cold_acks) == 0
    assert await in_mongo(store, held) == list(range(2051, 2101))
    assert await counts(store, held) == _senders(kept[held], sender_of)
    assert await store.drain_cold_acks() == []  # once
    assert sorted(sent) == sorted(done + acked[held]) and len(sent) == len(set(sent))
    store._sweep_at = ""
    assert await store.sweep_acked() == 0  # nothing left below a watermark
    for inbox in sizes:
        page = await _page_through(store, inbox)
        assert [d["client_id"] for d in page] == kept[inbox], inbox


# 2. A persister pass killed between its insert and its removal ----------------------


async def test_ten_thousand_items_a_killed_pass_left_in_both_places_are_each_seen_once(
    store: DeliveryStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass (pages of 10,000, the setting's maximum) inserted 9,500 items into MongoDB
    and its process was killed before it took them out of Redis; the last 500 (stored
    at the page's last time) were left for its next page. Another process's pages,
    before and after its own pass, return each of the 10,000 once, in order; its pass
    leaves each in MongoDB once and nothing in Redis; the counts never move; one ack
    then deletes, counts down and receipts each once."""
    inbox, n = _name("kill"), 10_000
    store.settings = store.settings.model_copy(update={"hot_persist_batch": 10_000})
    cids = [f"c{k}" for k in range(n)]
    sender_of = {c: f"s{k % 4}" for k, c in enumerate(cids)}
    for s in range(0, n, 500):
        await store.store_hot([item(inbox, k, sender=sender_of[cids[k]], cid=cids[k])
                               for k in range(s, s + 500)])  # fmt: skip

    async def killed(items: Any) -> list[bool]:
        raise RedisConnectionError("the process was killed here")

    monkeypatch.setattr(store.hot, "remove", killed)
    with pytest.raises(RedisConnectionError):
        await store.persist_due(now=later(store))
    assert await in_mongo(store, inbox) == list(range(1, 9501))
    assert await store.redis.hlen(store.hot.key(inbox)) == n

    # The next process: nothing of the dead one's memory (its moved items).
    mongo, redis = mongo_client(settings), redis_client(settings)
    try:
        other = DeliveryStore(settings, service_db(mongo, settings, "delivery"), redis)
        seen = await _page_through(other, inbox)
        assert [(d["seq"], d["client_id"]) for d in seen] == [
            (k + 1, c) for k, c in enumerate(cids)
        ]
        assert await counts(other, inbox) == _senders(cids, sender_of)

        written, _ = await other.persist_due(now=later(other))
        assert written == n
        assert await in_mongo(other, inbox) == list(range(1, n + 1))  # _id: once each
        assert await other.redis.hlen(other.hot.key(inbox)) == 0
        assert await other.redis.zcard(other.hot.index) == 0
        assert (await other.persist_due(now=later(other)))[0] == 0
        seen = await _page_through(other, inbox)
        assert [(d["seq"], d["client_id"]) for d in seen] == [
            (k + 1, c) for k, c in enumerate(cids)
        ]
        assert await counts(other, inbox) == _senders(cids, sender_of)

        sent = receipts_of(other, monkeypatch)
        assert await Inbox(other).ack(inbox, n) == n
        assert sorted(sent) == sorted(cids)  # each once
        assert await in_mongo(other, inbox) == []
        assert await counts(other, inbox) == {}
        other._sweep_at = ""
        assert await other.sweep_acked() == 0
        assert await Inbox(other).ack(inbox, n) == 0 and len(sent) == n
    finally:
        await redis.aclose()
        await mongo.close()


# 3. Redis lost halfway through storing a batch -----------------------------------------


async def test_redis_lost_halfway_through_storing_a_batch_of_500_loses_nothing(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """500 messages from five senders to one device (one partition) reach the worker in
    one batch; Redis loses everything after the first half of its items is written
    (the second half's write is refused: the process's mark is gone). The worker
    consumes the batch again from Kafka, and once its offsets are committed (persisted
    and safe) every message is in the inbox exactly once, in the order sent, and the
    waiting counts are exact."""
    s = settings.model_copy(update={
        "delivery_consumers": 1, "hot_persist_after_s": 0.5, "hot_persist_interval_s": 0.1,
    })  # fmt: skip
    n = 500
    mongo, redis = mongo_client(s), redis_client(s)
    store = DeliveryStore(s, service_db(mongo, s, "delivery"), redis)
    await store.ensure_indexes()
    topics = Topics(s)
    producer = KafkaProducerHandle(s, topics.all())
    await producer.start()
    worker = Worker(s, store, CollectorRegistry(), producer)
    cids = [f"m{k}" for k in range(n)]
    sender_of = {c: f"s{k % 5}" for k, c in enumerate(cids)}
    put = store.hot.put
    lost_in: list[int] = []

    async def loses_redis_halfway(docs: list[Any], *args: Any, **kwargs: Any) -> Any:
        if lost_in:
            return await put(docs, *args, **kwargs)
        lost_in.append(len(docs))
        await put(docs[: len(docs) // 2], *args, **kwargs)
        await lose_redis(store.redis, store.prefix)
        return await put(docs[len(docs) // 2 :], *args, **kwargs)

    monkeypatch.setattr(store.hot, "put", loses_redis_halfway)
    try:
        kafka = await producer.wait_ready(30)
        sends = []
        for cid in cids:
            env = e.MessageEnvelope(
                server_id=e.message_server_id(sender_of[cid], cid), to="bob", to_device=1,
                from_=sender_of[cid], from_device=1, client_id=cid,
                conversation=f"dm:{sender_of[cid]}:bob", sent_at=int(time.time() * 1000),
                body="QUFBQQ",
            )  # fmt: skip
            sends.append(await kafka.send(topics.messages, e.encode(env), key=b"bob.1"))
        for sent in sends:
            await sent
        await worker.start()
        await eventually(lambda: committed(s), lambda c: c == n, timeout=60)
        assert lost_in == [n]  # the loss hit the whole batch, halfway
        # Once, even when a persister pass noticed it too (the test below).
        assert worker.hot_lost._value.get() == 1
        seen = await _page_through(store, "bob.1")
        assert [d["client_id"] for d in seen] == cids
        assert len({d["seq"] for d in seen}) == n
        assert await counts(store, "bob.1") == _senders(cids, sender_of)
    finally:
        await worker.stop()
        await producer.stop()
        await redis.aclose()
        await mongo.close()


async def test_a_loss_a_write_and_a_persister_pass_notice_at_once_is_recorded_once(
    store: DeliveryStore,
) -> None:
    """The race the test above can hit: a write refused by the process's mark (Redis
    lost everything), and the consumer records the loss under ``_mark_lock``; a
    persister pass meanwhile reads the new Redis's heartbeat (1, below the beats it
    counted) before the consumer has reset ``_beat`` (``_hot_inbox_lost``: "not a
    second loss"), waits for the lock, and records the same loss again: the loss
    metric counts two, and every consumer goes back to its committed offsets twice."""
    worker = Worker(store.settings, store, CollectorRegistry(), None)  # type: ignore[arg-type]
    await worker._arm()
    await worker.persist_once()
    await worker.persist_once()  # the persister has counted two beats
    await lose_redis(store.redis, store.prefix)
    GUARD.set((worker.mark, str(worker.rewinds)))  # as the consumer sets it for a batch
    with pytest.raises(HotInboxLost) as refused:
        await store.store_hot([item("bob.1", 0)])
    GUARD.set(None)
    # The consumer handles the refusal (it holds the lock, waiting on Redis and MongoDB)
    # while the persister's next pass runs.
    consumer = asyncio.create_task(worker._mark_lost(refused.value))
    await asyncio.sleep(0)
    await worker.persist_once()
    await consumer
    assert worker.hot_lost._value.get() == 1
    assert worker.rewinds == 1


# 4. Acks of about 2,000 hot items --------------------------------------------------------


@pytest.mark.parametrize(
    ("cold", "hot", "gap", "kept", "calls"),
    [
        # 2,000 hot items, as many numbers: one call of ACK_SPAN numbers.
        pytest.param(0, 2000, 0, 0, 1, id="2000-hot"),
        # One past: the hash holds more than ACK_SPAN: 2,000 numbers a call.
        pytest.param(0, 2001, 0, 10, 2, id="2001-hot"),
        # 2,000 in the hash over 6,990 numbers: its fields read, one call.
        pytest.param(0, 1990, 5000, 10, 1, id="2000-hash-over-a-gap"),
        # 2,001 in the hash over 6,991 numbers: 2,000 numbers a call, the gap walked.
        pytest.param(0, 1991, 5000, 10, 4, id="2001-hash-over-a-gap"),
        # Persisted and hot over RANGE_READ_AT numbers (MongoDB read by ids) ...
        pytest.param(500, 1500, 0, 10, 1, id="2000-numbers-some-persisted"),
        # ... and one past (MongoDB read by an _id range).
        pytest.param(500, 1501, 0, 10, 1, id="2001-numbers-some-persisted"),
    ],
)
async def test_an_ack_of_about_two_thousand_items_takes_each_once(
    store: DeliveryStore,
    monkeypatch: pytest.MonkeyPatch,
    cold: int,
    hot: int,
    gap: int,
    kept: int,
    calls: int,
) -> None:
    """One cumulative ack, through the inbox's group commit, over ``cold`` persisted
    and ``hot`` hot items (after ``gap`` numbers nothing took), with ``kept`` hot items
    after it: every acknowledged item deleted (Redis, its index, MongoDB), counted down
    and receipted once, in the expected number of ack script calls; the kept ones
    still waiting, counted and paged."""
    inbox = _name("ack")
    if gap:
        await store.ctr.reserve(inbox, gap)  # numbers handed out and never used
    cids = [f"a{k}" for k in range(cold + hot + kept)]
    sender_of = {c: f"s{k % 2}" for k, c in enumerate(cids)}

    async def stored(first: int, last: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for s in range(first, last, 500):
            out += await store.store_hot([item(inbox, k, sender=sender_of[cids[k]], cid=cids[k])
                                          for k in range(s, min(s + 500, last))])  # fmt: skip
        return out

    docs = await stored(0, cold)
    if cold:
        await store.persist_due(now=later(store))
        assert len(await in_mongo(store, inbox)) == cold
    docs += await stored(cold, cold + hot + kept)
    top = int(docs[cold + hot - 1]["seq"])
    assert top == gap + cold + hot
    if cold:  # which MongoDB read the ack makes: by ids, or by an _id range past it
        assert (top <= RANGE_READ_AT) == (hot == 1500)
    made = 0

    async def counted(*args: Any, **kwargs: Any) -> None:
        nonlocal made
        made += 1
        await queue_ack(*args, **kwargs)

    monkeypatch.setattr(counters, "queue_ack", counted)
    sent = receipts_of(store, monkeypatch)
    inboxes = Inbox(store)

    assert await inboxes.ack(inbox, top) == cold + hot
    assert made == calls
    assert sorted(sent) == sorted(cids[: cold + hot])  # each once
    left = [int(d["seq"]) for d in docs[cold + hot :]]
    assert sorted(int(f) for f in await store.redis.hkeys(store.hot.key(inbox))) == left
    entries = await store.redis.zrange(store.hot.index, 0, -1)
    assert sorted(scripts.text(x) for x in entries) == sorted(f"{inbox}|{s}" for s in left)
    assert await in_mongo(store, inbox) == []
    assert await counts(store, inbox) == _senders(cids[cold + hot :], sender_of)
    page = await _page_through(store, inbox)
    assert [d["client_id"] for d in page] == cids[cold + hot :]
    assert await inboxes.ack(inbox, top) == 0 and len(sent) == cold + hot


async def test_one_flush_acks_20000_persisted_items_and_500_inboxes_beside_one_held(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The held-counter answer at size: after a Redis loss one flush carries an ack of an
    inbox of 20,000 items waiting in MongoDB (its counter seeded by this flush), acks of
    500 other inboxes, and two acks of an inbox whose counter another process holds.
    Those two are `service_unavailable` and change nothing; every other ack takes all it
    covers, and their `delivered` receipts go out once."""
    monkeypatch.setattr(counters, "SEED_WAIT_S", 0.3)
    small = [f"sm{i}.1" for i in range(500)]
    for start in range(0, 20_000, 2_000):
        await store.store_hot([item("big.1", n) for n in range(start, start + 2_000)])
    await store.store_hot(
        [item(inbox, 0) for inbox in small] + [item("held.1", n) for n in range(3)]
    )
    written, _ = await store.persist_due(now=later(store))
    assert written == 20_000 + 500 + 3
    await store.ctr.checkpoint()
    await lose_redis(store.redis, store.prefix)
    await store.store_hot([item("first.1", 0)])  # this lifetime's base
    await store.redis.set(store.ctr.seed_lock_key("held.1"), "another-process", ex=30)
    sent = receipts_of(store, monkeypatch)
    inbox = Inbox(store)
    answers = await asyncio.gather(
        inbox.ack("big.1", 20_000), *(inbox.ack(i, 1) for i in small),
        inbox.ack("held.1", 3), inbox.ack("held.1", 2), return_exceptions=True,
    )  # fmt: skip
    assert answers[0] == 20_000
    assert answers[1:501] == [1] * 500
    for refused in answers[501:]:
        assert isinstance(refused, ApiError) and refused.code == "service_unavailable"
    assert len(sent) == 20_000 + 500  # one receipt per item acknowledged, none for held.1
    assert await in_mongo(store, "big.1") == []
    await store.redis.delete(store.ctr.seed_lock_key("held.1"))
    assert [d["seq"] for d in (await store.page("held.1", 0, 10))[0]] == [1, 2, 3]
