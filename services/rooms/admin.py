"""Admins over rooms: list and search every room, view one and its members, close and
reopen, switch public ↔ private, remove a member, delete; and over public rooms'
messages: post as the room's moderator, edit, remove, read every revision
(docs/moderation.md).

Only callers whose token carries the ``admin`` role get here (the route decorator
checks ``role="admin"``). Admins see private rooms' **metadata** only: the server
holds no readable message of theirs. Every action, reads included, is written once
to the shared audit log (services.common.audit), after it succeeded: a refused
request changes nothing and writes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Any

from parley_contract import envelopes as e

from services.common.audit import Actor, Entry
from services.common.auth import Claims
from services.common.errors import ApiError, ErrorCode
from services.rooms import members, models, moderation, push, text, timeline
from services.rooms.config import MEMBERS_PAGE_MAX, PAGE_MAX
from services.rooms.events import Check
from services.rooms.rooms import (
    CHANGE_TRIES,
    PRIVATE,
    PUBLIC,
    changed_meanwhile,
    deleted,
    not_found,
    set_state,
    sync_directory,
)
from services.rooms.state import Rooms
from services.rooms.store import Doc, now_ms

log = logging.getLogger(__name__)


def _actor(claims: Claims) -> Actor:
    return Actor(claims.user_id, "admin")


async def _audit(
    rooms: Rooms, claims: Claims, ip: str | None, action: str, target_id: str | None,
    *, target_type: str = "room", before: Doc | None = None, after: Doc | None = None,
    **details: Any,
) -> None:  # fmt: skip
    await rooms.audit.record(
        Entry(
            actor=_actor(claims), action=action, target_type=target_type if target_id else None,
            target_id=target_id, details=details, before=before, after=after, ip=ip,
        )
    )  # fmt: skip


def view(room: Doc) -> models.AdminRoom:
    at = room.get("deleted_at")
    return models.AdminRoom(
        room_id=room["_id"], name=room["name"], topic=room.get("topic", ""), kind=room["kind"],
        state=room["state"], owner=room.get("owner"), members=max(int(room.get("members", 0)), 0),
        created_at=int(room["created_at"]), created_by=room.get("created_by"),
        version=int(room.get("version", 1)), messages=int(room.get("seq", 0)),
        deleted_at=None if at is None else int(at),
    )  # fmt: skip


async def _room(rooms: Rooms, room_id: str, *, live: bool = True) -> Doc:
    """The room (404 ``room_not_found``); ``live``: not deleted either."""
    room = await rooms.store.get_room(room_id)
    if room is None or (live and deleted(room)):
        raise not_found()
    return room


async def _member(rooms: Rooms, room_id: str, user_id: str) -> Doc:
    """The member ``user_id`` of the room (404 ``user_not_found``)."""
    member = await rooms.store.get_member(room_id, user_id)
    if member is None:
        raise ApiError(
            ErrorCode.USER_NOT_FOUND, "That user is not a member of this room.",
            details={"user_id": user_id},
        )  # fmt: skip
    return member


def _unchanged(what: str) -> ApiError:
    return ApiError(ErrorCode.CONFLICT, f"The room is {what} already: nothing to change.")


async def _tell(rooms: Rooms, room: Doc, change: str, also: tuple[str, ...] = (),
                user_id: str | None = None, role: str | None = None) -> None:  # fmt: skip
    """A ``room_changed`` frame to the room's connected members (best effort)."""
    await push.room_changed(rooms.store, rooms.pusher, room, change, also, user_id, role)


# -- rooms ----------------------------------------------------------------------------------


async def list_rooms(
    rooms: Rooms, claims: Claims, ip: str | None, q: str | None, kind: str | None,
    state: str | None, cursor: str, limit: int,
) -> models.AdminRoomPage:  # fmt: skip
    """Every room, private ones included (metadata), in id order; ``q`` a part of the
    name, any case."""
    query: Doc = {}
    if q is not None and (key := text.name_key(q)):
        query["name_key"] = {"$regex": re.escape(key)}
    if kind is not None:
        query["kind"] = kind
    if state is not None:
        query["state"] = state
    limit = min(limit, PAGE_MAX)
    docs = await rooms.store.all_rooms(query, cursor, limit + 1)
    more = len(docs) > limit
    docs = docs[:limit]
    await _audit(rooms, claims, ip, "room.list", None, q=q, kind=kind, state=state, cursor=cursor)
    return models.AdminRoomPage(
        rooms=[view(d) for d in docs], next_cursor=str(docs[-1]["_id"]) if more else None
    )


async def get_room(rooms: Rooms, claims: Claims, ip: str | None, room_id: str) -> models.AdminRoom:
    room = await _room(rooms, room_id, live=False)
    await _audit(rooms, claims, ip, "room.view", room_id)
    return view(room)


async def room_members(
    rooms: Rooms, claims: Claims, ip: str | None, room_id: str, after: int, limit: int
) -> models.MemberPage:
    room = await _room(rooms, room_id, live=False)
    page = await members.member_page(rooms, room, after, min(limit, MEMBERS_PAGE_MAX))
    await _audit(rooms, claims, ip, "room.members", room_id, page_after=after)
    return page


def _why(reason: str | None) -> dict[str, str]:
    """The admin's reason, for the audit entry's details (none given: no field)."""
    return {"reason": reason} if reason else {}


async def set_room_state(
    rooms: Rooms, claims: Claims, ip: str | None, room_id: str, state: str,
    reason: str | None = None,
) -> models.AdminRoom:  # fmt: skip
    """Close (``closed``) or reopen (``open``) a room."""
    room = await _room(rooms, room_id)
    if room["state"] == state or not await set_state(rooms, room, state, claims.user_id):
        raise _unchanged(state)
    room = await _room(rooms, room_id)
    action = "room.close" if state == "closed" else "room.reopen"
    await _audit(rooms, claims, ip, action, room_id, before={"state": "closed" if state == "open"
                 else "open"}, after={"state": state}, **_why(reason))  # fmt: skip
    await _tell(rooms, room, "state")
    return view(room)


async def set_kind(
    rooms: Rooms, claims: Claims, ip: str | None, room_id: str, kind: str,
    reason: str | None = None,
) -> models.AdminRoom:  # fmt: skip
    """Public → private: end-to-end encrypted from now on (no new posts over HTTP; the
    public timeline so far stays, readable by members only; out of the directory).
    Private → public: posts over HTTP from now on, listed in the directory; past
    ciphertext stays ciphertext (the server never had its keys)."""
    room = await _room(rooms, room_id)
    previous = str(room["kind"])
    if previous == kind:
        raise _unchanged(kind)
    store = rooms.store
    # Written only on the room as read (its ``version``), the version taken in the same
    # write (as rooms.set_state): a lost race reads the room again.
    switched: Doc | None = None
    for _ in range(CHANGE_TRIES):
        version = int(room.get("version", 0)) + 1
        held = await rooms.events.hold(
            e.RoomKindChanged(
                room_id=room_id, kind=kind, version=version,  # type: ignore[arg-type]
                actor=claims.user_id, at=now_ms(), previous=previous,  # type: ignore[arg-type]
            ),
            Check("rooms", {"_id": room_id, "kind": kind, "kind_version": version}),
        )  # fmt: skip
        # The directory first, then the kind: the directory lists a room only while it
        # is public (rooms.directory), so a switch cut short in between never lists a
        # private room, nor leaves a public one unlisted for good (the room is read
        # again below, and the switch can be made again).
        key = room.get("name_key") or text.name_key(room["name"])
        if kind == PUBLIC:
            await store.add_to_directory(key, room_id, room["name"])
        else:
            await store.remove_from_directory(key, room_id)
        fields = {"kind": kind, "kind_changed_at": now_ms(), "kind_version": version}
        switched = await store.change_room(room, fields)
        if switched is not None:
            break
        await rooms.events.drop(held)
        room = await _room(rooms, room_id)
        if str(room["kind"]) == kind:
            break  # another admin switched it meanwhile
        previous = str(room["kind"])
    # Then the room read again, its entry made to agree: a rename meanwhile (read as
    # public, its new entry written after the one above was taken out) re-reads the
    # room after its own writes too, so one of the two takes the new entry out
    # (rooms.sync_directory); and a switch to public lists the name the room has now.
    now = await _room(rooms, room_id, live=False)
    await sync_directory(rooms, room_id, now.get("name_key") or text.name_key(now["name"]))
    if switched is None:
        if str(now["kind"]) == kind:
            raise _unchanged(kind)
        raise changed_meanwhile()
    await rooms.events.release(held)
    room = await _room(rooms, room_id)
    await _audit(rooms, claims, ip, "room.kind", room_id, before={"kind": previous},
                 after={"kind": kind}, **_why(reason))  # fmt: skip
    log.info("room kind changed", extra={"room_id": room_id, "kind": kind})
    await _tell(rooms, room, "kind")
    return view(room)


async def remove(
    rooms: Rooms, claims: Claims, ip: str | None, room_id: str, user_id: str,
    reason: str | None = None,
) -> None:  # fmt: skip
    """Remove any member, the owner included (the room then has no owner: admins and
    moderators manage it; docs/moderation.md)."""
    room = await _room(rooms, room_id)
    victim = await _member(rooms, room_id, user_id)
    store = rooms.store
    # Deleted only in the role read, read again if it changed (a hand-over made them the
    # owner, or they handed the room on): the audit says the role removed.
    for _ in range(8):
        role = (str(victim["role"]),)
        if await members.remove_member(rooms, room, victim, claims.user_id, True, role):
            break
        now = await store.get_member(room_id, user_id)
        if now is None or int(now["slot"]) != int(victim["slot"]):
            break  # ended meanwhile (left, removed)
        victim = now
    else:
        raise ApiError(ErrorCode.CONFLICT, "The member's role changed meanwhile; try again.")
    # No owner, if ``owner`` names them (an owner, or one handing the room on: the
    # hand-over reads the membership after its own ``owner`` write, and clears it too).
    await store.clear_owner(room_id, user_id)
    room = await _room(rooms, room_id)
    await _audit(rooms, claims, ip, "room.remove_member", room_id,
                 before={"user_id": user_id, "role": victim["role"]}, after=None,
                 **_why(reason))  # fmt: skip
    await _tell(rooms, room, "member_removed", also=(user_id,), user_id=user_id)


async def set_owner(
    rooms: Rooms, claims: Claims, ip: str | None, room_id: str, user_id: str,
    reason: str | None = None,
) -> models.AdminRoom:  # fmt: skip
    """Make a member the room's owner: a room whose owner an admin removed, or left
    without one by a hand-over cut short (docs/rooms.md, "Roles"), or whose owner is
    gone. The owner there was, if any, becomes a moderator.

    Recorded as a hand-over is (the ``handovers`` record): no member's hand-over runs
    meanwhile, and one under way (recorded less than ``outbox_lease_s`` ago) is waited
    for (``conflict``), where both went through and left two owners. An older record is
    a hand-over cut short: the admin's choice takes its place."""
    room = await _room(rooms, room_id)
    target = await _member(rooms, room_id, user_id)
    if target["role"] == "owner":
        raise _unchanged("owned by that member")
    store = rooms.store
    at = now_ms()
    stale = at - int(rooms.config.outbox_lease_s * 1000)
    claimed_from = room.get("owner") or ""
    if not await store.claim_handover(room_id, claimed_from, user_id, at, stale):
        raise ApiError(
            ErrorCode.CONFLICT, "The room's owner is handing it over; try again in a moment."
        )
    try:
        # Read again under the record: a hand-over that ended just before it changed them.
        room = await _room(rooms, room_id)
        target = await _member(rooms, room_id, user_id)
        if target["role"] == "owner":
            raise _unchanged("owned by that member")
        before = room.get("owner")
        if (before or "") != claimed_from:  # for finish_handovers, should this be cut short
            await store.set_handover_from(room_id, before or "")
        previous = await store.get_member(room_id, before) if before else None
        stepped_down = False
        if previous is not None and previous["role"] == "owner":
            try:
                await members.set_role(rooms, room, previous, "moderator", claims.user_id,
                                       was="owner")  # fmt: skip
                stepped_down = True
            except ApiError:
                pass  # removed meanwhile: no owner to step down
        try:
            await members.set_role(rooms, room, target, "owner", claims.user_id,
                                   was=str(target["role"]))  # fmt: skip
        except ApiError as exc:
            if previous is not None and stepped_down:  # the owner there was stays on
                # As it is now: the step-down wrote its role_v, and a role change is
                # written only on the membership as read (the one from before was
                # refused, silently, and the room was left with no owner).
                now = await store.get_member(room_id, previous["user"])
                if now is not None and now["role"] == "moderator":
                    fresh = await _room(rooms, room_id)
                    with contextlib.suppress(ApiError):
                        await members.set_role(
                            rooms, fresh, now, "owner", claims.user_id, was="moderator"
                        )
            if exc.code == ErrorCode.FORBIDDEN:  # its role changed since it was read
                raise ApiError(
                    ErrorCode.CONFLICT, "The member's role changed meanwhile; try again."
                ) from exc
            raise
        await store.set_room(room_id, {"owner": user_id})
    except ApiError:
        await store.end_handover(room_id)
        raise
    await store.end_handover(room_id)
    room = await _room(rooms, room_id)
    await _audit(rooms, claims, ip, "room.owner", room_id, before={"owner": before},
                 after={"owner": user_id}, **_why(reason))  # fmt: skip
    await _tell(rooms, room, "role", also=(user_id,), user_id=user_id, role="owner")
    return view(room)


async def delete(
    rooms: Rooms, claims: Claims, ip: str | None, room_id: str, reason: str | None = None
) -> None:
    """Delete a room: it answers ``room_not_found`` to everyone from now on. Its records
    (members, public timeline and revisions) stay for admins and the audit trail."""
    room = await _room(rooms, room_id)
    store = rooms.store
    bumped = await store.bump_room(room_id, version=1)
    at = now_ms()
    held = await rooms.events.hold(
        e.RoomDeleted(
            room_id=room_id, kind=bumped["kind"], version=int(bumped["version"]),
            actor=claims.user_id, at=at,
        ),
        Check("rooms", {"_id": room_id, "deleted_at": at}),
    )  # fmt: skip
    await store.set_room(room_id, {"deleted_at": at})
    if room["kind"] == PUBLIC:
        await store.remove_from_directory(room.get("name_key") or text.name_key(room["name"]),
                                          room_id)  # fmt: skip
    await rooms.events.release(held)
    await _audit(rooms, claims, ip, "room.delete", room_id,
                 before={"name": room["name"], "kind": room["kind"], "state": room["state"],
                         "members": int(room.get("members", 0))},
                 after={"deleted_at": at}, **_why(reason))  # fmt: skip
    log.info("room deleted", extra={"room_id": room_id})
    await _tell(rooms, {**bumped, "deleted_at": at}, "deleted")


# -- messages of public rooms ---------------------------------------------------------------


async def _timeline_room(rooms: Rooms, room_id: str, *, live: bool = True) -> Doc:
    room = await _room(rooms, room_id, live=live)
    if room["kind"] == PRIVATE and not int(room.get("seq", 0)):
        raise ApiError(
            ErrorCode.FORBIDDEN,
            "Private rooms are end-to-end encrypted: the server holds no message to moderate.",
        )
    return room


async def post(
    rooms: Rooms, claims: Claims, ip: str | None, token: str, room_id: str,
    body: models.MessageIn,
) -> models.PostResult:  # fmt: skip
    """Post as the room's moderator (sender ``moderator``): public rooms, closed ones too."""
    room = await _room(rooms, room_id)
    if room["kind"] == PRIVATE:
        raise ApiError(
            ErrorCode.FORBIDDEN, "Private rooms are end-to-end encrypted: an admin cannot post."
        )
    return await timeline.store_post(
        rooms, room, timeline.MODERATOR, claims.user_id, token, body, "admin", ip
    )


async def change(
    rooms: Rooms, claims: Claims, ip: str | None, token: str, room_id: str, seq: int,
    action: str, new_text: str | None, reason: str | None,
) -> models.RoomMessage:  # fmt: skip
    """Edit, remove or restore any message of a room's timeline (audited by
    moderation.apply). A deleted room's messages are kept (for admins): an admin still
    removes one (its text then leaves what reads the message, the notifier's digests
    included; until 2026-12-08 this was ``room_not_found``), but edits and restores
    nothing there (``room_not_found``): nobody is to read that room's text again."""
    room = await _timeline_room(rooms, room_id, live=action != moderation.REMOVE)
    doc = await moderation.message_of(rooms, room_id, seq)
    return await moderation.apply(
        rooms, room, doc,
        moderation.Change(action, claims.user_id, "admin", new_text, reason, ip), token,
    )  # fmt: skip


async def revisions(
    rooms: Rooms, claims: Claims, ip: str | None, room_id: str, seq: int
) -> models.RevisionHistory:
    room = await _timeline_room(rooms, room_id, live=False)
    out = await moderation.history(rooms, room, seq)
    await _audit(rooms, claims, ip, "message.revisions", f"{room_id}/{seq}",
                 target_type="message", room_id=room_id, seq=seq)  # fmt: skip
    return out
