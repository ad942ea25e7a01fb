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
from services.rooms.config import PAGE_MAX
from services.rooms.events import Check
from services.rooms.state import Rooms
from services.rooms.store import Doc, member_id, now_ms

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
    name = text.clean(body.name, "name", required=True)
    topic = text.clean(body.topic, "topic", required=False)
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
        fields["topic"] = text.clean(body.topic, "topic", required=False)
    old_key = room.get("name_key") or text.name_key(room["name"])
    if body.name is not None:
        name = text.clean(body.name, "name", required=True)
        fields.update(name=name, name_key=text.name_key(name))
    public = room["kind"] == PUBLIC
    if public and "name" in fields:
        # The directory's new entry first, the old one last: a crash in between
        # leaves an entry that no longer matches the room's name_key (not listed).
        await rooms.store.add_to_directory(fields["name_key"], room_id, fields["name"])
    if fields:
        await rooms.store.set_room(room_id, fields)
    if public and "name" in fields and fields["name_key"] != old_key:
        await rooms.store.remove_from_directory(old_key, room_id)
    changed_state = body.state is not None and body.state != room["state"]
    if changed_state:
        await set_state(rooms, room, str(body.state), user_id)
    renamed = fields.get("name", room["name"]) != room["name"]
    retopiced = fields.get("topic", room.get("topic", "")) != room.get("topic", "")
    room = await rooms.store.get_room(room_id) or room
    # Members see it at once (the web client reads the room again; the CLI says it).
    if renamed or retopiced:
        await push.room_changed(rooms.store, rooms.pusher, room, "settings", user_id=user_id)
    if changed_state:
        await push.room_changed(rooms.store, rooms.pusher, room, "state")
    return out(room, member)


async def set_state(rooms: Rooms, room: Doc, state: str, actor: str, **more: Any) -> None:
    """Close or open a room (with ``more`` fields set in the same write), announced."""
    room_id = room["_id"]
    bumped = await rooms.store.bump_room(room_id, version=1)
    held = await rooms.events.hold(
        e.RoomStateChanged(
            room_id=room_id, kind=room["kind"], version=int(bumped["version"]), actor=actor,
            at=now_ms(), state=state,  # type: ignore[arg-type]
        ),
        Check("rooms", {"_id": room_id, "state": state}),
    )  # fmt: skip
    await rooms.store.set_room(room_id, {"state": state, **more})
    await rooms.events.release(held)
    log.info("room state changed", extra={"room_id": room_id, "state": state})


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
            and int(m["user_slot"]) == (slot := int(str(x["_id"]).rsplit("|", 1)[1]))
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


async def directory(
    rooms: Rooms, query: str | None, after: str, limit: int
) -> models.DirectoryPage:
    """Public rooms in name order; ``query``: a case-insensitive part of the name."""
    pattern = None
    if query is not None and (key := text.name_key(query)):
        pattern = re.escape(key)
    entries = await rooms.store.search_directory(pattern, after, min(limit, PAGE_MAX) + 1)
    more = len(entries) > limit
    entries = entries[:limit]
    docs = await rooms.store.get_rooms([str(x["room_id"]) for x in entries])
    listed = [
        models.DirectoryEntry(
            room_id=r["_id"], name=r["name"], topic=r.get("topic", ""),
            members=max(int(r.get("members", 0)), 0), state=r["state"],
        )
        for x in entries
        if (r := docs.get(str(x["room_id"]))) is not None and not deleted(r)
        # Public rooms only: an entry a rename wrote while an admin made the room
        # private (or a switch cut short) is not its listing.
        and r["kind"] == PUBLIC
        # An entry a rename left behind (renamed, or renamed while crashing) is stale.
        and (r.get("name_key") or text.name_key(r["name"])) == x.get("name_key")
    ]  # fmt: skip
    return models.DirectoryPage(
        rooms=listed, next_after=str(entries[-1]["_id"]) if more and entries else None
    )
