"""Rooms: create, read, list, the public directory, topic and state (docs/rooms.md).

A private room is invisible to everyone but its members and the users it has
invited: every look-up by anyone else answers 404 ``room_not_found``, the
same as for a room that does not exist, so its existence leaks nowhere.
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any

from parley_contract import envelopes as e

from services.common.errors import ApiError, ErrorCode
from services.rooms import models, push, text
from services.rooms.config import NAME_MAX, PAGE_MAX, TOPIC_MAX
from services.rooms.events import Check
from services.rooms.state import Rooms
from services.rooms.store import Doc, member_id, now_ms, slot_of

log = logging.getLogger(__name__)

# Slots of a user's list read per round trip (at least a page's): see :func:`mine`.
LIST_WINDOW = 500
LIST_WINDOW_MAX = 4000

ROOM_ID_RE = re.compile(r"[0-9a-f]{24}")
PRIVATE = "private"
PUBLIC = "public"


def not_found() -> ApiError:
    return ApiError(ErrorCode.ROOM_NOT_FOUND, "No such room.")


def not_a_member() -> ApiError:
    return ApiError(ErrorCode.NOT_A_MEMBER, "You are not a member of this room.")


def forbidden(message: str) -> ApiError:
    return ApiError(ErrorCode.FORBIDDEN, message)


def closed() -> ApiError:
    return ApiError(ErrorCode.ROOM_CLOSED, "This room is closed: its history stays readable.")


async def visible(rooms: Rooms, room_id: str, user_id: str) -> tuple[Doc, Doc | None, Doc | None]:
    """(room, the caller's membership, the caller's invitation) of a room the caller
    may see; 404 ``room_not_found`` otherwise (private rooms: members and invitees)."""
    room = await rooms.store.get_room(room_id)
    if room is None or deleted(room):
        raise not_found()
    member = await rooms.store.get_member(room_id, user_id)
    invitation = None
    if member is None:
        invitation = await rooms.store.get_invitation(room_id, user_id)
        if room["kind"] == PRIVATE and invitation is None:
            raise not_found()
    return room, member, invitation


def deleted(room: Doc) -> bool:
    """An admin deleted the room: it exists for nobody but admins (docs/moderation.md)."""
    return room.get("deleted_at") is not None


def member_of(member: Doc | None) -> Doc:
    if member is None:
        raise not_a_member()
    return member


def require_open(room: Doc) -> None:
    if room["state"] != "open":
        raise closed()


def out(room: Doc, member: Doc | None = None, invited: bool = False) -> models.Room:
    return models.Room(
        room_id=room["_id"],
        name=room["name"],
        topic=room.get("topic", ""),
        kind=room["kind"],
        state=room["state"],
        owner=room.get("owner"),
        members=max(int(room.get("members", 0)), 0),
        created_at=int(room["created_at"]),
        role=None if member is None else member["role"],
        joined_at=None if member is None else int(member["joined_at"]),
        invited=invited,
        version=int(room.get("version", 1)),
    )


async def create(rooms: Rooms, user_id: str, body: models.RoomCreate) -> models.Room:
    name = text.clean(body.name, "name", required=True, limit=NAME_MAX)
    topic = text.clean(body.topic, "topic", required=False, limit=TOPIC_MAX)
    await rooms.limiter.hit("create", user_id, rooms.config.create_limit)
    store = rooms.store
    room_id = secrets.token_hex(12)
    now = now_ms()
    key = text.name_key(name)
    room: Doc = {
        "_id": room_id, "name": name, "name_key": key, "topic": topic, "kind": body.kind,
        "state": "open", "owner": user_id, "members": 1, "version": 1, "slots": 1, "seq": 0,
        "created_at": now, "created_by": user_id,
    }  # fmt: skip
    held = await rooms.events.hold(
        e.RoomCreated(room_id=room_id, kind=body.kind, version=1, actor=user_id, at=now),
        Check("members", {"_id": member_id(room_id, user_id)}),
    )
    await store.insert_room(room)
    n = await store.bump_user(user_id, "r")
    await store.add_roster(room_id, 1, user_id)
    await store.add_to_list(user_id, "r", n, room_id)
    member: Doc = {
        "_id": member_id(room_id, user_id), "room": room_id, "user": user_id, "role": "owner",
        "slot": 1, "user_slot": n, "joined_at": now,
    }  # fmt: skip
    await store.insert_member(member)
    if body.kind == PUBLIC:
        await store.add_to_directory(key, room_id, name)
    await rooms.events.release(held)
    log.info("room created", extra={"room_id": room_id, "kind": body.kind})
    return out(room, member)


async def get(rooms: Rooms, user_id: str, room_id: str) -> models.Room:
    room, member, invitation = await visible(rooms, room_id, user_id)
    return out(room, member, invitation is not None)


async def update(rooms: Rooms, user_id: str, room_id: str, body: models.RoomUpdate) -> models.Room:
    """Name, topic and state: the owner and moderators."""
    room, member, _ = await visible(rooms, room_id, user_id)
    if member_of(member)["role"] not in ("owner", "moderator"):
        raise forbidden("Only the room's owner and moderators change its name, topic or state.")
    fields: dict[str, Any] = {}
    if body.topic is not None:
        fields["topic"] = text.clean(body.topic, "topic", required=False, limit=TOPIC_MAX)
    old_key = room.get("name_key") or text.name_key(room["name"])
    if body.name is not None:
        name = text.clean(body.name, "name", required=True, limit=NAME_MAX)
        fields.update(name=name, name_key=text.name_key(name))
    # The state first: it is what may be refused after the checks (`conflict` after
    # eight lost races, `room_not_found` if the room was deleted meanwhile), and a
    # refused request changes nothing (the name and topic were written first until
    # 2026-12-07, and stayed).
    changed_state = body.state is not None and body.state != room["state"]
    if changed_state:
        changed_state = await set_state(rooms, room, str(body.state), user_id)
    public = room["kind"] == PUBLIC
    if public and "name" in fields:
        # The directory's new entry first, the old one last: a crash in between
        # leaves an entry that no longer matches the room's name_key (not listed).
        await rooms.store.add_to_directory(fields["name_key"], room_id, fields["name"])
    if fields:
        await rooms.store.set_room(room_id, fields)
    if "name" in fields:
        # The old entry goes, and the room is read again after the writes: an admin who
        # made the room private meanwhile took out the entry it read, not this one, and
        # one who made it public listed the name it read (docs/rooms.md, "Routes").
        if fields["name_key"] != old_key:
            await sync_directory(rooms, room_id, old_key)
        await sync_directory(rooms, room_id, fields["name_key"])
    renamed = fields.get("name", room["name"]) != room["name"]
    retopiced = fields.get("topic", room.get("topic", "")) != room.get("topic", "")
    room = await rooms.store.get_room(room_id) or room
    # Members see it at once (the web client reads the room again; the CLI says it).
    if renamed or retopiced:
        await push.room_changed(rooms.store, rooms.pusher, room, "settings", user_id=user_id)
    if changed_state:
        await push.room_changed(rooms.store, rooms.pusher, room, "state")
    return out(room, member)


# Attempts of a change written only on the room as it was read (its ``version``): each
# lost race reads the room again; then ``conflict``.
CHANGE_TRIES = 8


def changed_meanwhile() -> ApiError:
    return ApiError(ErrorCode.CONFLICT, "The room changed meanwhile; try again.")


async def set_state(rooms: Rooms, room: Doc, state: str, actor: str) -> bool:
    """Close or open a room, announced; True if this changed it, False if it was in
    ``state`` already.

    Written only on the room as read (its ``version``), the version taken in the same
    write, and the event holds that version: so events' versions follow the order the
    writes landed in, and the highest says how the room is. A lost race reads the room
    again (``room`` may be stale) and decides again. Before 2026-12-07 the version was
    raised before an unconditional write: a close read while the room was open and
    written last left it closed under an ``open`` event of a higher version."""
    room_id, store = room["_id"], rooms.store
    current: Doc | None = room
    for _ in range(CHANGE_TRIES):
        if current is None or deleted(current):
            raise not_found()
        if current["state"] == state:
            return False
        version = int(current.get("version", 0)) + 1
        held = await rooms.events.hold(
            e.RoomStateChanged(
                room_id=room_id, kind=current["kind"], version=version, actor=actor,
                at=now_ms(), state=state,  # type: ignore[arg-type]
            ),
            Check("rooms", {"_id": room_id, "state": state, "state_version": version}),
        )  # fmt: skip
        if await store.change_room(current, {"state": state, "state_version": version}):
            await rooms.events.release(held)
            log.info("room state changed", extra={"room_id": room_id, "state": state})
            return True
        await rooms.events.drop(held)
        current = await store.get_room(room_id)
    raise changed_meanwhile()


async def mine(rooms: Rooms, user_id: str, before: int | None, limit: int) -> models.RoomList:
    """The caller's rooms, the most recently joined first."""
    store = rooms.store
    total = int((await store.get_user(user_id)).get("r", 0))
    found: list[tuple[Doc, Doc]] = []
    cursor = total if before is None else min(before - 1, total)
    # Windows of at least LIST_WINDOW slots, not of what the page still lacks: a list's
    # slots are never reused, so one that many rooms were left (declined, deleted) is
    # mostly holes, and a page one room short read them one slot, one round trip, at a time.
    window = max(limit, LIST_WINDOW)
    while cursor >= 1 and len(found) < limit:
        ns = list(range(cursor, max(cursor - window, 0), -1))
        cursor -= len(ns)
        window = min(window * 2, LIST_WINDOW_MAX)  # a long run of holes: fewer trips
        entries = await store.list_entries(user_id, "r", ns)  # newest first
        members = await store.memberships(user_id, [str(x["room"]) for x in entries])
        live = [
            (m, slot) for x in entries if (m := members.get(str(x["room"]))) is not None
            and int(m["user_slot"]) == (slot := slot_of(x))
        ]  # fmt: skip
        docs = await store.get_rooms([str(m["room"]) for m, _ in live])
        for m, slot in live:
            if m["room"] in docs and not deleted(docs[m["room"]]):
                found.append((docs[m["room"]], m))
                if len(found) == limit:
                    cursor = slot - 1  # the next page starts below it
                    break
    return models.RoomList(
        rooms=[out(r, m) for r, m in found], next_before=cursor + 1 if cursor >= 1 else None
    )


async def lookup(rooms: Rooms, user_id: str, room_ids: list[str]) -> models.RoomLookupResult:
    """The rooms of ``room_ids`` the caller is a member of, as :func:`get` shows them (two
    ``$in`` reads, whatever their number: delivery reads many rooms' logs at once with
    it). A room the caller is not in (invited only, left, never, no such room, deleted)
    is left out, as ``get`` would refuse it."""
    store = rooms.store
    members = await store.memberships(user_id, dict.fromkeys(room_ids))
    docs = await store.get_rooms(list(members))
    return models.RoomLookupResult(
        rooms=[out(docs[r], m) for r, m in members.items() if r in docs and not deleted(docs[r])]
    )


# Rounds of directory entries read for one page before a shorter page is answered: an
# entry that is not listed (stale: see :func:`_listable`) is deleted when a page meets it,
# so a run of them costs one page a few more reads, once.
DIRECTORY_ROUNDS = 4


def _listable(room: Doc | None, entry: Doc) -> bool:
    """Is ``entry`` the directory listing of ``room`` now? Only while the room is public
    and not deleted, under its current name: an entry a rename wrote while an admin made
    the room private, one a switch or a rename cut short left, or one of a deleted room
    is stale."""
    return (
        room is not None and not deleted(room) and room["kind"] == PUBLIC
        and (room.get("name_key") or text.name_key(room["name"])) == entry.get("name_key")
    )  # fmt: skip


async def sync_directory(rooms: Rooms, room_id: str, key: str) -> None:
    """Read the room again after a write that changes its listing (a rename, a switch of
    kind) and make the entry of ``key`` agree: there if the room is public under that name
    now, gone otherwise. Both sides of a race read after their own write, so one of
    them sees the other's: a rename meeting a switch to private leaves no entry of the
    private room (before, the rename's entry stayed, and its id and name leaked through
    the page's ``next_after``)."""
    store = rooms.store
    room = await store.get_room(room_id)
    if room is not None and _listable(room, {"name_key": key}):
        await store.add_to_directory(key, room_id, room["name"])
    else:
        await store.remove_from_directory(key, room_id)


async def directory(
    rooms: Rooms, query: str | None, after: str, limit: int
) -> models.DirectoryPage:
    """Public rooms in name order; ``query``: a case-insensitive part of the name.

    ``next_after`` is the id of the last entry *listed* (never of one the filter left
    out: its id holds the name and id of a room that may be private now), and each stale
    entry met is deleted (:func:`_forget_stale`), so the next page does not meet it."""
    pattern = None
    if query is not None and (key := text.name_key(query)):
        pattern = re.escape(key)
    store = rooms.store
    limit = min(limit, PAGE_MAX)
    listed: list[models.DirectoryEntry] = []
    last = after  # the last entry listed (or the caller's cursor)
    cursor = after  # the last entry read
    more = True
    for _ in range(DIRECTORY_ROUNDS):
        want = limit - len(listed)
        entries = await store.search_directory(pattern, cursor, want + 1)
        docs = await store.get_rooms([str(x["room_id"]) for x in entries])
        stale: list[tuple[Doc, str]] = []
        full = False
        for x in entries:
            r = docs.get(str(x["room_id"]))
            if r is None or not _listable(r, x):
                stale.append((x, str(x["room_id"])))
                continue
            if len(listed) == limit:
                full = True  # one more is listed after this page
                break
            listed.append(
                models.DirectoryEntry(
                    room_id=r["_id"], name=r["name"], topic=r.get("topic", ""),
                    members=max(int(r.get("members", 0)), 0), state=r["state"],
                )
            )  # fmt: skip
            last = str(x["_id"])
        await _forget_stale(rooms, stale)
        if full:
            break
        if len(entries) <= want:
            more = False  # read to the end
            break
        cursor = str(entries[-1]["_id"])
    return models.DirectoryPage(rooms=listed, next_after=last if more else None)


async def _forget_stale(rooms: Rooms, stale: list[tuple[Doc, str]]) -> None:
    """Delete directory entries the listing left out, each unless its room is listed
    under it again once it is gone (read after the delete: a rename or a switch to
    public writing it meanwhile reads after its own write too, :func:`sync_directory`)."""
    store = rooms.store
    for entry, room_id in stale:
        key = str(entry.get("name_key", ""))
        await store.remove_directory_entry(str(entry["_id"]))
        room = await store.get_room(room_id)
        if room is not None and _listable(room, entry):
            await store.add_to_directory(key, room_id, room["name"])
        log.info("stale directory entry deleted", extra={"room_id": room_id})
