"""Mentions in private rooms: the rooms service consumes ``<prefix>room-messages`` (the
records the gateway produces for ``room_send``, produced here the same way) and makes one
notification per mentioned member, once, however often a record comes back."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from parley_contract import envelopes as e
from parley_contract.envelopes import decode_notice

from services.common.clients import Topics, kafka_producer
from services.common.state import REGISTRY
from services.rooms.notifications import PRIVATE_EXCERPT
from services.rooms.state import ROOM_MESSAGES
from tests.rooms.conftest import RecordLog, RoomsApi, RoomsFactory
from tests.support.aio import eventually
from tests.support.messaging import Messaging


def envelope(room: str, sender: str, mentions: list[str], client_id: str | None = None,
             sent_at: int = 1_700_000_000_000) -> e.RoomEnvelope:  # fmt: skip
    cid = client_id or secrets.token_hex(6)
    return e.RoomEnvelope(
        server_id=e.room_server_id(room, sender, cid), room=room, from_=sender, from_device=1,
        client_id=cid, body="Y2lwaGVydGV4dA", mentions=mentions, sent_at=sent_at, targets=[],
    )  # fmt: skip


async def produce(api: RoomsApi, *values: bytes, key: str) -> None:
    producer: AIOKafkaProducer = kafka_producer(api.settings)
    await producer.start()
    try:
        for v in values:
            await producer.send_and_wait(Topics(api.settings).room_messages, v, key=key.encode())
    finally:
        await producer.stop()


async def private_room(api: RoomsApi, owner: str, *members: str) -> str:
    room = await api.room(owner, kind="private", name="secret plans")
    for m in members:
        assert (await api.invite(owner, room, m))[0] == 201
        assert (await api.accept(m, room))[0] == 200
    return room


async def notes(api: RoomsApi, user: str) -> list[dict[str, object]]:
    status, page = await api.notifications(user)
    assert status == 200, page
    return list(page["notifications"])


async def test_members_mentioned_get_one_notification_each(
    api: RoomsApi, messaging: Messaging, notices: RecordLog
) -> None:
    alice, bob, carol, eve = (api.user() for _ in range(4))
    room = await private_room(api, alice, bob, carol)
    b = await messaging.connect(bob, pod=1)
    # bob twice, eve (not a member), alice herself (the sender), someone unknown.
    env = envelope(room, alice, [bob, eve, alice, "nobody-at-all", bob])
    value = e.encode(env)
    # The same record three times (a redelivery), a malformed one, then a marker: carol's
    # mention in the same room (same key, same partition) comes after all of them.
    marker = envelope(room, bob, [carol])
    await produce(api, value, value, b"{not json", value, e.encode(marker), key=room)
    await eventually(lambda: notes(api, carol), lambda ns: len(ns) == 1, timeout=30)

    [note] = await notes(api, bob)
    assert note == {
        "seq": 1, "kind": "mention", "room_id": room, "room_name": "secret plans",
        "message_seq": None, "server_id": env.server_id, "sender": alice,
        "excerpt": PRIVATE_EXCERPT, "at": env.sent_at, "read": False,
    }  # fmt: skip
    assert await notes(api, eve) == [] and await notes(api, alice) == []
    frame = await b.expect("notification")
    assert frame["server_id"] == env.server_id and frame["message_seq"] is None
    assert frame["seq"] == 1 and frame["excerpt"] == PRIVATE_EXCERPT
    # No number was spent on the redeliveries.
    assert (await api.notifications(bob))[1]["unread"] == 1

    # The notices for the notifier: one per notification, no text.
    await notices.until(lambda vs: len(vs) >= 2)
    got = sorted((decode_notice(v) for _, v in notices.records), key=lambda n: n.user)
    assert {(n.user, n.kind, n.server_id, n.excerpt) for n in got} == {
        (bob, "private", env.server_id, PRIVATE_EXCERPT),
        (carol, "private", marker.server_id, PRIVATE_EXCERPT),
    }
    metric = api.rooms.metrics.room_messages

    async def counted() -> tuple[float, float]:
        # Counted once the record's work is done, a turn after its notices are out.
        return metric.labels("malformed")._value.get(), metric.labels("notified")._value.get()

    assert await eventually(counted, lambda c: c[1] >= 2) == (1, 2)


async def test_a_record_handled_again_makes_no_second_notification(api: RoomsApi) -> None:
    """What a consumer that died before committing does: the same record, processed again
    (also after the notification was written but before the claim was read back)."""
    alice, bob = api.user(), api.user()
    room = await private_room(api, alice, bob)
    consumer = api.client.server.app[ROOM_MESSAGES]
    env = envelope(room, alice, [bob])
    assert await consumer.handle(env) == 1
    assert await consumer.handle(env) == 0
    assert len(await notes(api, bob)) == 1
    # Another message mentioning bob is another notification.
    assert await consumer.handle(envelope(room, alice, [bob])) == 1
    assert [n["seq"] for n in await notes(api, bob)] == [2, 1]


async def test_public_rooms_and_unknown_rooms_are_ignored(api: RoomsApi) -> None:
    """A public room's mentions come from its text (the timeline), never from this topic."""
    alice, bob = api.user(), api.user()
    room = await api.room(alice)
    assert (await api.join(bob, room))[0] == 200
    consumer = api.client.server.app[ROOM_MESSAGES]
    assert await consumer.handle(envelope(room, alice, [bob])) == 0
    assert await consumer.handle(envelope("a" * 24, alice, [bob])) == 0
    assert await notes(api, bob) == []


async def test_one_record_handled_twice_at_once_counts_one_unread(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding (2026-12-07): two consumers handling one record at once (a
    rebalance) each took a notification number before either claimed the mention; one
    notification was written and ``unread`` said 2, for good (nothing marks a number
    no notification has). The number is taken by writing the notification now."""
    alice, bob = api.user(), api.user()
    room = await private_room(api, alice, bob)
    store = api.rooms.store
    both_in = asyncio.Barrier(2)
    for name in ("get_members", "mention_claim"):
        real = getattr(store, name)

        async def together(*args: Any, _real: Any = real) -> Any:
            await both_in.wait()  # both handlings pass this step before either goes on
            return await _real(*args)

        monkeypatch.setattr(store, name, together)
    consumer = api.client.server.app[ROOM_MESSAGES]
    env = envelope(room, alice, [bob])
    made = await asyncio.gather(consumer.handle(env), consumer.handle(env))
    assert sorted(made) == [0, 1]
    status, page = await api.notifications(bob)
    assert status == 200 and [n["seq"] for n in page["notifications"]] == [1]
    assert page["unread"] == 1
    assert (await api.read(bob, 1))[1] == {"unread": 0}
    assert (await api.read(bob, 2))[1]["error"]["code"] == "seq_not_issued"


async def test_the_mentions_consumer_is_watched_as_the_others_are(
    make_rooms: RoomsFactory,
) -> None:
    """Audit finding (2026-12-07): ``<prefix>rooms-mentions`` ran with no readiness
    check and no lag sampled, unlike delivery's and the notifier's groups: a consumer
    stopped, or far behind, showed nowhere. ``/rooms/readyz`` names it (``consumer``)
    while it is not running, and its lag is sampled like theirs
    (``parley_kafka_consumer_lag{group="<prefix>rooms-mentions"}``)."""
    api = await make_rooms(kafka_lag_interval_s=0.2)
    app = api.client.server.app
    consumer = app[ROOM_MESSAGES]

    async def readyz() -> tuple[int, Any]:
        resp = await api.client.get("/rooms/readyz")
        return resp.status, await resp.json()

    _, body = await eventually(readyz, lambda r: r[0] == 200)
    assert body["checks"]["consumer"] == "ok"
    consumer.running.clear()  # what a consumer that stopped, restarting, shows
    try:
        status, body = await readyz()
        assert (status, body["failed"]) == (503, ["consumer"])
    finally:
        consumer.running.set()
    assert (await readyz())[0] == 200

    group = f"{api.settings.topic_prefix}rooms-mentions"
    topic = Topics(api.settings).room_messages
    registry = app[REGISTRY]

    async def lags() -> list[float | None]:
        return [
            registry.get_sample_value(
                "parley_kafka_consumer_lag",
                {"group": group, "topic": topic, "partition": str(p)},
            )
            for p in range(api.settings.kafka_partitions)
        ]

    assert all(v is not None and v >= 0 for v in await eventually(lags, lambda v: None not in v))
