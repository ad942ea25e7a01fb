"""Membership: join, invite, accept, decline, leave, remove, ban, roles (docs/rooms.md).

Every change is one event on ``<prefix>rooms`` (services.rooms.events), held
in the outbox before the write that makes it. The write that commits a join
is the insert of the member document (``"<room>|<user>"``, unique), so two
concurrent joins of one user make one membership and one event; a leave or a
removal deletes exactly the membership it read (its ``slot``), so a member
who left and joined again is not removed by a late duplicate.

A ban is written before the membership it ends is removed, and a join (or an
acceptance) reads the bans again after its own write: of a ban and a join at
once, one of them sees the other, and the banned user is not left a member.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from parley_contract import envelopes as e

from services.common.errors import ApiError, ErrorCode
from services.rooms import models, push
from services.rooms.config import MEMBERS_PAGE_MAX
from services.rooms.events import Check
from services.rooms.rooms import (
    CHANGE_TRIES,
    LIST_WINDOW_MAX,
    PRIVATE,
    changed_meanwhile,
    deleted,
    forbidden,
    member_of,
    out,
    require_open,
    set_state,
    visible,
)
from services.rooms.state import Rooms
from services.rooms.store import Doc, member_id, now_ms, slot_of

log = logging.getLogger(__name__)

# The fewest roster entries a member page reads at once when it lacks few (entries that
# do not count, which it reads past, come in runs only after crashes).
_LOOK_AHEAD = 16


def membership(member: Doc) -> models.Membership:
    return models.Membership(
        room_id=member["room"], user_id=member["user"], role=member["role"],
        joined_at=int(member["joined_at"]),
    )  # fmt: skip


def _no_member(user_id: str) -> ApiError:
    return ApiError(
        ErrorCode.USER_NOT_FOUND, "That user is not a member of this room.",
        details={"user_id": user_id},
    )  # fmt: skip


def _self() -> ApiError:
    return ApiError(ErrorCode.CANNOT_TARGET_SELF, "You cannot do this to yourself.")


async def _add(rooms: Rooms, room: Doc, user_id: str, via: str) -> tuple[Doc, bool]:
    """Make ``user_id`` a member: the membership, and whether this call made it
    (idempotent: an existing membership, one a concurrent join of the same user made
    included, is returned, with False)."""
    store = rooms.store
    room_id = room["_id"]
    existing = await store.get_member(room_id, user_id)
    if existing is not None:
        return existing, False
    if int(room.get("members", 0)) >= rooms.config.max_members:
        raise ApiError(
            ErrorCode.ROOM_FULL, f"A room has at most {rooms.config.max_members} members.",
            details={"max": rooms.config.max_members},
        )  # fmt: skip
    bumped = await store.bump_room(room_id, version=1, slots=1, members=1)
    slot = int(bumped["slots"])
    n: int | None = None
    try:
        n = await store.bump_user(user_id, "r")
        await store.add_roster(room_id, slot, user_id)
        await store.add_to_list(user_id, "r", n, room_id)
        now = now_ms()
        doc: Doc = {
            "_id": member_id(room_id, user_id), "room": room_id, "user": user_id,
            "role": "member", "slot": slot, "user_slot": n, "joined_at": now,
        }  # fmt: skip
        held = await rooms.events.hold(
            e.MemberJoined(
                room_id=room_id, kind=bumped["kind"], version=int(bumped["version"]),
                actor=user_id, at=now, user_id=user_id, role="member",
                via=via,  # type: ignore[arg-type]
            ),
            Check("members", {"_id": doc["_id"], "slot": slot}),
        )  # fmt: skip
        inserted = await store.insert_member(doc)
    except BaseException:
        # Counted, never a member: the count goes back (else a lone owner could never
        # leave), unless the membership was written after all.
        await _uncount(rooms, room_id, user_id, slot, n)
        raise
    if not inserted:
        # A concurrent join of the same user won: undo this one's traces.
        await rooms.events.drop(held)
        await store.bump_room(room_id, members=-1)
        await store.forget_slots(room_id, user_id, slot, "r", n)
        winner = await store.get_member(room_id, user_id)
        if winner is None:  # it left again at once
            raise _no_member(user_id)
        return winner, False
    await rooms.events.release(held)
    log.info("member joined", extra={"room_id": room_id, "via": via})
    return doc, True


async def _uncount(rooms: Rooms, room_id: str, user_id: str, slot: int, n: int | None) -> None:
    """Undo the count (and the slots) of a join that failed before its membership."""
    store = rooms.store
    try:
        mine = await store.get_member(room_id, user_id)
        if mine is None or int(mine["slot"]) != slot:
            await store.bump_room(room_id, members=-1)
            await store.forget_slots(room_id, user_id, slot, "r", n)
    except Exception:
        log.warning("a failed join's count not undone", extra={"room_id": room_id})


def _banned() -> ApiError:
    return ApiError(ErrorCode.BANNED, "You are banned from this room.")


async def _admit(rooms: Rooms, room: Doc, user_id: str, via: str) -> Doc:
    """:func:`_add`, unless ``user_id`` is banned or the room closed: checked before,
    and again after the write (a ban written meanwhile found no member to remove, a
    close, the last owner leaving above all, saw no member but them: this undoes the
    join).

    Only a membership this call made is undone: one that another join of the same user
    (a double click, a second device) made and was answered for is that join's to check,
    and is answered here as it is. Before 2026-12-07 the second of two joins racing a
    close undid the membership the first had made, and answered, before the close."""
    store = rooms.store
    room_id = room["_id"]
    if await store.get_ban(room_id, user_id) is not None:
        raise _banned()
    doc, made = await _add(rooms, room, user_id, via)
    if not made:
        # The other join checks the ban and the state after its own write, and withdraws
        # the invitation; a ban written since reads the membership and ends it itself.
        return doc
    ban = await store.get_ban(room_id, user_id)
    if ban is not None:
        await _undo(rooms, room, doc, str(ban["by"]), removed=True)
        raise _banned()
    now = await store.get_room(room_id)
    if now is not None and now["state"] != "open":
        await _undo(rooms, room, doc, user_id, removed=False, withdraw=False)
        # The last member's leave that closed it may have seen this join and opened it
        # again before this undo: read after it, a room left open with nobody in it
        # closes (as the end of a leave does).
        await _close_if_empty(rooms, room_id, user_id)
        require_open(now)
    # A member holds no invitation, however they joined: one left behind would bring
    # them back to a private room after a removal. Withdrawn after the membership is
    # written, as an invitation reads the membership after it is written (invite).
    await _withdraw(rooms, room_id, user_id)
    return doc


async def _undo(
    rooms: Rooms, room: Doc, member: Doc, actor: str, removed: bool, withdraw: bool = True
) -> None:
    """End the membership a join just made, whatever its role became meanwhile (read
    again if it changed)."""
    for _ in range(CHANGE_TRIES):
        if await remove_member(rooms, room, member, actor, removed, withdraw=withdraw):
            return
        now = await rooms.store.get_member(room["_id"], member["user"])
        if now is None or int(now["slot"]) != int(member["slot"]):
            return  # ended meanwhile
        member = now
    raise changed_meanwhile()


async def _withdraw(rooms: Rooms, room_id: str, user_id: str) -> None:
    """Withdraw ``user_id``'s invitation to the room, if any (told by no event: the
    join, leave or removal that goes with it is)."""
    gone = await rooms.store.delete_invitation(room_id, user_id)
    if gone is not None:
        await rooms.store.forget_slots(room_id, user_id, None, "i", int(gone["user_slot"]))


async def join(rooms: Rooms, user_id: str, room_id: str) -> models.Membership:
    room, member, invitation = await visible(rooms, room_id, user_id)
    if member is not None:
        return membership(member)
    if room["kind"] == PRIVATE:
        assert invitation is not None  # visible() answered 404 otherwise
        return await accept(rooms, user_id, room_id)
    require_open(room)
    # Counted before anything is written (the one past the limit changes nothing):
    # every join hands out a roster slot for good, and a join and leave a few dozen
    # milliseconds apart, without end, grew the room's past without a limit. A member
    # joining again is answered above and not counted; an acceptance needs a member's
    # invitation, and is not counted either.
    await rooms.limiter.hit("join", user_id, rooms.config.join_limit)
    return membership(await _admit(rooms, room, user_id, "join"))


async def accept(rooms: Rooms, user_id: str, room_id: str) -> models.Membership:
    room, member, invitation = await visible(rooms, room_id, user_id)
    if member is not None:
        await _withdraw(rooms, room_id, user_id)
        return membership(member)
    if invitation is None:
        raise ApiError(ErrorCode.INVITATION_NOT_FOUND, "You have no invitation to this room.")
    require_open(room)
    return membership(await _admit(rooms, room, user_id, "invitation"))


async def decline(rooms: Rooms, user_id: str, room_id: str) -> None:
    _, _, invitation = await visible(rooms, room_id, user_id)
    if invitation is None:
        raise ApiError(ErrorCode.INVITATION_NOT_FOUND, "You have no invitation to this room.")
    store = rooms.store
    bumped = await store.bump_room(room_id, version=1)
    held = await rooms.events.hold(
        e.InvitationDeclined(
            room_id=room_id, kind=bumped["kind"], version=int(bumped["version"]), actor=user_id,
            at=now_ms(), user_id=user_id,
        ),
        Check("invitations", {"_id": member_id(room_id, user_id)}, exists=False),
    )  # fmt: skip
    gone = await store.delete_invitation(room_id, user_id)
    if gone is None:
        await rooms.events.drop(held)  # declined concurrently
        return
    await store.forget_slots(room_id, user_id, None, "i", int(gone["user_slot"]))
    await rooms.events.release(held)


async def invite(
    rooms: Rooms, user_id: str, token: str, room_id: str, body: models.InviteIn
) -> models.Invitation:
    room, member, _ = await visible(rooms, room_id, user_id)
    member_of(member)
    require_open(room)
    target = await rooms.users.resolve(body.user, token)
    if target is None:
        raise ApiError(ErrorCode.USER_NOT_FOUND, "No such user.", details={"user": body.user})
    if target == user_id:
        raise _self()
    store = rooms.store
    if await store.get_member(room_id, target) is not None:
        raise _already_member()
    if await store.get_ban(room_id, target) is not None:
        raise _banned_target()
    existing = await store.get_invitation(room_id, target)
    if existing is not None:
        return _invitation(existing)
    # Counted before anything is written (the one past the limit changes nothing): each
    # invitation takes a slot of the invitee's list for good, and an owner inviting,
    # banning and lifting the ban of one user in a loop grew their list without end.
    # The same invitation again is answered above and not counted.
    await rooms.limiter.hit("invite", user_id, rooms.config.invite_limit)
    bumped = await store.bump_room(room_id, version=1)
    n = await store.bump_user(target, "i")
    await store.add_to_list(target, "i", n, room_id)
    now = now_ms()
    doc: Doc = {
        "_id": member_id(room_id, target), "room": room_id, "user": target, "by": user_id,
        "at": now, "user_slot": n,
    }  # fmt: skip
    held = await rooms.events.hold(
        e.MemberInvited(
            room_id=room_id, kind=bumped["kind"], version=int(bumped["version"]), actor=user_id,
            at=now, user_id=target,
        ),
        Check("invitations", {"_id": doc["_id"], "user_slot": n}),
    )  # fmt: skip
    if not await store.insert_invitation(doc):
        await rooms.events.drop(held)
        await store.forget_slots(room_id, target, None, "i", n)
        winner = await store.get_invitation(room_id, target)
        if winner is None:
            raise ApiError(ErrorCode.CONFLICT, "The invitation changed concurrently; try again.")
        return _invitation(winner)
    if await store.get_ban(room_id, target) is not None:
        # Banned meanwhile: a ban writes itself and then withdraws the invitation, and
        # this read follows the invitation's write, so one of the two withdraws it.
        await rooms.events.drop(held)
        gone = await store.delete_invitation(room_id, target)
        if gone is not None:
            await store.forget_slots(room_id, target, None, "i", n)
        raise _banned_target()
    if await store.get_member(room_id, target) is not None:
        # Joined meanwhile: a join writes its membership and then withdraws the
        # invitation, and this read follows the invitation's write, so one of the two
        # withdraws it (a member holding an invitation could come back through it).
        await rooms.events.drop(held)
        await _withdraw(rooms, room_id, target)
        raise _already_member()
    await rooms.events.release(held)
    return _invitation(doc)


def _already_member() -> ApiError:
    return ApiError(ErrorCode.ALREADY_MEMBER, "That user is a member already.")


def _banned_target() -> ApiError:
    return ApiError(
        ErrorCode.BANNED,
        "That user is banned from this room; the owner or a moderator lifts the ban first.",
    )


def _invitation(doc: Doc) -> models.Invitation:
    return models.Invitation(
        room_id=doc["room"], user_id=doc["user"], invited_by=doc["by"], at=int(doc["at"])
    )


async def remove_member(
    rooms: Rooms, room: Doc, member: Doc, actor: str, removed: bool,
    roles: Collection[str] | None = None, withdraw: bool = True,
) -> bool:  # fmt: skip
    """End ``member``'s membership (announced); ``roles``: only while its role is one of
    them. False when it had ended already, or its role is no longer one of ``roles``.
    ``withdraw``: an invitation the member still holds goes first (one left behind by a
    join cut short would bring them back); an invitation written after the membership
    ends is a new one, and stays."""
    store = rooms.store
    room_id, user_id, slot = room["_id"], member["user"], int(member["slot"])
    if withdraw:
        await _withdraw(rooms, room_id, user_id)
    bumped = await store.bump_room(room_id, version=1)
    cls = e.MemberRemoved if removed else e.MemberLeft
    held = await rooms.events.hold(
        cls(
            room_id=room_id, kind=bumped["kind"], version=int(bumped["version"]), actor=actor,
            at=now_ms(), user_id=user_id,
        ),
        Check("members", {"_id": member["_id"], "slot": slot}, exists=False),
    )  # fmt: skip
    if not await store.delete_member(room_id, user_id, slot, roles, read=member):
        # Left, was removed, or its role changed concurrently: a change read after this
        # one's version was taken (and so numbered after it) may have landed first.
        await rooms.events.drop(held)
        return False
    await store.bump_room(room_id, members=-1)
    await store.forget_slots(room_id, user_id, slot, "r", int(member["user_slot"]))
    await rooms.events.release(held)
    log.info("member removed" if removed else "member left", extra={"room_id": room_id})
    return True


# The roles a member who is not the owner has: a leave deletes such a membership only
# while its role is one of them (a hand-over may make the leaver the owner meanwhile).
NOT_OWNER = ("member", "moderator")


def _must_transfer(message: str) -> ApiError:
    return ApiError(ErrorCode.OWNER_MUST_TRANSFER, message)


async def leave(rooms: Rooms, user_id: str, room_id: str) -> None:
    room, member, _ = await visible(rooms, room_id, user_id)
    member = member_of(member)
    store = rooms.store
    for _ in range(8):
        owner = member["role"] == "owner"
        closed = await _close_if_last(rooms, room, user_id, owner)
        # Deleted only while its role is the one read: an owner's leave follows the
        # owner's rules, a member made the owner meanwhile (a hand-over) is asked to
        # hand over in turn, never deleted as the owner with the room left ownerless.
        roles = ("owner",) if owner else NOT_OWNER
        if await remove_member(rooms, room, member, user_id, removed=False, roles=roles):
            break
        now = await store.get_member(room_id, user_id)
        if now is None or int(now["slot"]) != int(member["slot"]):
            return  # ended meanwhile (left twice at once, removed): told by that one
        if closed:  # the leave did not happen: the room goes back as it was
            await _reopen(rooms, room_id, user_id)
        member = now
        room = await store.get_room(room_id) or room
    else:
        raise ApiError(ErrorCode.CONFLICT, "Your role changed while you left; try again.")
    await _tell(rooms, room_id, "member_left", user_id)
    if owner:
        await store.clear_owner(room_id, user_id)
    if not closed:
        # Two last members leaving at once each saw the other and neither closed it:
        # read again once gone, the room nobody is left in closes (a join that gets in
        # after this sees the close and is undone: _admit).
        await _close_if_empty(rooms, room_id, user_id)


async def _close_if_empty(rooms: Rooms, room_id: str, user_id: str) -> None:
    """Close the room if it is open with nobody in it but ``user_id`` (who just left)."""
    room = await rooms.store.get_room(room_id)
    if (
        room is not None and room["state"] == "open"
        and not await rooms.store.has_other_members(room_id, user_id)
    ):  # fmt: skip
        await set_state(rooms, room, "closed", user_id)


async def _reopen(rooms: Rooms, room_id: str, user_id: str) -> None:
    """Undo a close this leave made, on the room as it is now: the document read before
    the close still says "open", so set_state found nothing to do and a joiner was left
    alone in a closed room (a review finding, 2026-12-07)."""
    room = await rooms.store.get_room(room_id)
    if room is not None:
        await set_state(rooms, room, "open", user_id)


async def _close_if_last(rooms: Rooms, room: Doc, user_id: str, owner: bool) -> bool:
    """If ``user_id`` is the room's last member, close the room (whatever their role:
    nobody would be left to manage it) before they leave; the owner leaves only as the
    last member (``owner_must_transfer``). True if this closed it.

    Closed first, then the memberships read again: a join that got in meanwhile is seen
    here (the leaver was not the last: the room goes back as it was, and an owner is
    refused), or sees the close itself and is undone (_admit). Else a joiner could be
    left alone in a closed room. The last member is told by the member documents, not by
    the count, which a join or leave cut short leaves wrong."""
    store, room_id = rooms.store, room["_id"]
    if await store.has_other_members(room_id, user_id):
        if owner:
            raise _must_transfer(
                "The owner leaves after making another member the owner (PUT .../owner)."
            )
        return False
    # Only a close this made is undone (one someone else made meanwhile stands).
    closed = bool(room["state"] == "open") and await set_state(rooms, room, "closed", user_id)
    if await store.has_other_members(room_id, user_id):
        if closed:
            await _reopen(rooms, room_id, user_id)
        if owner:
            raise _must_transfer(
                "Someone joined meanwhile: the owner leaves after making another member "
                "the owner (PUT .../owner)."
            )
        return False
    return closed


def _manager(member: Doc | None, what: str) -> Doc:
    """The caller's membership, if it is the owner's or a moderator's (else refused)."""
    actor = member_of(member)
    if actor["role"] not in ("owner", "moderator"):
        raise forbidden(f"Only the room's owner and moderators {what}.")
    return actor


async def _removable(
    rooms: Rooms, user_id: str, room_id: str, target: str, verb: str
) -> tuple[Doc, Doc | None, tuple[str, ...]]:
    """The room, ``target``'s membership (None: not a member) and the roles
    ``user_id`` may remove (``verb``: or ban), once they may remove ``target``: the
    owner or a moderator, never the owner, a moderator only by the owner, nobody
    themself."""
    room, member, _ = await visible(rooms, room_id, user_id)
    actor = _manager(member, f"{verb} members")
    if target == user_id:
        raise _self()
    roles = ("member", "moderator") if actor["role"] == "owner" else ("member",)
    victim = await rooms.store.get_member(room_id, target)
    if victim is not None:
        _may_remove(victim["role"], roles, verb)
    return room, victim, roles


def _may_remove(role: str, roles: tuple[str, ...], verb: str) -> None:
    """Refuse removing (``verb``: or banning) a member of ``role`` unless in ``roles``."""
    if role == "owner":
        raise ApiError(ErrorCode.CANNOT_REMOVE_OWNER, f"Nobody {verb}s a room's owner.")
    if role not in roles:
        raise forbidden(f"Only the owner {verb}s a moderator.")


async def _end(
    rooms: Rooms, room: Doc, victim: Doc, actor: str, roles: tuple[str, ...], verb: str
) -> bool:
    """Remove ``victim`` if their role is still one of ``roles``: the role read before
    may have changed (promoted, made owner) since, and the delete is conditional on it.
    Refused as :func:`_removable` would refuse it now; False if they had left."""
    if await remove_member(rooms, room, victim, actor, removed=True, roles=roles):
        return True
    now = await rooms.store.get_member(room["_id"], victim["user"])
    if now is not None:
        _may_remove(now["role"], roles, verb)  # raises: its role changed
        # The same role, a new membership (left and joined again): the caller's
        # rule holds for it too.
        return await _end(rooms, room, now, actor, roles, verb)
    return False


async def remove(rooms: Rooms, user_id: str, room_id: str, target: str) -> None:
    room, victim, roles = await _removable(rooms, user_id, room_id, target, "remove")
    if victim is None:
        raise _no_member(target)
    if await _end(rooms, room, victim, user_id, roles, "remove"):
        await _tell(rooms, room_id, "member_removed", target)


async def ban(rooms: Rooms, user_id: str, token: str, room_id: str, target: str) -> models.Ban:
    """Ban ``target`` (a member or not) from the room: a member is removed (as by
    :func:`remove`, with the same rules), an invitation withdrawn, and joining,
    accepting and being invited are refused (``banned``) until :func:`unban`. Again:
    the same ban."""
    room, victim, roles = await _removable(rooms, user_id, room_id, target, "ban")
    store = rooms.store
    if victim is None and await rooms.users.resolve(target, token) != target:
        raise ApiError(ErrorCode.USER_NOT_FOUND, "No such user.", details={"user_id": target})
    mine: Doc = {
        "_id": member_id(room_id, target), "room": room_id, "user": target, "by": user_id,
        "at": now_ms(), "n": 1,
    }  # fmt: skip
    # Banned already (or at once by another): this request stands behind that ban too
    # (its ``n``), so that another's refusal below cannot take it away. Lifted in
    # between: this one is written after all.
    doc: Doc | None = None
    for _ in range(8):
        if await store.insert_ban(mine):
            doc = mine
        else:
            doc = await store.join_ban(room_id, target)
        if doc is not None:
            break
    if doc is None:
        raise ApiError(ErrorCode.CONFLICT, "The ban changed while it was written; retry.")
    # The ban first, then the membership read again and ended: a join writes its
    # membership and then reads the ban, so one of the two sees the other's write (the
    # membership read before the ban may predate a join that raced it). Its role is
    # checked again, and the removal is conditional on it: a member promoted (or made
    # owner) meanwhile is one this caller may no longer ban, and this request withdraws
    # from the ban (deleted if nobody else stands behind it: an owner's ban of the same
    # user at the same moment stays).
    victim = await store.get_member(room_id, target)
    if victim is not None:
        try:
            _may_remove(victim["role"], roles, "ban")
            ended = await _end(rooms, room, victim, user_id, roles, "ban")
        except ApiError:
            await store.withdraw_from_ban(room_id, target)
            raise
        if ended:
            await _tell(rooms, room_id, "member_removed", target)
    gone = await store.delete_invitation(room_id, target)
    if gone is not None:
        await store.forget_slots(room_id, target, None, "i", int(gone["user_slot"]))
    log.info("user banned", extra={"room_id": room_id})
    return _ban(doc)


async def unban(rooms: Rooms, user_id: str, room_id: str, target: str) -> None:
    """Lift a ban: ``target`` may join (or be invited) again."""
    _, member, _ = await visible(rooms, room_id, user_id)
    _manager(member, "lift bans")
    if await rooms.store.delete_ban(room_id, target) is None:
        raise ApiError(
            ErrorCode.USER_NOT_FOUND, "That user is not banned from this room.",
            details={"user_id": target},
        )  # fmt: skip
    log.info("ban lifted", extra={"room_id": room_id})


async def bans(rooms: Rooms, user_id: str, room_id: str, after: str, limit: int) -> models.BanPage:
    """The room's bans in user id order (the owner and moderators)."""
    _, member, _ = await visible(rooms, room_id, user_id)
    _manager(member, "see its bans")
    docs = await rooms.store.ban_page(room_id, after, limit + 1)
    more = len(docs) > limit
    docs = docs[:limit]
    return models.BanPage(
        bans=[_ban(d) for d in docs], next_after=str(docs[-1]["user"]) if more else None
    )


def _ban(doc: Doc) -> models.Ban:
    return models.Ban(
        room_id=doc["room"], user_id=doc["user"], banned_by=doc["by"], at=int(doc["at"])
    )


async def _tell(
    rooms: Rooms, room_id: str, change: str, user_id: str, role: str | None = None
) -> None:
    """``room_changed`` about ``user_id`` to the members and to ``user_id`` (who may have
    just left): told at once, as an admin's removal is."""
    room = await rooms.store.get_room(room_id)
    if room is not None:
        await push.room_changed(rooms.store, rooms.pusher, room, change, (user_id,), user_id, role)


async def set_role(
    rooms: Rooms, room: Doc, member: Doc, role: str, actor: str, was: str | None = None
) -> None:
    """``member``'s role is ``role`` now (announced); ``was``: only if it is that now
    (else ``forbidden``: it changed since it was read).

    The room's version is taken after ``member`` was read, and the role written only on
    the membership as read (its ``role_v``) with that version: of two changes of one
    member, the one that read the other's result lands after it and has the higher
    version, and one that read the same membership as another that landed first is
    refused; so the highest ``role_changed`` says the role the member has. Without
    ``was``, a lost race reads the membership again."""
    store = rooms.store
    room_id, user_id, slot = room["_id"], member["user"], int(member["slot"])
    for _ in range(CHANGE_TRIES):
        bumped = await store.bump_room(room_id, version=1)
        version = int(bumped["version"])
        held = await rooms.events.hold(
            e.RoleChanged(
                room_id=room_id, kind=bumped["kind"], version=version, actor=actor,
                at=now_ms(), user_id=user_id, role=role,  # type: ignore[arg-type]
            ),
            Check("members", {"_id": member["_id"], "slot": slot, "role": role,
                              "role_v": version}),
        )  # fmt: skip
        if await store.set_role(room_id, user_id, slot, role, was, read=member, version=version):
            await rooms.events.release(held)
            return
        await rooms.events.drop(held)
        now = await store.get_member(room_id, user_id)
        if now is not None and was is not None:
            raise forbidden("Only the room's owner changes roles.")
        if now is None or int(now["slot"]) != slot:
            raise _no_member(user_id)
        member = now
    raise changed_meanwhile()


async def _owner_and_target(
    rooms: Rooms, user_id: str, room_id: str, target: str
) -> tuple[Doc, Doc]:
    room, member, _ = await visible(rooms, room_id, user_id)
    if member_of(member)["role"] != "owner":
        raise forbidden("Only the room's owner changes roles.")
    if target == user_id:
        raise _self()
    victim = await rooms.store.get_member(room_id, target)
    if victim is None:
        raise _no_member(target)
    return room, victim


async def set_moderator(
    rooms: Rooms, user_id: str, room_id: str, target: str, moderator: bool
) -> models.Membership:
    room, victim = await _owner_and_target(rooms, user_id, room_id, target)
    role = "moderator" if moderator else "member"
    if victim["role"] != role:
        # Only from the role read: a hand-over to ``target`` meanwhile made them the
        # owner, whom this must not make a plain member (``forbidden``: the caller is
        # not the owner any more).
        await set_role(rooms, room, victim, role, user_id, was=str(victim["role"]))
        victim = {**victim, "role": role}
        await _tell(rooms, room_id, "role", target, role)
    return membership(victim)


async def transfer(rooms: Rooms, user_id: str, room_id: str, target: str) -> models.Room:
    room, _ = await _owner_and_target(rooms, user_id, room_id, target)
    store = rooms.store
    owner = await store.get_member(room_id, user_id)
    assert owner is not None
    # Recorded first: a process killed in the middle leaves the record, and
    # finish_handovers completes the hand-over (docs/rooms.md, "Roles").
    if not await store.begin_handover(room_id, user_id, target, now_ms()):
        raise ApiError(
            ErrorCode.CONFLICT, "Another hand-over of this room is under way; try again."
        )
    # The owner steps down first, and only while still the owner: of two hand-overs at
    # once exactly one gets past this write (the other is refused), where promoting
    # first let both through and left two owners.
    try:
        await set_role(rooms, room, owner, "moderator", user_id, was="owner")
    except ApiError:
        await store.end_handover(room_id)
        raise
    try:
        await _complete_handover(rooms, room, user_id, target)
    except ApiError:
        # The new owner left in the meantime: the owner stays the owner.
        await _complete_handover(rooms, room, user_id, user_id)
        raise
    room = await store.get_room(room_id) or room
    return out(room, {**owner, "role": "moderator"})


async def _complete_handover(rooms: Rooms, room: Doc, by: str, to: str) -> None:
    """The rest of a hand-over from ``by`` (stepped down) to ``to``: ``to`` is the owner,
    the room's ``owner`` field says so, the record is gone, the members are told."""
    store, room_id = rooms.store, room["_id"]
    target = await store.get_member(room_id, to)
    if target is None:
        raise _no_member(to)
    if target["role"] != "owner":
        await set_role(rooms, room, target, "owner", by)
    await store.set_room(room_id, {"owner": to})
    if await store.get_member(room_id, to) is None:
        # An admin removed them meanwhile: read after the ``owner`` write, as the admin's
        # removal clears ``owner`` after its delete, so one of the two clears it.
        await store.clear_owner(room_id, to)
    await store.end_handover(room_id)
    await _tell(rooms, room_id, "role", to, "owner")


async def finish_handovers(rooms: Rooms, older_than_s: float, limit: int = 100) -> int:
    """Complete the hand-overs a killed process left half done (recorded more than
    ``older_than_s`` ago): to the member it named; if they left meanwhile, back to
    the owner who began it (if still a member; else the room is left without an
    owner, for an admin to name one). Returns how many were finished."""
    store = rooms.store
    done = 0
    for rec in await store.stale_handovers(now_ms() - int(older_than_s * 1000), limit):
        room_id, by, to = str(rec["_id"]), str(rec["by"]), str(rec["to"])
        room = await store.get_room(room_id)
        if room is None:
            await store.end_handover(room_id)
            continue
        old = await store.get_member(room_id, by)
        if await store.get_member(room_id, to) is not None:
            if old is not None and old["role"] == "owner":  # killed before it stepped down
                await set_role(rooms, room, old, "moderator", by, was="owner")
            await _complete_handover(rooms, room, by, to)
            log.warning("hand-over finished after a failure", extra={"room_id": room_id})
        elif old is not None:
            await _complete_handover(rooms, room, by, by)
            log.warning("hand-over undone: its new owner left", extra={"room_id": room_id})
        else:
            await store.end_handover(room_id)
            log.warning("hand-over left no owner", extra={"room_id": room_id})
        done += 1
    return done


async def members(
    rooms: Rooms, user_id: str, room_id: str, after: int, limit: int
) -> models.MemberPage:
    """The members in join order (anyone who may see the room)."""
    room, _, _ = await visible(rooms, room_id, user_id)
    return await member_page(rooms, room, after, limit)


async def member_page(rooms: Rooms, room: Doc, after: int, limit: int) -> models.MemberPage:
    """A page of the room's members in join order (roster slot order), after the slot
    ``after``; ``next_after`` is the slot of the last member listed, while another
    follows.

    The roster is read as an ``_id`` range (:meth:`RoomStore.roster_after`): a leave
    deletes its entry, so a page costs what the members listed do (two reads, whatever
    the room's past), not what the slots ever handed out do. Slots are never reused,
    and a page that listed the ids of every slot read a room 50,000 had joined and left
    500 holes a round trip: 100 round trips, for anyone signed in (a public room's
    list is public), for good."""
    room_id = room["_id"]
    store = rooms.store
    limit = min(limit, MEMBERS_PAGE_MAX)
    found: list[tuple[int, Doc]] = []
    cursor, more = after, False
    ahead = _LOOK_AHEAD
    while not more:
        # As many entries as the page still lacks and one more (is there a next page?).
        # An entry that does not count (a join under way, one a crash left) is skipped;
        # a run of them is read in reads twice as long each time (as rooms.mine does).
        want = max(limit - len(found) + 1, ahead)
        ahead = min(want * 2, LIST_WINDOW_MAX)
        entries = await store.roster_after(room_id, cursor, want)
        for slot, m in await store.listed(room_id, entries):
            if len(found) == limit:
                more = True
                break
            found.append((slot, m))
        if len(entries) < want:
            break
        cursor = slot_of(entries[-1])
    names, online = await rooms.presence.facts([str(m["user"]) for _, m in found])
    return models.MemberPage(
        members=[
            models.Member(
                user_id=m["user"],
                role=m["role"],
                joined_at=int(m["joined_at"]),
                online=m["user"] in online,
                username=names.get(m["user"]),
            )
            for _, m in found
        ],
        next_after=found[-1][0] if more else None,
    )


async def invitations(
    rooms: Rooms, user_id: str, before: int | None, limit: int
) -> models.InvitationList:
    """The caller's pending invitations, newest first (list slot order, backwards), below
    the slot ``before``; ``next_before`` is the slot of the last one listed, while another
    follows.

    The list is read as an ``_id`` range (:meth:`RoomStore.list_before`): a withdrawn,
    declined or accepted invitation deletes its entry, so a page costs what it lists,
    whatever number of slots was ever handed out. Slots are never reused, and a page
    that listed the ids of every slot down to the first read all of them: an owner
    inviting, banning and lifting the ban of a user in a loop left them 100,000 holes
    (732 ms a page) or a million (6.8 s), on every call, for good."""
    store = rooms.store
    found: list[tuple[Doc, Doc, int]] = []
    cursor, more = before, False
    ahead = _LOOK_AHEAD
    while not more:
        # As many entries as the page lacks and one more (is there a next page?); entries
        # that do not count (a crash's, a deleted room's invitation) are read past in
        # reads twice as long each time, as a member page does.
        want = max(limit - len(found) + 1, ahead)
        ahead = min(want * 2, LIST_WINDOW_MAX)
        entries = await store.list_before(user_id, "i", cursor, want)  # newest first
        docs = await store.get_invitations(user_id, [str(x["room"]) for x in entries])
        live = [
            (d, slot) for x in entries if (d := docs.get(str(x["room"]))) is not None
            and int(d["user_slot"]) == (slot := slot_of(x))
        ]  # fmt: skip
        got = await store.get_rooms([str(d["room"]) for d, _ in live])
        for d, slot in live:
            room = got.get(str(d["room"]))
            if room is None or deleted(room):
                continue
            if len(found) == limit:
                more = True
                break
            found.append((d, room, slot))
        if len(entries) < want:
            break
        cursor = slot_of(entries[-1])
    return models.InvitationList(
        invitations=[_invitation(d) for d, _, _ in found],
        rooms=[out(room, None, True) for _, room, _ in found],
        next_before=found[-1][2] if more else None,
    )
