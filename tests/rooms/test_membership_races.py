"""Membership changes that meet: invitations that outlive a join, a leave or a removal
meeting a hand-over, role changes meeting a hand-over, the directory meeting a switch to
private, the member count left wrong by a join cut short (docs/rooms.md, "Model").

Each race is made deterministic: a store method (or a step of a request) is wrapped to
run the other request at the point where it used to slip in."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import pytest

from services.rooms import members
from services.rooms.store import member_id, now_ms
from tests.rooms.conftest import RoomsApi
from tests.rooms.test_moderation import admin
from tests.rooms.test_rooms import roles_of


async def admin_call(api: RoomsApi, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return await api.call(method, f"/v1/admin/rooms/{path}", admin(api), body)


async def room_of(api: RoomsApi, room: str) -> dict[str, Any]:
    doc = await api.rooms.store.get_room(room)
    assert doc is not None
    return doc


# -- 1: an invitation never outlives the membership it led to ----------------------------


async def test_a_removed_member_cannot_come_back_through_an_old_invitation(
    api: RoomsApi,
) -> None:
    """bob, invited to a public room, joined it with ``join``: the invitation stayed. The
    room went private, a moderator removed bob, and bob accepted the old invitation: a
    member again (new sender keys), though only a new invitation may bring him back."""
    owner, mod, alice, bob = (api.user() for _ in range(4))
    room = await api.room(owner)
    for u in (mod, alice):
        assert (await api.join(u, room))[0] == 200
    assert (await api.promote(owner, room, mod))[0] == 200
    assert (await api.invite(alice, room, bob))[0] == 201
    assert (await api.join(bob, room))[0] == 200
    assert (await api.invitations(bob))[1]["invitations"] == []
    assert (await api.get(bob, room))[1]["invited"] is False
    assert (await admin_call(api, "PUT", f"{room}/kind", {"kind": "private"}))[0] == 200
    assert (await api.remove(mod, room, bob))[0] == 204
    status, body = await api.accept(bob, room)
    assert (status, body["error"]["code"]) == (404, "room_not_found"), body
    assert bob not in await roles_of(api, owner, room)
    # Invited again, he comes back.
    assert (await api.invite(alice, room, bob))[0] == 201
    assert (await api.accept(bob, room))[0] == 200


async def test_an_invitation_written_while_its_invitee_joins_is_withdrawn(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alice's invitation read bob as no member; bob joined before it was written. It
    used to stay: a member with a pending invitation (the way back in above)."""
    owner, alice, bob = (api.user() for _ in range(3))
    room = await api.room(owner)
    assert (await api.join(alice, room))[0] == 200
    store = api.rooms.store
    insert = store.insert_invitation

    async def joined_first(doc: dict[str, Any]) -> bool:
        assert (await api.join(bob, room))[0] == 200
        return await insert(doc)

    monkeypatch.setattr(store, "insert_invitation", joined_first)
    status, body = await api.invite(alice, room, bob)
    assert (status, body["error"]["code"]) == (409, "already_member"), body
    assert (await api.invitations(bob))[1]["invitations"] == []
    assert await store.get_invitation(room, bob) is None


async def test_a_leftover_invitation_goes_with_a_removal_and_a_leave(api: RoomsApi) -> None:
    """An invitation a member still holds (as a join killed before it withdrew it, or
    an older version, left one) is withdrawn when the membership ends: a removed or
    departed member of a private room comes back only if invited again."""
    owner, bob = api.user(), api.user()
    room = await api.room(owner, "private")
    store = api.rooms.store

    async def member_with_an_invitation() -> None:
        assert (await api.invite(owner, room, bob))[0] == 201
        assert (await api.accept(bob, room))[0] == 200
        n = await store.bump_user(bob, "i")
        await store.add_to_list(bob, "i", n, room)
        await store.invitations.insert_one({
            "_id": member_id(room, bob), "room": room, "user": bob, "by": owner,
            "at": now_ms(), "user_slot": n,
        })  # fmt: skip

    await member_with_an_invitation()
    assert (await api.remove(owner, room, bob))[0] == 204
    assert (await api.accept(bob, room))[0] == 404
    assert (await api.invitations(bob))[1]["invitations"] == []

    await member_with_an_invitation()
    assert (await api.leave(bob, room))[0] == 204
    assert (await api.accept(bob, room))[0] == 404
    assert bob not in await roles_of(api, owner, room)


# -- 2: a leave or a removal meeting a hand-over -----------------------------------------


def hand_over_first(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch, method: str, owner: str, room: str,
    to: str, when: str,
) -> None:  # fmt: skip
    """The store's ``method``, called about ``when``, first has ``owner`` hand the room to
    ``to`` (once): a hand-over between a request's read of a role and its write."""
    store = api.rooms.store
    real = getattr(store, method)
    done: list[bool] = []

    async def handed_over_first(*args: Any, **kwargs: Any) -> Any:
        if args[1] == when and not done:
            done.append(True)
            status, body = await api.transfer(owner, room, to)
            assert status == 200, body
        return await real(*args, **kwargs)

    monkeypatch.setattr(store, method, handed_over_first)


async def test_a_member_made_owner_while_leaving_stays_the_owner(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bob's leave read him as a member; the owner handed him the room before his
    membership was deleted. The leave deleted it anyway: a room with no owner, for good
    (its ``owner`` naming someone who is gone). Now it is the owner's leave."""
    owner, bob = api.user(), api.user()
    room = await api.room(owner)
    assert (await api.join(bob, room))[0] == 200
    hand_over_first(api, monkeypatch, "delete_member", owner, room, bob, when=bob)
    status, body = await api.leave(bob, room)
    assert (status, body["error"]["code"]) == (409, "owner_must_transfer"), body
    assert await roles_of(api, owner, room) == {owner: "moderator", bob: "owner"}
    assert (await room_of(api, room))["owner"] == bob


async def test_an_admins_removal_meeting_a_hand_over_leaves_owner_true(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An admin removes bob, read as a member, who is made the owner before the delete:
    the room's ``owner`` stayed bob, a user who is gone. And an admin removes the
    owner, who hands the room to carol before the delete: ``owner`` was cleared,
    though carol is the owner."""
    owner, bob, carol = (api.user() for _ in range(3))
    room = await api.room(owner)
    for u in (bob, carol):
        assert (await api.join(u, room))[0] == 200
    with monkeypatch.context() as m:
        hand_over_first(api, m, "delete_member", owner, room, bob, when=bob)
        assert (await admin_call(api, "DELETE", f"{room}/members/{bob}"))[0] == 204
    assert await roles_of(api, owner, room) == {owner: "moderator", carol: "member"}
    assert (await room_of(api, room))["owner"] is None

    assert (await admin_call(api, "PUT", f"{room}/owner", {"user_id": owner}))[0] == 200
    hand_over_first(api, monkeypatch, "delete_member", owner, room, carol, when=owner)
    assert (await admin_call(api, "DELETE", f"{room}/members/{owner}"))[0] == 204
    assert await roles_of(api, carol, room) == {carol: "owner"}
    assert (await room_of(api, room))["owner"] == carol


# -- 3: the directory lists public rooms only ---------------------------------------------


async def test_the_directory_never_lists_a_private_room(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rename read the room as public; an admin made it private before the rename
    wrote the new name's entry: the private room was listed (its name, topic, count)
    under its new name. And a switch to private cut short between the room's kind and
    the directory left the private room listed."""
    owner = api.user()
    tag = api.user()[:6]
    room = await api.room(owner, "public", f"{tag} harbour")
    store = api.rooms.store
    add = store.add_to_directory

    async def made_private_first(key: str, room_id: str, name: str) -> None:
        status, body = await admin_call(api, "PUT", f"{room}/kind", {"kind": "private"})
        assert status == 200, body
        await add(key, room_id, name)

    with monkeypatch.context() as m:
        m.setattr(store, "add_to_directory", made_private_first)
        assert (await api.patch(owner, room, {"name": f"{tag} lighthouse"}))[0] == 200
    assert (await api.directory(api.user(), f"?q={tag}"))[1]["rooms"] == []

    other = await api.room(owner, "public", f"{tag} quay")

    async def killed(*_: Any) -> None:
        raise RuntimeError("killed mid-switch")

    monkeypatch.setattr(store, "remove_from_directory", killed)
    assert (await admin_call(api, "PUT", f"{other}/kind", {"kind": "private"}))[0] == 500
    outsider = api.user()
    for entry in (await api.directory(outsider, f"?q={tag}"))[1]["rooms"]:
        status, seen = await api.get(outsider, entry["room_id"])
        assert (status, seen["kind"]) == (200, "public"), seen


async def page_through(api: RoomsApi, user: str, q: str) -> tuple[list[str], list[str]]:
    """Every directory page of ``q``, one room a page: (names listed, cursors answered)."""
    names: list[str] = []
    cursors: list[str] = []
    after = ""
    for _ in range(20):
        status, page = await api.directory(user, f"?q={quote(q)}&limit=1&after={quote(after)}")
        assert status == 200, page
        names += [r["name"] for r in page["rooms"]]
        if page["next_after"] is None:
            return names, cursors
        after = page["next_after"]
        cursors.append(after)
    raise AssertionError(f"the directory did not end: {cursors}")


async def test_a_rename_meeting_a_switch_to_private_leaks_nothing_through_the_cursor(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding (2026-12-07): a rename read the room as public; an admin made it
    private, taking out the entry it had; the rename then wrote its new name's entry.
    The listing hid that entry, but ``next_after`` was the id of the last entry *read*:
    ``"<new name>|<room id>"`` of a private room, handed to anyone signed in."""
    owner, outsider = api.user(), api.user()
    tag = api.user()[:6]
    room = await api.room(owner, "public", f"{tag} team")
    store = api.rooms.store
    add = store.add_to_directory

    async def made_private_first(key: str, room_id: str, name: str) -> None:
        if room_id == room:
            status, body = await admin_call(api, "PUT", f"{room}/kind", {"kind": "private"})
            assert status == 200, body
        await add(key, room_id, name)

    with monkeypatch.context() as m:
        m.setattr(store, "add_to_directory", made_private_first)
        status, body = await api.patch(owner, room, {"name": f"{tag} secret merger plans"})
    assert (status, body["kind"]) == (200, "private"), body
    # Public rooms whose names sort around the private one's.
    await api.room(owner, "public", f"{tag} a-public")
    await api.room(owner, "public", f"{tag} z-public")
    names, cursors = await page_through(api, outsider, tag)
    assert names == [f"{tag} a-public", f"{tag} z-public"]
    assert not [c for c in cursors if room in c or "secret" in c], cursors
    assert await store.directory.find({"room_id": room}).to_list() == []


async def test_a_stale_entry_is_never_a_cursor_and_is_deleted_when_met(api: RoomsApi) -> None:
    """An entry the listing leaves out (a private room's, left by a process killed between
    a rename's writes, or a deleted room's) is never the page's ``next_after``, however
    the page falls, and the page that meets it deletes it."""
    owner, outsider = api.user(), api.user()
    tag = api.user()[:6]
    public = [await api.room(owner, "public", f"{tag} {c}-public") for c in "bdf"]
    hidden = await api.room(owner, "private", f"{tag} c-private")
    gone = await api.room(owner, "public", f"{tag} e-deleted")
    assert (await admin_call(api, "DELETE", gone))[0] == 204
    store = api.rooms.store
    await store.add_to_directory(f"{tag} c-private", hidden, f"{tag} c-private")
    await store.add_to_directory(f"{tag} e-deleted", gone, f"{tag} e-deleted")
    await store.add_to_directory(f"{tag} a-old name", public[0], f"{tag} a-old name")
    names, cursors = await page_through(api, outsider, tag)
    assert names == [f"{tag} {c}-public" for c in "bdf"]
    assert not [c for c in cursors if hidden in c or gone in c or "old name" in c], cursors
    left = await store.directory.find({"room_id": {"$in": [hidden, gone, *public]}}).to_list()
    assert sorted(x["name"] for x in left) == [f"{tag} {c}-public" for c in "bdf"]


async def test_a_cleaned_entry_whose_room_is_listed_again_comes_back(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page read a private room's entry as stale; an admin made the room public
    before the page deleted it: the page reads the room again after its delete and puts
    the entry back, so the public room is not left out of the directory."""
    owner = api.user()
    tag = api.user()[:6]
    room = await api.room(owner, "private", f"{tag} harbour")
    store = api.rooms.store
    await store.add_to_directory(f"{tag} harbour", room, f"{tag} harbour")
    remove = store.remove_directory_entry

    async def made_public_meanwhile(entry_id: str) -> None:
        await store.set_room(room, {"kind": "public"})
        await remove(entry_id)

    with monkeypatch.context() as m:
        m.setattr(store, "remove_directory_entry", made_public_meanwhile)
        assert (await api.directory(owner, f"?q={tag}"))[1]["rooms"] == []
    assert [r["room_id"] for r in (await api.directory(owner, f"?q={tag}"))[1]["rooms"]] == [room]


# -- 4: role changes meeting a hand-over ------------------------------------------------


async def test_a_demotion_meeting_a_hand_over_does_not_strip_the_new_owner(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner demotes moderator bob and, at once (another device), hands bob the
    room. The demotion, which read bob as a moderator, made the new owner a plain
    member: a room with no owner."""
    owner, bob = api.user(), api.user()
    room = await api.room(owner)
    assert (await api.join(bob, room))[0] == 200
    assert (await api.promote(owner, room, bob))[0] == 200
    store = api.rooms.store
    real = store.set_role
    done: list[bool] = []

    async def handed_over_first(room_id: str, user_id: str, slot: int, role: str,
                                was: str | None = None, **kw: Any) -> bool:  # fmt: skip
        if role == "member" and not done:
            done.append(True)
            assert (await api.transfer(owner, room, bob))[0] == 200
        return await real(room_id, user_id, slot, role, was=was, **kw)

    monkeypatch.setattr(store, "set_role", handed_over_first)
    status, body = await api.demote(owner, room, bob)
    assert (status, body["error"]["code"]) == (403, "forbidden"), body
    assert await roles_of(api, owner, room) == {owner: "moderator", bob: "owner"}


async def test_an_admins_owner_waits_for_a_hand_over_under_way(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner hands the room to bob; an admin names carol the owner in the middle.
    Both went through: two owners. The admin is refused (``conflict``) while the
    hand-over is under way, and names an owner once it is done."""
    owner, bob, carol = (api.user() for _ in range(3))
    room = await api.room(owner)
    for u in (bob, carol):
        assert (await api.join(u, room))[0] == 200
    complete = members._complete_handover
    reached, go_on = asyncio.Event(), asyncio.Event()

    async def held(*args: Any) -> None:  # the owner stepped down, bob not yet the owner
        reached.set()
        await go_on.wait()
        await complete(*args)

    monkeypatch.setattr(members, "_complete_handover", held)
    handing = asyncio.create_task(api.transfer(owner, room, bob))
    await reached.wait()
    status, body = await admin_call(api, "PUT", f"{room}/owner", {"user_id": carol})
    go_on.set()
    assert (await handing)[0] == 200
    assert (status, body["error"]["code"]) == (409, "conflict"), body
    assert await roles_of(api, owner, room) == {owner: "moderator", bob: "owner",
                                                carol: "member"}  # fmt: skip
    status, body = await admin_call(api, "PUT", f"{room}/owner", {"user_id": carol})
    assert status == 200, body
    assert await roles_of(api, owner, room) == {owner: "moderator", bob: "moderator",
                                                carol: "owner"}  # fmt: skip
    assert (await room_of(api, room))["owner"] == carol


# -- 5, 6: the last member, whatever their role, and whatever the count says ---------------


async def test_the_last_member_leaving_closes_the_room_whatever_their_role(
    api: RoomsApi,
) -> None:
    owner, bob = api.user(), api.user()
    room = await api.room(owner)
    assert (await api.join(bob, room))[0] == 200
    assert (await admin_call(api, "DELETE", f"{room}/members/{owner}"))[0] == 204
    assert (await api.leave(bob, room))[0] == 204
    status, got = await api.get(api.user(), room)
    assert (status, got["state"], got["owner"], got["members"]) == (200, "closed", None, 0)


async def test_the_last_two_members_leaving_at_once_close_the_room(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: each of the last two saw the other before leaving, neither
    closed the room, and it was left open with nobody in it (anyone could join a room
    nobody can manage)."""
    owner, bob, carol = api.user(), api.user(), api.user()
    room = await api.room(owner)
    for u in (bob, carol):
        assert (await api.join(u, room))[0] == 200
    assert (await admin_call(api, "DELETE", f"{room}/members/{owner}"))[0] == 204
    store = api.rooms.store
    others, looked, both = store.has_other_members, [0], asyncio.Event()

    async def together(room_id: str, user_id: str) -> bool:
        found = await others(room_id, user_id)
        looked[0] += 1
        if looked[0] == 2:
            both.set()
        if looked[0] <= 2:
            await both.wait()  # each looked before either left
        return found

    monkeypatch.setattr(store, "has_other_members", together)
    answers = await asyncio.gather(api.leave(bob, room), api.leave(carol, room))
    assert [status for status, _ in answers] == [204, 204]
    status, got = await api.get(api.user(), room)
    assert (status, got["state"], got["members"]) == (200, "closed", 0)


async def test_a_join_that_fails_midway_leaves_the_count_true(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A join raised after counting its member: the count stayed one too high, and the
    owner, alone, could never leave (``owner_must_transfer``)."""
    owner, bob = api.user(), api.user()
    room = await api.room(owner)

    async def broken(*_: Any) -> None:
        raise RuntimeError("the roster write failed")

    with monkeypatch.context() as m:
        m.setattr(api.rooms.store, "add_roster", broken)
        assert (await api.join(bob, room))[0] == 500
    assert (await api.get(owner, room))[1]["members"] == 1
    assert await roles_of(api, owner, room) == {owner: "owner"}
    assert (await api.leave(owner, room))[0] == 204
    assert (await api.get(bob, room))[1]["state"] == "closed"


async def test_the_last_member_is_told_by_the_memberships_not_the_count(
    api: RoomsApi,
) -> None:
    """A process killed between a join's count and its membership leaves the count one
    too high (docs/rooms.md, "Storage"): the owner, alone, still leaves."""
    owner = api.user()
    room = await api.room(owner)
    await api.rooms.store.bump_room(room, members=1)
    assert (await api.leave(owner, room))[0] == 204
    assert (await room_of(api, room))["state"] == "closed"


async def test_a_join_during_the_last_members_leave_finds_the_room_open(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding (2026-12-07): the last member's leave closes the room, then reads
    the memberships again; one that got in meanwhile undoes the close. The undo was
    written on the room as read before the close ("open"), so it found nothing to do
    and the joiner was left alone in a closed room."""
    owner, bob, carol = api.user(), api.user(), api.user()
    room = await api.room(owner)
    assert (await api.join(bob, room))[0] == 200
    assert (await admin_call(api, "DELETE", f"{room}/members/{owner}"))[0] == 204
    store = api.rooms.store
    others, looked = store.has_other_members, [0]

    async def carol_joins_after_the_first_look(room_id: str, user_id: str) -> bool:
        looked[0] += 1
        if looked[0] == 2:  # bob's leave closed the room: carol got in just before
            doc = {"_id": member_id(room_id, carol), "room": room_id, "user": carol,
                   "role": "member", "slot": 99, "user_slot": 1, "joined_at": now_ms()}  # fmt: skip
            await store.insert_member(doc)
        return await others(room_id, user_id)

    monkeypatch.setattr(store, "has_other_members", carol_joins_after_the_first_look)
    assert (await api.leave(bob, room))[0] == 204
    status, got = await api.get(carol, room)
    assert (status, got["state"]) == (200, "open")


async def test_a_join_undone_after_the_leave_reopened_the_room_leaves_it_closed(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding (2026-12-07): the last member's leave closed the room, saw a join
    and opened it again; the joiner, which had read "closed", undid its join after the
    leave had ended: an open room with nobody in it (anyone could join a room nobody
    can manage). The undo reads the room after it, and closes it if nobody is left."""
    owner, bob, carol = api.user(), api.user(), api.user()
    room = await api.room(owner)
    assert (await api.join(bob, room))[0] == 200
    assert (await admin_call(api, "DELETE", f"{room}/members/{owner}"))[0] == 204
    store = api.rooms.store
    inserting, closed, carol_read, bob_done = (asyncio.Event() for _ in range(4))
    others, insert, undo = store.has_other_members, store.insert_member, members._undo
    looks = [0]

    async def has_other(room_id: str, user_id: str) -> bool:
        if user_id == bob:
            looks[0] += 1
            if looks[0] == 2:  # bob's leave has closed the room
                closed.set()
                await carol_read.wait()
        return await others(room_id, user_id)

    async def insert_member(doc: Any) -> bool:
        if doc["user"] == carol:
            inserting.set()
            await closed.wait()  # carol's membership lands just after the close
        return await insert(doc)

    async def carol_undo(rooms: Any, room_doc: Any, member: Any, *a: Any, **kw: Any) -> None:
        carol_read.set()  # carol read "closed": her join is undone...
        await bob_done.wait()  # ...once bob's leave has ended
        await undo(rooms, room_doc, member, *a, **kw)

    monkeypatch.setattr(store, "has_other_members", has_other)
    monkeypatch.setattr(store, "insert_member", insert_member)
    monkeypatch.setattr(members, "_undo", carol_undo)
    join = asyncio.create_task(api.join(carol, room))
    await inserting.wait()
    assert (await api.leave(bob, room))[0] == 204
    bob_done.set()
    status, body = await join
    assert (status, body["error"]["code"]) == (409, "room_closed")
    assert (await room_of(api, room))["state"] == "closed"
    assert not await others(room, "nobody")


@pytest.mark.parametrize("kind", ["private", "public"])
async def test_a_second_join_meeting_a_close_keeps_the_first_joins_membership(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Audit finding (2026-12-07): two joins of one user at once (a double click, two
    devices), and the owner closing the room between them. The second read the room
    open, found the membership the first had made (and answered 200) before the close,
    then saw the room closed and undid that membership: a member admitted before the
    close was gone. A join undoes only a membership it made; the second is answered
    with the membership there is."""
    owner, user = api.user(), api.user()
    room = await api.room(owner, kind)
    if kind == "private":
        assert (await api.invite(owner, room, user))[0] == 201
    store = api.rooms.store
    get_ban = store.get_ban
    first: list[tuple[int, Any]] = []
    started: list[bool] = []

    async def meanwhile(room_id: str, user_id: str) -> Any:
        if user_id == user and not started:
            started.append(True)
            # The second join has read the room (open, no membership): the first join
            # is made and answered, then the owner closes the room.
            first.append(await api.join(user, room))
            assert (await api.patch(owner, room, {"state": "closed"}))[0] == 200
        return await get_ban(room_id, user_id)

    monkeypatch.setattr(store, "get_ban", meanwhile)
    status, second = await api.join(user, room)
    assert first[0][0] == 200, first
    assert (status, second) == (200, first[0][1])
    status, seen = await api.get(user, room)
    assert (status, seen["role"], seen["state"]) == (200, "member", "closed")
    _, page = await api.members(owner, room)
    assert [m["user_id"] for m in page["members"]] == [owner, user]
    assert int((await room_of(api, room))["members"]) == 2
