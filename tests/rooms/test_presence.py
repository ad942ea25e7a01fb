"""Presence in a room's member list (docs/rooms.md, "Presence"): who has a socket now,
unless they hide it; through real gateway pods, Redis and MongoDB."""

from __future__ import annotations

from typing import Any

from tests.rooms.conftest import RoomsApi
from tests.support.aio import eventually
from tests.support.messaging import Messaging


async def online(api: RoomsApi, room: str, viewer: str) -> dict[str, bool]:
    status, page = await api.call("GET", f"/v1/rooms/{room}/members?limit=200", viewer)
    assert status == 200, page
    return {m["user_id"]: m["online"] for m in page["members"]}


async def test_the_member_list_says_who_is_online_unless_they_hide_it(
    api: RoomsApi, messaging: Messaging
) -> None:
    owner, alice, bob = api.user(), api.user(), api.user()
    room = await api.room(owner, name="presence")
    for u in (alice, bob):
        assert (await api.join(u, room))[0] == 200
    assert await online(api, room, owner) == {owner: False, alice: False, bob: False}
    # Alice connects two devices (on two pods); bob one.
    a1 = await messaging.connect(alice, pod=0)
    a2 = await messaging.connect(alice, pod=1, did=2)
    b = await messaging.connect(bob, pod=1)
    assert await online(api, room, owner) == {owner: False, alice: True, bob: True}
    # Bob hides it (the auth service's preference, on its users document): offline to all.
    auth_users: Any = api.rooms.presence.users
    await auth_users.update_one({"_id": bob}, {"$set": {"show_presence": 0}}, upsert=True)
    assert await online(api, room, alice) == {owner: False, alice: True, bob: False}
    await auth_users.update_one({"_id": bob}, {"$set": {"show_presence": 1}})
    assert (await online(api, room, alice))[bob] is True
    # Gone when every socket is: alice closes one, still online; then the other.
    await a1.close()
    await b.close()
    await eventually(lambda: online(api, room, owner), lambda o: not o[bob])
    assert (await online(api, room, owner))[alice] is True
    await a2.close()
    await eventually(lambda: online(api, room, owner), lambda o: not o[alice])


async def test_a_large_room_s_member_pages_each_say_who_is_online(
    api: RoomsApi, messaging: Messaging
) -> None:
    owner = api.user()
    room = await api.room(owner, kind="public", name="big presence")
    users = [api.user() for _ in range(450)]
    for u in users:
        assert (await api.join(u, room))[0] == 200
    here = users[::50]  # 9 members spread over the three pages
    for i, u in enumerate(here):
        await messaging.connect(u, pod=i % 2)
    seen: dict[str, bool] = {}
    after: Any = 0
    while after is not None:
        _, page = await api.call("GET", f"/v1/rooms/{room}/members?limit=200&after={after}", owner)
        seen.update({m["user_id"]: m["online"] for m in page["members"]})
        after = page["next_after"]
    assert len(seen) == 451
    assert {u for u, on in seen.items() if on} == set(here)


async def test_presence_that_cannot_be_read_is_nobody_not_an_error(make_rooms: Any) -> None:
    """A hint: with Redis away the member list still answers, everyone offline."""
    api = await make_rooms(redis_url="redis://127.0.0.1:1/0", dependency_timeout_ms=300)
    assert await api.rooms.presence.facts([api.user(), api.user()]) == ({}, set())


async def test_the_member_list_names_its_members_as_the_auth_service_has_them(
    api: RoomsApi,
) -> None:
    owner, alice, gone = api.user(), api.user(), api.user()
    room = await api.room(owner, name="names")
    for u in (alice, gone):
        assert (await api.join(u, room))[0] == 200
    auth_users: Any = api.rooms.presence.users
    await auth_users.insert_many([{"_id": owner, "username": "olga"},
                                  {"_id": alice, "username": "alice"}])  # fmt: skip
    status, page = await api.call("GET", f"/v1/rooms/{room}/members", alice)
    assert status == 200, page
    names = {m["user_id"]: m["username"] for m in page["members"]}
    assert names == {owner: "olga", alice: "alice", gone: None}  # an account gone: no name
    # Renamed by an admin: the list says the new name at once.
    await auth_users.update_one({"_id": alice}, {"$set": {"username": "alicia"}})
    _, page = await api.call("GET", f"/v1/rooms/{room}/members", owner)
    assert {m["user_id"]: m["username"] for m in page["members"]}[alice] == "alicia"
