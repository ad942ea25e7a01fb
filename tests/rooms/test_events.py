"""Room events: the contract's models, produced through the outbox (services/rooms/events.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from parley_contract import envelopes as e

from services.rooms.config import RoomsConfig
from services.rooms.events import Check
from services.rooms.store import member_id, now_ms
from tests.rooms.conftest import TEST_CONFIG, EventLog, RoomsApi, RoomsFactory, event_log

# Entries are due at once and the loop stays out of the way: the test drains by hand.
MANUAL = RoomsConfig(
    create_limit=TEST_CONFIG.create_limit, post_limit=TEST_CONFIG.post_limit,
    outbox_lease_s=0.0, outbox_interval_s=3600.0,
)  # fmt: skip


@pytest.fixture
async def manual(make_rooms: RoomsFactory) -> AsyncIterator[EventLog]:
    """The only rooms instance of the test (no other one's outbox loop drains behind
    its back), with its event log."""
    async with event_log(await make_rooms(MANUAL)) as log:
        yield log


async def test_every_event_decodes_with_the_contract(api: RoomsApi, events: EventLog) -> None:
    owner, bob = api.user(), api.user()
    room = await api.room(owner, "private")
    await api.invite(owner, room, bob)
    await api.accept(bob, room)
    await api.promote(owner, room, bob)
    await api.patch(owner, room, {"state": "closed"})
    await api.remove(owner, room, bob)
    await events.settle(room)
    raw = [r for k, r in events.records if k == room.encode() and r["type"] != "test_marker"]
    decoded = [e.decode_room_event(e.encode(r)) for r in raw]
    assert [type(d).__name__ for d in decoded] == [
        "RoomCreated", "MemberInvited", "MemberJoined", "RoleChanged", "RoomStateChanged",
        "MemberRemoved",
    ]  # fmt: skip
    assert [d.version for d in decoded] == sorted(d.version for d in decoded)
    assert len({d.event_id for d in decoded}) == len(decoded)


async def test_an_event_whose_change_never_happened_is_dropped(
    manual: EventLog,
) -> None:
    api, events = manual.api, manual
    owner, ghost = api.user(), api.user()
    room = await api.room(owner)
    # A join that died after holding its event and before its write.
    await api.rooms.events.hold(
        e.MemberJoined(room_id=room, kind="public", version=99, actor=ghost, at=now_ms(),
                       user_id=ghost, role="member", via="join"),
        Check("members", {"_id": member_id(room, ghost), "slot": 99}),
    )  # fmt: skip
    assert await api.rooms.events.drain_once() == 0
    assert await api.rooms.store.outbox.size() == 0
    assert [x["type"] for x in await events.settle(room)] == ["room_created"]


async def test_an_event_whose_writer_died_after_the_change_is_sent(
    manual: EventLog,
) -> None:
    api, events = manual.api, manual
    owner = api.user()
    room = await api.room(owner)
    # The state change was written, but the process died before sending its event.
    await api.rooms.events.hold(
        e.RoomStateChanged(room_id=room, kind="public", version=2, actor=owner, at=now_ms(),
                           state="closed"),
        Check("rooms", {"_id": room, "state": "closed"}),
    )  # fmt: skip
    await api.rooms.store.set_room(room, {"state": "closed"})
    assert await api.rooms.events.drain_once() == 1
    assert await api.rooms.store.outbox.size() == 0
    seen = await events.settle(room)
    assert [(x["type"], x.get("state")) for x in seen] == [
        ("room_created", None), ("room_state_changed", "closed")
    ]  # fmt: skip


async def test_events_wait_in_the_outbox_while_kafka_is_away(
    manual: EventLog,
) -> None:
    api, events = manual.api, manual
    owner, bob = api.user(), api.user()
    room = await api.room(owner)
    store = api.rooms.store
    real = store.send_event

    async def broker_away(*_: object) -> bool:
        return False

    store.send_event = broker_away  # type: ignore[method-assign]
    try:
        assert (await api.join(bob, room))[0] == 200
        assert await store.outbox.size() == 1
        assert await api.rooms.events.drain_once() == 0
    finally:
        store.send_event = real  # type: ignore[method-assign]
    assert await api.rooms.events.drain_once() == 1
    assert await store.outbox.size() == 0
    seen = await events.settle(room)
    assert [(x["type"], x.get("user_id")) for x in seen] == [
        ("room_created", None), ("member_joined", bob)
    ]  # fmt: skip
