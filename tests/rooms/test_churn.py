"""Join and leave churn (docs/rooms.md, "Limits", "Member lists"): joins of public rooms
are limited per user, and a room's member pages and push list cost what its members do,
not every roster slot ever handed out (slots are never reused)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.common.ratelimit import Limit
from services.rooms import push
from services.rooms.config import RoomsConfig
from services.rooms.store import list_id, member_id, now_ms, roster_id
from tests.rooms.conftest import TEST_CONFIG, RoomsApi, RoomsFactory
from tests.rooms.test_bad_input import refused
from tests.rooms.test_moderation import admin

JOINS = 3


async def test_joins_past_the_limit_are_refused_and_change_nothing(
    make_rooms: RoomsFactory,
) -> None:
    """Joining a public room had no limit (creating and posting had): one user joined
    and left a room 200 times in 9 s, each join a roster slot for good. Joins again
    after leaving count; a join of a room one is a member of, and an acceptance of an
    invitation, do not; the limit is each user's."""
    config = RoomsConfig(
        create_limit=TEST_CONFIG.create_limit, post_limit=TEST_CONFIG.post_limit,
        join_limit=Limit(JOINS, 60),
    )  # fmt: skip
    api = await make_rooms(config)
    owner, churner, other = api.user(), api.user(), api.user()
    room = await api.room(owner)
    elsewhere = await api.room(owner, name="elsewhere")
    private = await api.room(owner, "private", "invited only")
    assert (await api.join(churner, room))[0] == 200
    assert (await api.leave(churner, room))[0] == 204
    assert (await api.join(churner, room))[0] == 200  # again: counted
    for _ in range(3):  # a member's join again answers the membership, uncounted
        assert (await api.join(churner, room))[0] == 200
    assert (await api.join(churner, elsewhere))[0] == 200  # the third
    assert (await api.leave(churner, room))[0] == 204
    slots = int((await api.rooms.store.get_room(room) or {})["slots"])

    body = await refused(api, api.join(churner, room), 429, "rate_limited")
    assert 1 <= body["error"]["details"]["retry_after"] <= 60
    resp = await api.client.post(f"/rooms/v1/rooms/{room}/join", headers=api.headers(churner))
    assert resp.status == 429 and 1 <= int(resp.headers["Retry-After"]) <= 60
    assert int((await api.rooms.store.get_room(room) or {})["slots"]) == slots
    _, page = await api.members(owner, room)
    assert [m["user_id"] for m in page["members"]] == [owner]

    # Still a member of `elsewhere`: answered, not counted. Invited: accepted.
    assert (await api.join(churner, elsewhere))[0] == 200
    assert (await api.invite(owner, private, churner))[0] == 201
    assert (await api.join(churner, private))[0] == 200  # joining it is accepting
    # Another user's joins are their own.
    assert (await api.join(other, room))[0] == 200


async def test_invitations_past_the_limit_are_refused_and_change_nothing(
    make_rooms: RoomsFactory,
) -> None:
    """Invitations had no limit: a room's owner inviting, banning and lifting the ban of
    another user in a loop took a slot of that user's invitation list for good each
    time. Each invitation counts now; the same invitation again does not; the limit is
    each inviter's."""
    config = RoomsConfig(
        create_limit=TEST_CONFIG.create_limit, post_limit=TEST_CONFIG.post_limit,
        join_limit=TEST_CONFIG.join_limit, invite_limit=Limit(JOINS, 60),
    )  # fmt: skip
    api = await make_rooms(config)
    mallory, victim, other, friend = api.user(), api.user(), api.user(), api.user()
    room = await api.room(mallory, "private", "loop")
    for _ in range(2):  # two cycles: two invitations counted
        assert (await api.invite(mallory, room, victim))[0] == 201
        assert (await api.invite(mallory, room, victim))[0] == 201  # the same: uncounted
        assert (await api.ban(mallory, room, victim))[0] == 200
        assert (await api.unban(mallory, room, victim))[0] == 204
    assert (await api.invite(mallory, room, other))[0] == 201  # the third
    slots = int((await api.rooms.store.get_user(victim)).get("i", 0))

    body = await refused(api, api.invite(mallory, room, victim), 429, "rate_limited")
    assert 1 <= body["error"]["details"]["retry_after"] <= 60
    resp = await api.client.post(
        f"/rooms/v1/rooms/{room}/invitations", headers=api.headers(mallory), json={"user": friend}
    )
    assert resp.status == 429 and 1 <= int(resp.headers["Retry-After"]) <= 60
    assert int((await api.rooms.store.get_user(victim)).get("i", 0)) == slots
    assert (await api.invitations(victim))[1]["invitations"] == []
    # Another member's invitations are their own.
    assert (await api.accept(other, room))[0] == 200
    assert (await api.invite(other, room, victim))[0] == 201
    _, pending = await api.invitations(victim)
    assert [(i["room_id"], i["invited_by"]) for i in pending["invitations"]] == [(room, other)]


async def test_an_invitation_page_costs_what_it_lists_not_the_slots_handed_out(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding (2026-12-07): an invitations page listed the ids of every slot of
    the user's list down to the first, holes and all, on every call; invite, ban and
    lift the ban in a loop left another user a million holes (6.8 s a page). The list is
    read as an ``_id`` range now: a sized test, not a timed one, counting the reads."""
    owner, user = api.user(), api.user()
    first = await api.room(owner, "private", "first")
    assert (await api.invite(owner, first, user))[0] == 201  # slot 1
    loop = await api.room(owner, "private", "loop")
    for _ in range(5):  # holes as the loop leaves them
        assert (await api.invite(owner, loop, user))[0] == 201
        assert (await api.ban(owner, loop, user))[0] == 200
        assert (await api.unban(owner, loop, user))[0] == 204
    store = api.rooms.store
    await store.users.update_one({"_id": user}, {"$inc": {"i": 1_000_000}})
    # A run of 40 entries a crash left (no invitation names them) among the holes.
    gone = [list_id(user, "i", n) for n in range(500_000, 500_040)]
    await store.user_lists.insert_many([{"_id": i, "room": loop} for i in gone])
    later = [await api.room(owner, "private", f"later {k}") for k in range(3)]
    for room in later:
        assert (await api.invite(owner, room, user))[0] == 201
    newest_first = [*later[::-1], first]

    reads: list[int] = []
    list_entries, list_before = store.list_entries, store.list_before

    async def by_ids(user_id: str, kind: str, ns: Any) -> list[Any]:
        found = await list_entries(user_id, kind, ns)
        reads.append(len(ns))
        return found

    async def by_range(user_id: str, kind: str, before: int | None, limit: int) -> list[Any]:
        found = await list_before(user_id, kind, before, limit)
        reads.append(len(found))
        return found

    monkeypatch.setattr(store, "list_entries", by_ids)
    monkeypatch.setattr(store, "list_before", by_range)
    status, page = await api.invitations(user)
    assert status == 200, page
    assert [i["room_id"] for i in page["invitations"]] == newest_first
    assert [r["room_id"] for r in page["rooms"]] == newest_first
    assert page["next_before"] is None
    # The entries there are (4 invitations, 40 left by a crash), never a million slots.
    assert sum(reads) == 4 + len(gone) and len(reads) <= 4, reads

    # Two a page: each cursor is the last one listed's slot, and leads to the next.
    reads.clear()
    listed: list[str] = []
    query = "?limit=2"
    for _ in range(3):
        status, page = await api.invitations(user, query)
        assert status == 200, page
        listed += [i["room_id"] for i in page["invitations"]]
        if page["next_before"] is None:
            break
        query = f"?limit=2&before={page['next_before']}"
    assert listed == newest_first and len(reads) <= 8, reads


async def seed_left_slots(api: RoomsApi, room: str, n: int) -> None:
    """``n`` members who joined and left, as the store leaves them: a leave deletes its
    membership and its roster entry, and the room's slot counter stays where it was."""
    await api.rooms.store.bump_room(room, slots=n)


async def seed_leftovers(api: RoomsApi, room: str, slots: list[int], member: str) -> None:
    """Roster entries a crash left behind: ones of users with no membership (a join
    killed before its member document, a leave after it), and one of a member naming
    an older slot than their membership's."""
    store = api.rooms.store
    await store.roster.insert_many(
        [{"_id": roster_id(room, s), "user": f"gone{s:06d}"} for s in slots[:-1]]
    )
    await store.roster.insert_one({"_id": roster_id(room, slots[-1]), "user": member})


async def test_a_room_thousands_joined_and_left_lists_exactly_its_members(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slots are never reused, and a member page and the push list read the ids of
    every slot ever handed out, 500 a round trip: a room that 50,000 joined and left
    cost 100 round trips a page (1.8 s) and a push list as much, for anyone signed in
    and for good. Both read the roster as an ``_id`` range now: what is there. A
    sized test, not a timed one: the answers, and how many roster reads they took."""
    owner, early, late, reader = api.user(), api.user(), api.user(), api.user()
    room = await api.room(owner, name="churned")
    assert (await api.join(early, room))[0] == 200  # slot 2
    await seed_left_slots(api, room, 20_000)
    leftovers = [*range(50, 250), 9_000, 15_000]
    await seed_leftovers(api, room, leftovers, early)
    assert (await api.join(late, room))[0] == 200  # slot 20,003
    store = api.rooms.store
    doc = await store.get_room(room) or {}
    assert int(doc["slots"]) == 20_003 and int(doc["members"]) == 3
    present = [owner, early, late]

    reads: list[int] = []
    roster_after = store.roster_after

    async def counted(room_id: str, after: int, limit: int | None) -> list[Any]:
        found = await roster_after(room_id, after, limit)
        reads.append(len(found))
        return found

    monkeypatch.setattr(store, "roster_after", counted)
    status, page = await api.members(reader, room)
    assert status == 200, page
    assert [m["user_id"] for m in page["members"]] == present
    assert [m["role"] for m in page["members"]] == ["owner", "member", "member"]
    assert page["next_after"] is None
    # The entries there are (3 members, 202 left by crashes), never 20,003 slots.
    assert sum(reads) == len(present) + len(leftovers) and len(reads) <= 6

    # One member a page: each cursor is the last member's slot, and leads to the next.
    listed: list[str] = []
    cursors: list[int] = []
    query = "?limit=1"
    for _ in range(5):
        status, page = await api.members(reader, room, query)
        assert status == 200, page
        listed += [m["user_id"] for m in page["members"]]
        if page["next_after"] is None:
            break
        cursors.append(page["next_after"])
        query = f"?limit=1&after={page['next_after']}"
    assert listed == present and cursors == [1, 2]

    reads.clear()
    assert await push.members_of(store, doc) == present
    assert sum(reads) == len(present) + len(leftovers) and len(reads) == 1
    # The admins' member list is the same page.
    status, page = await api.call("GET", f"/v1/admin/rooms/{room}/members", admin(api))
    assert status == 200, page
    assert [m["user_id"] for m in page["members"]] == present


async def test_member_pages_hold_their_order_across_joins_and_leaves(api: RoomsApi) -> None:
    """A cursor is the slot of the last member listed: a leave of a listed member, a
    leave of one not yet listed and joins meanwhile neither repeat nor skip anyone who
    stays; a joiner comes at the end."""
    owner = api.user()
    room = await api.room(owner, name="moving")
    crowd = [api.user() for _ in range(6)]
    for u in crowd:
        assert (await api.join(u, room))[0] == 200
    status, first = await api.members(owner, room, "?limit=3")
    assert [m["user_id"] for m in first["members"]] == [owner, *crowd[:2]]
    newcomer = api.user()
    await asyncio.gather(
        api.leave(crowd[1], room), api.leave(crowd[3], room), api.join(newcomer, room)
    )
    assert (await api.leave(crowd[0], room))[0] == 204
    assert (await api.join(crowd[0], room))[0] == 200  # back, at the end
    rest: list[str] = []
    after = first["next_after"]
    while after is not None:
        status, page = await api.members(owner, room, f"?limit=2&after={after}")
        assert status == 200, page
        rest += [m["user_id"] for m in page["members"]]
        after = page["next_after"]
    assert rest == [crowd[2], crowd[4], crowd[5], newcomer, crowd[0]]


async def test_a_full_page_says_there_is_more_only_when_a_member_follows(
    api: RoomsApi,
) -> None:
    """``next_after`` is given while a member follows the page, past entries that do not
    count (a join under way, one a crash left), and not when none does."""
    owner, bob = api.user(), api.user()
    room = await api.room(owner, name="edges")
    assert (await api.join(bob, room))[0] == 200
    _, page = await api.members(owner, room, "?limit=2")
    assert [m["user_id"] for m in page["members"]] == [owner, bob] and page["next_after"] is None
    # A run of 100 entries that do not count after bob, then a member.
    store = api.rooms.store
    await store.roster.insert_many(
        [{"_id": roster_id(room, s), "user": f"gone{s}"} for s in range(3, 103)]
    )
    carol = api.user()
    await store.bump_room(room, slots=101, members=1)
    await store.members.insert_one({
        "_id": member_id(room, carol), "room": room, "user": carol, "role": "member",
        "slot": 103, "user_slot": None, "joined_at": now_ms(),
    })  # fmt: skip
    await store.roster.insert_one({"_id": roster_id(room, 103), "user": carol})
    _, page = await api.members(owner, room, "?limit=2")
    assert [m["user_id"] for m in page["members"]] == [owner, bob] and page["next_after"] == 2
    _, page = await api.members(owner, room, "?limit=2&after=2")
    assert [m["user_id"] for m in page["members"]] == [carol] and page["next_after"] is None
