"""A room's copies stored by one script per record (services/delivery/fanout.py) are the
items and frames the general path (``store_and_route``) makes, exactly once each."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
import pytest
from aiokafka import ConsumerRecord
from parley_contract import envelopes as e
from prometheus_client import CollectorRegistry

from services.common import routing
from services.common.config import Settings
from services.delivery.fanout import RoomFanout, room_dedup_key
from services.delivery.moderation_keys import ModerationKeys, TaggedFields
from services.delivery.store import DeliveryStore, item_docs, item_frame
from services.delivery.worker import Worker
from tests.delivery.conftest import item


def copies(inboxes: list[str], commitment: str | None = "c0mm1tment") -> e.RoomCopies:
    room = uuid.uuid4().hex[:24]
    return e.RoomCopies(
        server_id=uuid.uuid4().hex, room=room, from_="alice", from_device=2,
        client_id=f"room:{room}:{uuid.uuid4().hex}", conversation=f"room:{room}",
        sent_at=int(time.time() * 1000), body="Y2lwaGVydGV4dA", commitment=commitment,
        mentions=["bob"], inboxes=inboxes,
    )  # fmt: skip


def users(n: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"u{tag}{i}" for i in range(n)]


async def hot_items(store: DeliveryStore, inbox: str) -> dict[int, dict[str, Any]]:
    raw = await store.redis.hgetall(store.hot.key(inbox))
    return {int(k): orjson.loads(v) for k, v in raw.items()}


class Channel:
    """The room channel (every gateway pod's), listened to."""

    def __init__(self, store: DeliveryStore) -> None:
        self.pubsub = store.redis.pubsub()
        self.name = routing.room_channel(store.prefix)

    async def __aenter__(self) -> Channel:
        await self.pubsub.subscribe(self.name)
        while (await self.pubsub.get_message(timeout=1.0)) is None:
            pass  # the subscription's confirmation
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pubsub.aclose()

    async def frames(self) -> list[tuple[str, int, bytes]]:
        """The next push's copies: (user, device, the frame the pod sends)."""
        msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
        assert msg is not None, "nothing published"
        return [(user, device, push.frame_of(seq, tag))
                for push in e.decode_room_push(msg["data"])
                for user, device, seq, tag in push.to]  # fmt: skip


@pytest.mark.parametrize("commitment", ["c0mm1tment", None])
async def test_a_copy_is_the_item_and_frame_the_general_path_makes(
    store: DeliveryStore, settings: Settings, commitment: str | None
) -> None:
    keys = ModerationKeys(settings)
    fan = RoomFanout(store, keys)
    a, b = users(2)
    env = copies([f"{a}.1", f"{b}.{2**31 - 1}"], commitment)
    now = time.time()
    async with Channel(store) as chan:
        done = await fan.put(env, now)
        await fan.publish(done.pushes)
        pushed = await chan.frames()
    # Both pushed, online or not: the pods push to the members they hold a socket of.
    assert (done.stored, done.repeats, done.pushed, done.removed) == (2, 0, 2, False)

    # What the general path would store for a's copy (tagged as the worker tags it).
    expected = item_docs(env, now)[0]
    if commitment:
        expected["franking_tag"] = keys.tag(TaggedFields(
            commitment=commitment, server_id=env.server_id, sender="alice", sender_device=2,
            recipient=a, sent_at=int(env.sent_at or 0), conversation=env.conversation,
        ))  # fmt: skip
    [(seq, doc)] = (await hot_items(store, f"{a}.1")).items()
    assert seq == 1
    # The general path's item, marked as not counted in the 1:1 caps' waiting counts.
    assert doc == {**expected, "_id": f"{a}.1|{1:016d}", "seq": 1, "acked": False,
                   "uncounted": True}  # fmt: skip
    [doc_b] = (await hot_items(store, f"{b}.{2**31 - 1}")).values()
    assert (doc_b["user"], doc_b["device"]) == (b, 2**31 - 1)  # device ids take 10 digits
    assert pushed == [(a, 1, e.encode(item_frame(doc))),
                      (b, 2**31 - 1, e.encode(item_frame(doc_b)))]  # fmt: skip

    # The rest of the copy's state, as store_and_route leaves it.
    claims = await store.redis.hgetall(room_dedup_key(store.prefix, "alice", env.client_id))
    assert claims == {f"{a}.1".encode(): f"1|{env.server_id}".encode(),
                      f"{b}.{2**31 - 1}".encode(): f"1|{env.server_id}".encode()}  # fmt: skip
    assert (f"{a}.1", 1) in await store.hot.due(now, 10_000)
    assert await store.redis.hgetall(routing.pending_key(store.prefix, f"{a}.1")) == {}
    assert f"{a}.1".encode() in await store.redis.smembers(store.ctr.dirty)
    assert (await store.ctr.get([f"{a}.1"]))[f"{a}.1"].n == 1
    # Acknowledged: the item and its index entry go; the counts stay as they were.
    acked = await store.acknowledge_many({f"{a}.1": 1})
    assert [(d["seq"], bool(d["room"])) for d in acked[f"{a}.1"]] == [(1, True)]
    assert await hot_items(store, f"{a}.1") == {}
    assert await store.redis.hgetall(routing.pending_key(store.prefix, f"{a}.1")) == {}
    assert (f"{a}.1", 1) not in await store.hot.due(now, 10_000)


async def test_a_repeat_is_stored_once_and_pushed_again_while_hot(
    store: DeliveryStore, settings: Settings
) -> None:
    fan = RoomFanout(store, ModerationKeys(settings))
    members = users(3)
    env = copies([f"{u}.1" for u in members])
    async with Channel(store) as chan:
        first = await fan.put(env, time.time())
        await fan.publish(first.pushes)
        once = await chan.frames()
        # The first member acknowledged theirs: a repeat pushes only the two still hot.
        await store.hot.remove([(f"{members[0]}.1", 1)])
        again = await fan.put(env, time.time())
        await fan.publish(again.pushes)
        twice = await chan.frames()
    assert (first.stored, first.repeats, first.pushed) == (3, 0, 3)
    assert (again.stored, again.repeats, again.pushed) == (0, 3, 2)
    assert twice == once[1:]
    for u in members[1:]:
        assert list(await hot_items(store, f"{u}.1")) == [1]
        assert (await store.ctr.get([f"{u}.1"]))[f"{u}.1"].n == 1


async def test_numbers_follow_the_inbox_and_skip_one_held_by_another_item(
    store: DeliveryStore, settings: Settings
) -> None:
    fan = RoomFanout(store, ModerationKeys(settings))
    [u] = users(1)
    inbox = f"{u}.1"
    await store.ctr.reserve(inbox, 4)  # 1..4 handed out (1:1 messages)
    # Number 5 holds an item already (a counter seeded again after a loss).
    await store.redis.hset(store.hot.key(inbox), "5", orjson.dumps({"server_id": "other"}))
    done = await fan.put(copies([inbox]), time.time())
    assert done.stored == 1
    items = await hot_items(store, inbox)
    assert sorted(items) == [5, 6] and items[6]["seq"] == 6 and items[5] == {"server_id": "other"}


async def test_a_missing_counter_is_seeded_from_its_checkpoint(
    store: DeliveryStore, settings: Settings
) -> None:
    fan = RoomFanout(store, ModerationKeys(settings))
    people = users(2)
    fresh, known = (f"{u}.1" for u in people)
    await store.counters.update_one({"_id": known}, {"$set": {"n": 40, "acked": 40}}, upsert=True)
    await store.ctr.reserve(fresh, 1)
    await store.redis.delete(store.ctr.key(known))
    done = await fan.put(copies([fresh, known]), time.time())
    assert done.stored == 2
    # The second call's pushes (the seeded inbox) join the first one's.
    pushed = [c[0] for body in done.pushes for p in e.decode_room_push(b"[" + body + b"]")
              for c in p.to]  # fmt: skip
    assert sorted(pushed) == sorted(people)
    assert list(await hot_items(store, fresh)) == [2]
    [seq] = list(await hot_items(store, known))
    assert seq > 40


async def test_a_removed_message_and_malformed_inboxes_store_nothing(
    store: DeliveryStore, settings: Settings
) -> None:
    fan = RoomFanout(store, ModerationKeys(settings))
    [u] = users(1)
    env = copies([f"{u}.1"])
    await store.hot.mark_gone(env.server_id, 60)
    assert (await fan.put(env, time.time())).removed
    assert await hot_items(store, f"{u}.1") == {}
    bad = copies([f"{u}.2", 'x".1', "a b.1", f"{u}.0", f"{u}.01", f"{u}"])
    done = await fan.put(bad, time.time())
    assert (done.stored, len(done.odd)) == (1, 5)
    assert await hot_items(store, 'x".1') == {}


async def test_a_thousand_members_in_one_call(store: DeliveryStore, settings: Settings) -> None:
    fan = RoomFanout(store, ModerationKeys(settings))
    members = [f"{u}.{d}" for u in users(500) for d in (1, 2)]
    for inbox in members:
        await store.ctr.reserve(inbox, 1)
    done, again = await asyncio.gather(
        fan.put(copies(members), time.time()), fan.put(copies(members), time.time())
    )
    assert done.stored == again.stored == 1000
    numbers = [sorted(await hot_items(store, i)) for i in members[:50]]
    assert all(n == [2, 3] for n in numbers)


async def test_a_copy_into_an_inbox_of_twenty_thousand_items(
    store: DeliveryStore, settings: Settings
) -> None:
    """A member whose device has not read for a long time: 10,000 items moved to
    MongoDB, 10,000 still hot. The room's copy takes the number after them, pages
    after them, and a cumulative ack of the 20,001 clears the inbox; the other 999
    members' copies are unaffected by the big one."""
    fan = RoomFanout(store, ModerationKeys(settings))
    members = [f"{u}.1" for u in users(1000)]
    big, user = members[0], members[0].split(".")[0]
    n = 20_000
    for start in range(0, n, 500):
        batch = [{**item(big, i, cid=f"m{i}"), "user": user} for i in range(start, start + 500)]
        await store.store_hot(batch)
        if start + 500 == n // 2:  # the first half waited long enough: in MongoDB
            await store.persist_due(now=time.time() + settings.hot_persist_after_s + 1)
    assert await store.inbox.count_documents({"inbox": big}) == n // 2
    env = copies(members)
    done = await fan.put(env, time.time())
    assert (done.stored, done.repeats) == (1000, 0)
    assert set(await hot_items(store, big)) == set(range(n // 2 + 1, n + 2))
    assert [list(await hot_items(store, m)) for m in members[1:50]] == [[1]] * 49
    page, more = await store.page(big, n - 5, 200)
    assert [d["seq"] for d in page] == [*range(n - 4, n + 1), n + 1] and not more
    assert page[-1]["server_id"] == env.server_id and page[-1]["room"] == env.room
    # A replay is recognised for every member, the big one included.
    again = await fan.put(env, time.time())
    assert (again.stored, again.repeats) == (0, 1000)
    acked = await store.acknowledge_many({big: n + 1})
    assert len(acked[big]) == n + 1
    assert await store.page(big, 0, 10) == ([], False)
    assert await store.inbox.count_documents({"inbox": big}) == 0


def record(env: e.Envelope, offset: int) -> Any:
    value = e.encode(env)
    return ConsumerRecord("t", 0, offset, 0, 0, b"k", value, None, 0, len(value), ())


async def test_the_worker_keeps_the_batch_order_and_stores_odd_ids_the_general_way(
    store: DeliveryStore, settings: Settings
) -> None:
    worker = Worker(settings, store, CollectorRegistry(), None)  # type: ignore[arg-type]
    [u] = users(1)
    inbox = f"{u}.1"
    odd = f"{u}.x.1"  # a user id with a dot: not one Parley makes, stored all the same
    first, last = copies([inbox, odd]), copies([inbox])
    direct = e.MessageEnvelope(
        server_id=uuid.uuid4().hex, from_="carol", from_device=1, to=u, to_device=1,
        client_id="d1", conversation=e.conversation_id("carol", u),
        sent_at=int(time.time() * 1000), body="Ym9keQ",
    )  # fmt: skip
    batch = [record(first, 1), record(direct, 2), record(last, 3)]
    await worker.handle_messages(batch)
    items = await hot_items(store, inbox)
    assert [items[s]["server_id"] for s in sorted(items)] == [
        first.server_id,
        direct.server_id,
        last.server_id,
    ]
    [kept] = (await hot_items(store, odd)).values()
    assert (kept["user"], kept["device"], kept["server_id"]) == (f"{u}.x", 1, first.server_id)
    # Consumed again (a worker died before committing): nothing stored twice.
    await worker.handle_messages(batch)
    assert len(await hot_items(store, inbox)) == 3
    assert len(await hot_items(store, odd)) == 1


async def test_a_rooms_copies_leave_the_waiting_counts_alone_however_they_go(
    store: DeliveryStore, settings: Settings
) -> None:
    """The 1:1 caps' waiting counts: a room copy stored by the script is not counted,
    and taking it out (an ack, a removal, hot or persisted) lowers nothing; a room copy
    stored before (counted, unmarked) and 1:1 items are uncounted as before."""
    from services.delivery.hot import Removal

    fan = RoomFanout(store, ModerationKeys(settings))
    [u] = users(1)
    inbox = f"{u}.1"
    key = routing.pending_key(store.prefix, inbox)

    async def counts() -> dict[str, int]:
        return {k.decode(): int(v) for k, v in (await store.redis.hgetall(key)).items()}

    # 1: a 1:1 message; 2: a room copy from before (counted, no mark); 3-6: room copies.
    await store.store_hot([{**item(inbox, 0, sender="dan", cid="d0"), "user": u}])
    legacy = {**item(inbox, 1, sender="alice", cid="old"), "user": u, "room": "r" * 24}
    await store.store_hot([legacy])
    envs = [copies([inbox]) for _ in range(4)]
    for env in envs:
        await fan.put(env, time.time())
    assert await counts() == {"*": 2, "dan": 1, "alice": 1}
    # Removed while hot (seq 3), and once persisted (seq 4): nothing to lower.
    await store.remove_copies([Removal(inbox, 3, envs[0].server_id, "alice")])
    await store.persist_due(now=time.time() + settings.hot_persist_after_s + 1)
    await store.remove_copies([Removal(inbox, None, envs[1].server_id, "alice")])
    assert await counts() == {"*": 2, "dan": 1, "alice": 1}
    await store.store_hot([{**item(inbox, 7, sender="dan", cid="d7"), "user": u}])
    assert await counts() == {"*": 3, "dan": 2, "alice": 1}
    # Acknowledged (1-6, all persisted by now): only the two counted ones lower them.
    acked = await store.acknowledge_many({inbox: 6})
    assert [d["seq"] for d in acked[inbox]] == [1, 2, 5, 6]
    assert await counts() == {"*": 1, "dan": 1}
    # A hot room copy (8) acknowledged with a hot 1:1 item (7): one lowered.
    await fan.put(copies([inbox]), time.time())
    await store.store_hot([{**item(inbox, 9, sender="dan", cid="d9"), "user": u}])
    assert await counts() == {"*": 2, "dan": 2}
    await store.acknowledge_many({inbox: 8})
    assert await counts() == {"*": 1, "dan": 1}
