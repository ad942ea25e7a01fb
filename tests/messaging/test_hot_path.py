"""Kafka is the log of record until an item is persisted or acknowledged (#13).

The hot inbox lives in Redis; delivery commits a partition's offsets only
past records whose items are in MongoDB or acknowledged. So if Redis loses
everything, the records are consumed again from the committed offsets and
every accepted message reaches its recipient, once (the client drops a
``server_id`` it has).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from parley_contract import envelopes as e

from services.delivery.hot import HotInbox
from services.delivery.state import WORKER
from services.delivery.worker import Worker
from tests.support.aio import eventually
from tests.support.losses import committed, lose_redis
from tests.support.users import uid
from tests.support.wsclient import WsClient, send_frame

from .conftest import Messaging


def _persister_held(
    messaging: Messaging, monkeypatch: pytest.MonkeyPatch
) -> tuple[Worker, Callable[[], Awaitable[None]]]:
    """Delivery's worker with its persister loop idle and nothing due for an hour; and
    the real pass, for the test to run when it chooses."""
    worker = messaging.delivery.server.app[WORKER]
    worker.store.settings = worker.store.settings.model_copy(update={"hot_persist_after_s": 3600})
    real = worker.persist_once

    async def asleep() -> None:
        return None

    monkeypatch.setattr(worker, "persist_once", asleep)
    return worker, real


async def synced(client: WsClient, sid: str) -> list[dict[str, object]]:
    await client.send({"op": "sync", "id": sid, "after": 0, "limit": 1000})
    await client.expect("synced", id=sid)
    return [f for f in client.drain() if f["op"] == "message"]


async def test_offsets_wait_for_the_persister_and_acks(messaging: Messaging) -> None:
    worker = messaging.delivery.server.app[WORKER]
    worker.store.settings = worker.store.settings.model_copy(update={"hot_persist_after_s": 3600})
    alice_id, bob_id = uid(), uid()
    messaging.issuer.users.add(bob_id)
    alice = await messaging.connect(alice_id, pod=0)
    before = await committed(messaging.settings)
    await alice.send_stored(bob_id, [(f"m{n}", "Ym9keQ") for n in range(5)])
    await worker.persist_once()
    assert await committed(messaging.settings) == before  # hot, not persisted: not committed
    # Persisted (an hour later, for the persister): now they may be committed.
    worker.store.settings = worker.store.settings.model_copy(update={"hot_persist_after_s": 0})
    await worker.persist_once()
    assert worker.persisted._value.get() >= 5
    await eventually(lambda: committed(messaging.settings), lambda c: c >= before + 5)


async def test_acknowledged_messages_are_committed_without_the_persist_delay(
    messaging: Messaging,
) -> None:
    """Items acknowledged leave the persister's index: their records are committed at
    the next pass, not ``hot_persist_after_s`` later. So Redis losing everything
    right after brings back only what was not acknowledged (before, every message
    of the last persist delay came back, stored again under a new seq)."""
    worker = messaging.delivery.server.app[WORKER]
    worker.store.settings = worker.store.settings.model_copy(update={"hot_persist_after_s": 3600})
    alice_id, bob_id = uid(), uid()
    messaging.issuer.users.add(bob_id)
    alice = await messaging.connect(alice_id, pod=0)
    bob = await messaging.connect(bob_id, pod=1)
    before = await committed(messaging.settings)
    await alice.send_stored(bob_id, [(f"k{n}", f"a2V{n}") for n in range(5)])
    seqs = [int((await bob.expect("message", body=f"a2V{n}"))["seq"]) for n in range(5)]
    await bob.send({"op": "ack", "seq": max(seqs), "id": "ack"})
    for n in range(5):
        await alice.expect("delivered", id=f"k{n}")
    await worker.persist_once()
    await eventually(lambda: committed(messaging.settings), lambda c: c >= before + 5)
    # One more, pushed but not acknowledged: it stays uncommitted.
    [kept] = await alice.send_stored(bob_id, [("k5", "a2V5")])
    await bob.expect("message", body="a2V5")
    await worker.persist_once()
    # Redis loses everything of this deployment.
    redis = worker.store.redis
    await lose_redis(redis, messaging.settings.redis_prefix)
    lost = worker.hot_lost._value.get()
    await eventually(lambda: _value(worker.hot_lost), lambda v: v > lost)
    # Consumed again from the committed offsets: only the unacknowledged one.
    again = await messaging.connect(bob_id, pod=0)
    items = await eventually(lambda: synced(again, uuid.uuid4().hex[:8]),
                             lambda got: any(i["body"] == "a2V5" for i in got))  # fmt: skip
    assert {i["body"] for i in items} == {"a2V5"}
    assert {i["server_id"] for i in items} == {kept["server_id"]}


async def test_redis_losing_the_hot_inbox_loses_no_accepted_message(
    messaging: Messaging,
) -> None:
    worker = messaging.delivery.server.app[WORKER]
    worker.store.settings = worker.store.settings.model_copy(update={"hot_persist_after_s": 3600})
    alice_id, bob_id = uid(), uid()
    messaging.issuer.users.add(bob_id)
    alice = await messaging.connect(alice_id, pod=0)
    sent = {}
    for n in range(20):
        accepted_frame = send_frame(f"r{n}", bob_id, f"cjA{n}")
        await alice.send(accepted_frame)
        sent[(await alice.expect("accepted", id=f"r{n}"))["server_id"]] = f"cjA{n}"
    for n in range(20):
        await alice.expect("stored", id=f"r{n}")
    # Redis loses everything of this deployment (a restart without persistence).
    redis = worker.store.redis
    assert await lose_redis(redis, messaging.settings.redis_prefix)
    lost = worker.hot_lost._value.get()
    await eventually(lambda: _value(worker.hot_lost), lambda v: v > lost)
    # Consumed again from the committed offsets: every message waits for bob once.
    bob = await messaging.connect(bob_id, pod=1)
    items = await eventually(lambda: synced(bob, uuid.uuid4().hex[:8]),
                             lambda got: len({i["server_id"] for i in got}) == 20)  # fmt: skip
    by_id = {i["server_id"]: i["body"] for i in items}
    assert by_id == sent
    # Stored again once, not twice (the same item may come both pushed and synced:
    # the same seq, which clients drop).
    assert len({i["seq"] for i in items}) == 20


async def test_nothing_is_stored_after_a_loss_before_what_was_lost(
    messaging: Messaging, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The persister is kept from noticing the loss: the next write must. Without
    the mark, a batch stored into the emptied Redis would take numbers ahead of
    the lost ones' replay (bob would read r10 before r0), or, with no persister
    to notice, r0..r9 would never come back."""
    worker, _ = _persister_held(messaging, monkeypatch)
    alice_id, bob_id = uid(), uid()
    messaging.issuer.users.add(bob_id)
    alice = await messaging.connect(alice_id, pod=0)
    await alice.send_stored(bob_id, [(f"o{n}", f"bzA{n}") for n in range(10)])
    redis = worker.store.redis
    await lose_redis(redis, messaging.settings.redis_prefix)
    lost = worker.hot_lost._value.get()
    for n in range(10, 20):
        await alice.send(send_frame(f"o{n}", bob_id, f"bzA{n}"))
        await alice.expect("accepted", id=f"o{n}")
    await eventually(lambda: _value(worker.hot_lost), lambda v: v == lost + 1)
    bob = await messaging.connect(bob_id, pod=1)
    items = await eventually(lambda: synced(bob, uuid.uuid4().hex[:8]),
                             lambda got: len({i["server_id"] for i in got}) == 20)  # fmt: skip
    firsts: dict[str, str] = {}
    for item in sorted(items, key=lambda i: int(str(i["seq"]))):
        firsts.setdefault(str(item["server_id"]), str(item["body"]))
    # Once each, in the order sent: the lost ten before the ten sent after the loss.
    assert list(firsts.values()) == [f"bzA{n}" for n in range(20)]
    assert worker.hot_lost._value.get() == lost + 1


async def test_redis_lost_during_a_persister_pass_commits_nothing_past_what_it_lost(
    messaging: Messaging, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis restarts empty between the pass's heartbeat and its reads of what is due
    (a slow drain of a backlog gives it seconds): the new, empty Redis has nothing
    due, which proved nothing. The pass used to move ``persisted_until`` to its
    cutoff anyway, and the batches of the lost items were committed before the next
    pass noticed the loss: lost for good. Now the pass first checks that Redis kept
    its count through it; the next pass rewinds and bob gets every message."""
    worker, persist_once = _persister_held(messaging, monkeypatch)  # the test runs passes
    alice_id, bob_id = uid(), uid()
    messaging.issuer.users.add(bob_id)
    alice = await messaging.connect(alice_id, pod=0)
    await persist_once()  # counts a beat: the next pass starts from a known count
    await alice.send_stored(bob_id, [(f"p{n}", f"cDA{n}") for n in range(5)])
    worker.store.settings = worker.store.settings.model_copy(update={"hot_persist_after_s": 0})
    persist_due = worker.store.persist_due
    redis = worker.store.redis

    async def redis_lost_first() -> tuple[int, float | None]:
        await lose_redis(redis, messaging.settings.redis_prefix)
        return await persist_due()

    monkeypatch.setattr(worker.store, "persist_due", redis_lost_first)
    until = worker.persisted_until
    await persist_once()
    assert worker.persisted_until == until  # nothing after the loss counts as persisted
    monkeypatch.setattr(worker.store, "persist_due", persist_due)
    lost = worker.hot_lost._value.get()
    await persist_once()  # the loss found: consumed again from the committed offsets
    assert worker.hot_lost._value.get() == lost + 1
    bob = await messaging.connect(bob_id, pod=1)
    items = await eventually(lambda: synced(bob, uuid.uuid4().hex[:8]),
                             lambda got: len({i["server_id"] for i in got}) == 5)  # fmt: skip
    assert {str(i["body"]) for i in items} == {f"cDA{n}" for n in range(5)}


async def synced_all(client: WsClient) -> list[dict[str, object]]:
    """Every item waiting for ``client``'s device, page after page."""
    items: list[dict[str, object]] = []
    after = 0
    while True:
        sid = uuid.uuid4().hex[:8]
        await client.send({"op": "sync", "id": sid, "after": after, "limit": 1000})
        done = await client.expect("synced", id=sid)
        items += [f for f in client.drain() if f["op"] == "message"]
        after = int(done["last"])
        if not done["more"]:
            return items


async def test_a_backlog_moved_in_batches_survives_redis_lost_between_them(
    messaging: Messaging, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3,000 messages wait for an offline device; the persister moves them 500 at a
    time, and Redis restarts empty after its second batch. The pass then finds
    nothing more due (the rest was lost with Redis) and must not count as complete;
    the next pass finds the loss, the records are consumed again, and the device
    gets all 3,000 exactly once, in the order sent."""
    worker, persist_once = _persister_held(messaging, monkeypatch)
    alice_id, bob_id = uid(), uid()
    messaging.issuer.users.add(bob_id)
    # Three senders of 1,000 each (one user's sends are rate limited: burst 1,000).
    senders = [await messaging.connect(u, pod=0) for u in (alice_id, uid(), uid())]
    await persist_once()  # counts a beat: the next pass starts from a known count
    n, batch = 3000, 500
    for start in range(0, n, 200):  # under a socket's sends in flight (256)
        await senders[start // 1000].send_stored(
            bob_id, [(f"k{i}", f"a0{i}") for i in range(start, start + 200)]
        )
    store = worker.store
    store.settings = store.settings.model_copy(
        update={"hot_persist_after_s": 0, "hot_persist_batch": batch}
    )
    insert_many, redis = store.inbox.insert_many, store.redis
    moved: list[int] = []

    async def insert_then_lose_redis(docs: list[dict[str, object]], **kwargs: object) -> object:
        result = await insert_many(docs, **kwargs)
        moved.append(len(docs))
        if len(moved) == 2:
            await lose_redis(redis, messaging.settings.redis_prefix)
        return result

    monkeypatch.setattr(store.inbox, "insert_many", insert_then_lose_redis)
    until, lost = worker.persisted_until, worker.hot_lost._value.get()
    await persist_once()
    # Two pages (each at most a batch: a page hands out the entries older than its last
    # one's time, services/delivery/store.py _due_pages), then nothing was due any more.
    assert len(moved) == 2 and all(0 < m <= batch for m in moved), moved
    assert worker.persisted_until == until  # the pass proved nothing
    monkeypatch.setattr(store.inbox, "insert_many", insert_many)
    await persist_once()  # the loss found: consumed again from the committed offsets
    assert worker.hot_lost._value.get() == lost + 1
    # All but the two pages moved before the loss stored again (in Redis) before bob
    # connects: his sync then reads everything once, with no push of the replay beside
    # it. The pages moved are found in MongoDB as they are consumed again (their dedup
    # records went with Redis), not stored twice.
    hot = store.hot.key(e.inbox_id(bob_id, 1))
    await eventually(lambda: redis.hlen(hot), lambda count: count == n - sum(moved), timeout=60)

    bob = await messaging.connect(bob_id, pod=1)
    items = await synced_all(bob)
    firsts: dict[str, str] = {}
    for item in sorted(items, key=lambda i: int(str(i["seq"]))):
        firsts.setdefault(str(item["server_id"]), str(item["body"]))
    assert list(firsts.values()) == [f"a0{i}" for i in range(n)]
    # Exactly once: the copies moved before the loss keep their numbers (at or below the
    # inbox's checkpoint, which the counter seeded after the loss starts above), and
    # the replay stored none of them again.
    assert len(items) == n


async def _value(counter: object) -> float:
    return float(counter._value.get())  # type: ignore[attr-defined]


async def test_counters_reach_mongodb_at_most_every_checkpoint_interval(
    messaging: Messaging,
) -> None:
    worker = messaging.delivery.server.app[WORKER]
    worker.settings = worker.settings.model_copy(update={"counters_checkpoint_s": 3600})
    counters = worker.store.counters
    alice = await messaging.connect(uid(), pod=0)
    bob, carol = uid(), uid()
    for user in (bob, carol):
        messaging.issuer.users.add(user)
    await alice.send(send_frame("m1", bob, "Ym9keQ"))
    await alice.expect("stored", id="m1")
    worker._next_checkpoint = 0.0  # due now
    await worker.persist_once()
    assert await counters.count_documents({"_id": f"{bob}.1"}) == 1
    await alice.send(send_frame("m2", carol, "Ym9keQ"))
    await alice.expect("stored", id="m2")
    await worker.persist_once()  # within the interval: not copied yet
    assert await counters.count_documents({"_id": f"{carol}.1"}) == 0
    worker._next_checkpoint = 0.0  # the interval is over
    await worker.persist_once()
    assert await counters.count_documents({"_id": f"{carol}.1"}) == 1


async def test_the_index_read_proves_nothing_once_redis_lost_its_count(
    messaging: Messaging,
) -> None:
    """:meth:`HotInbox.settled_before` reads the index with the heartbeat count: an
    index emptied with the rest of Redis must not let every batch be committed."""
    worker = messaging.delivery.server.app[WORKER]
    hot = HotInbox(worker.store.redis, f"t{uuid.uuid4().hex[:8]}", 60)
    beat = await hot.heartbeat()
    assert await hot.settled_before(beat) is not None  # empty index, same count: now
    await hot.redis.zadd(hot.index, {"inbox|1": 1000.0})
    settled = await hot.settled_before(beat)
    assert settled is not None and settled < 1000.0  # strictly before the oldest entry
    await hot.redis.delete(hot.beat, hot.index)  # lost: the count is gone
    assert await hot.settled_before(beat) is None
    await hot.heartbeat()  # counting again from 1, below what was seen
    assert await hot.settled_before(beat + 1) is None


async def test_messages_persisted_before_their_counter_was_checkpointed_survive_redis_lost(
    messaging: Messaging,
) -> None:
    """Moved to MongoDB (and so committed in Kafka) between two counter checkpoints,
    then Redis loses everything: a counter seeded again starts above its checkpoint and
    every walk steps over the range in between, so copies numbered in it were never
    paged again, and Kafka, committed past them, had nothing to give back: lost. A
    persisted copy is now always at or below its inbox's checkpoint."""
    worker = messaging.delivery.server.app[WORKER]
    worker.settings = worker.settings.model_copy(update={"counters_checkpoint_s": 3600})
    worker.store.settings = worker.store.settings.model_copy(update={"hot_persist_after_s": 3600})
    alice_id, bob_id = uid(), uid()
    messaging.issuer.users.add(bob_id)
    alice = await messaging.connect(alice_id, pod=0)
    worker._next_checkpoint = 0.0
    await worker.persist_once()  # a checkpoint now; the next one an hour away
    before = await committed(messaging.settings)
    sent = {}
    for n in range(5):
        await alice.send(send_frame(f"p{n}", bob_id, f"cDA{n}"))
        sent[(await alice.expect("accepted", id=f"p{n}"))["server_id"]] = f"cDA{n}"
    for n in range(5):
        await alice.expect("stored", id=f"p{n}")
    worker.store.settings = worker.store.settings.model_copy(update={"hot_persist_after_s": 0})
    await worker.persist_once()  # moved to MongoDB: their records may be committed
    await eventually(lambda: committed(messaging.settings), lambda c: c >= before + 5)
    redis = worker.store.redis
    await lose_redis(redis, messaging.settings.redis_prefix)
    lost = worker.hot_lost._value.get()
    await eventually(lambda: _value(worker.hot_lost), lambda v: v > lost)
    bob = await messaging.connect(bob_id, pod=1)
    items = await eventually(lambda: synced(bob, uuid.uuid4().hex[:8]),
                             lambda got: len({i["server_id"] for i in got}) >= 5)  # fmt: skip
    assert {i["server_id"]: i["body"] for i in items} == sent
    assert len({i["seq"] for i in items}) == 5


async def test_a_consumer_that_rewinds_after_the_next_pass_commits_nothing_redis_lost(
    messaging: Messaging, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review of 4e67bdb: a rewind committed the batches the live ``persisted_until``
    passed. A consumer whose batch was held up (a Redis restart's back-off) reached its
    rewind only after the persister had recorded the loss and run a pass on the new,
    empty Redis, which raised ``persisted_until`` to about now: the batches stored into
    the lost Redis were committed, and never consumed again. It commits only what was
    proved before the loss."""
    worker, persist_once = _persister_held(messaging, monkeypatch)
    alice_id, bob_id = uid(), uid()
    messaging.issuer.users.add(bob_id)
    alice = await messaging.connect(alice_id, pod=0)
    await persist_once()  # a beat counted
    before = await committed(messaging.settings)
    await alice.send_stored(bob_id, [(f"q{n}", f"cTA{n}") for n in range(5)])  # hot only
    gate, entered = asyncio.Event(), asyncio.Event()
    real = worker.store.claims_and_numbers

    async def held(items: Any, server_ids: Any) -> Any:
        entered.set()
        await gate.wait()
        return await real(items, server_ids)

    monkeypatch.setattr(worker.store, "claims_and_numbers", held)
    await alice.send(send_frame("q5", bob_id, "cTA5"))
    await alice.expect("accepted", id="q5")
    await asyncio.wait_for(entered.wait(), 10)
    await lose_redis(worker.store.redis, messaging.settings.redis_prefix)
    lost = worker.hot_lost._value.get()
    await persist_once()  # the persister records the loss
    assert worker.hot_lost._value.get() == lost + 1
    await persist_once()  # and passes on the new Redis
    monkeypatch.setattr(worker.store, "claims_and_numbers", real)
    gate.set()  # the write is refused by the mark: the consumer goes back
    bob = await messaging.connect(bob_id, pod=1)
    want = {f"cTA{n}" for n in range(6)}
    items = await eventually(lambda: synced(bob, uuid.uuid4().hex[:8]),
                             lambda got: {str(i["body"]) for i in got} >= want)  # fmt: skip
    assert len({i["server_id"] for i in items}) == 6
    assert await committed(messaging.settings) == before  # nothing was persisted
