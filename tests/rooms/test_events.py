"""Room events: the contract's models, produced through the outbox (services/rooms/events.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from parley_contract import envelopes as e

from services.rooms import rooms as rooms_mod
from services.rooms.config import RoomsConfig
from services.rooms.events import Check
from services.rooms.store import member_id, now_ms
from tests.rooms.conftest import TEST_CONFIG, EventLog, RoomsApi, RoomsFactory, event_log
from tests.rooms.test_bans import promote_first
from tests.rooms.test_membership_races import admin_call

# Entries are due at once and the loop stays out of the way: the test drains by hand.
MANUAL = RoomsConfig(
    create_limit=TEST_CONFIG.create_limit, post_limit=TEST_CONFIG.post_limit,
    join_limit=TEST_CONFIG.join_limit, outbox_lease_s=0.0, outbox_interval_s=3600.0,
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


# -- audit findings (2026-12-07): the highest version says how the room is ---------------


def by_version(seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    versions = [x["version"] for x in seen]
    assert len(set(versions)) == len(versions), versions  # one event per version
    return sorted(seen, key=lambda x: int(x["version"]))


async def test_the_last_state_event_says_the_state_the_room_is_in(
    api: RoomsApi, events: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A close read the room while it was open (a moderator closed it meanwhile) and
    took its version before its write; a moderator's reopen read it closed, took a
    higher version and wrote ``open``; the close's write landed last. The room stayed
    closed, the highest ``room_state_changed`` said ``open``. Each write is now made on
    the room as read, with its version taken in the same write."""
    owner, mod = api.user(), api.user()
    room = await api.room(owner)
    assert (await api.join(mod, room))[0] == 200
    assert (await api.promote(owner, room, mod))[0] == 200
    store = api.rooms.store
    stale = await store.get_room(room)  # the owner's close has read the room: open
    assert stale is not None and stale["state"] == "open"
    assert (await api.patch(mod, room, {"state": "closed"}))[0] == 200
    hold = api.rooms.events.hold
    reopened: list[tuple[int, Any]] = []

    async def reopened_first(event: Any, check: Any) -> Any:
        if getattr(event, "state", None) == "closed" and not reopened:
            reopened.append(await api.patch(mod, room, {"state": "open"}))
        return await hold(event, check)

    monkeypatch.setattr(api.rooms.events, "hold", reopened_first)
    await rooms_mod.set_state(api.rooms, stale, "closed", owner)
    assert reopened[0][0] == 200 and reopened[0][1]["state"] == "open"
    now = await store.get_room(room)
    assert now is not None
    states = [x for x in by_version(await events.settle(room)) if "state" in x]
    assert states[-1]["state"] == now["state"]
    assert states[-1]["version"] == now["version"]


async def test_a_join_event_carries_the_kind_of_its_version(
    api: RoomsApi, events: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A join read the room as public; an admin made it private before the join took
    its version: the join's event, numbered after the switch, said ``public``."""
    owner, joiner = api.user(), api.user()
    room = await api.room(owner)
    store = api.rooms.store
    get_ban = store.get_ban
    switched: list[int] = []

    async def switched_first(room_id: str, user_id: str) -> Any:
        if user_id == joiner and not switched:
            status, _ = await admin_call(api, "PUT", f"{room}/kind", {"kind": "private"})
            switched.append(status)
        return await get_ban(room_id, user_id)

    monkeypatch.setattr(store, "get_ban", switched_first)
    assert (await api.join(joiner, room))[0] == 200
    assert switched == [200]
    kind = "public"
    for x in by_version(await events.settle(room)):
        if x["type"] == "room_kind_changed":
            kind = x["kind"]
        assert x["kind"] == kind, x


async def test_a_removal_meeting_a_promotion_is_numbered_after_it(
    api: RoomsApi, events: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner removed bob, read as a member, and took the removal's version; a
    promotion of bob took the next and landed first; the removal's delete landed last.
    bob was gone under a ``role_changed`` of a higher version. A removal (and a role
    change) is written only on the membership as read now: read again, it takes a new
    version."""
    owner, bob = api.user(), api.user()
    room = await api.room(owner)
    assert (await api.join(bob, room))[0] == 200
    promote_first(api, monkeypatch, "delete_member", owner, room, bob)
    assert (await api.remove(owner, room, bob))[0] == 204
    assert await api.rooms.store.get_member(room, bob) is None
    about_bob = [x for x in by_version(await events.settle(room)) if x.get("user_id") == bob]
    assert [(x["type"], x.get("role")) for x in about_bob] == [
        ("member_joined", "member"), ("role_changed", "moderator"), ("member_removed", None)
    ]  # fmt: skip


async def test_two_role_changes_at_once_end_as_the_last_event_says(
    api: RoomsApi, events: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A promotion read bob as a member and took its version; before it wrote, the owner
    promoted and demoted bob again (bob a member again): the first promotion's write,
    conditional on the role read (``member``), still matched, and bob ended a moderator
    under a ``role_changed`` to ``member`` of a higher version."""
    owner, bob = api.user(), api.user()
    room = await api.room(owner)
    assert (await api.join(bob, room))[0] == 200
    store = api.rooms.store
    set_role = store.set_role
    meanwhile: list[int] = []
    once: list[bool] = []

    async def changed_meanwhile(*args: Any, **kw: Any) -> Any:
        if not once:
            once.append(True)
            meanwhile.append((await api.promote(owner, room, bob))[0])
            meanwhile.append((await api.demote(owner, room, bob))[0])
        return await set_role(*args, **kw)

    monkeypatch.setattr(store, "set_role", changed_meanwhile)
    status, body = await api.promote(owner, room, bob)
    assert meanwhile == [200, 200]
    assert (status, body["error"]["code"]) == (403, "forbidden"), body
    member = await store.get_member(room, bob)
    assert member is not None
    roles = [x for x in by_version(await events.settle(room)) if x["type"] == "role_changed"]
    assert roles[-1]["role"] == member["role"] == "member"
