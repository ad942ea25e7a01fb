"""Changes to public rooms' messages: edits and removals, each a kept revision
(docs/moderation.md, "Messages of public rooms").

Who may change a message:

- its **author** edits it (marker ``edited``; not in a closed room, not once a
  moderator changed it) and deletes it (``deleted_by_author``);
- the room's **owner** changes anyone's, a **moderator** a plain member's (or a
  former member's), not the owner's nor another moderator's; neither changes
  what an admin posted as the room's moderator (``edited_by_moderator``,
  ``removed_by_moderator``), and they may do so in a closed room;
- an **admin** changes any message of any room with a timeline, through the admin
  routes, in the same way (``services.rooms.admin``).

The original is never lost. A message that changes for the first time has its
original written as revision 1 of ``revisions``; each change then **claims** the
next revision number by inserting its revision (``"<room>|<seq>|<rev>"``,
unique) with the full new content, and only then moves the message document
from the revision it read to the new one (a conditional update on ``rev``). Two
concurrent changes: one claims the number, the other gets 409 ``conflict`` and
changes nothing. A writer that died between its claim and the update leaves a
revision the message does not show yet; the next change meets the claim, applies
it (the content is in the revision), and answers ``conflict`` so that the client
reads again. Removed and deleted messages keep their revisions; members see an
empty text and the marker, admins read every revision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from services.common.audit import Actor, Entry
from services.common.errors import ApiError, ErrorCode
from services.rooms import models, push, text, timeline
from services.rooms.config import TEXT_MAX
from services.rooms.rooms import PRIVATE, forbidden, member_of, require_open, visible
from services.rooms.state import Rooms
from services.rooms.store import Doc, now_ms, revision_id

log = logging.getLogger(__name__)

EDIT = "edit"
REMOVE = "remove"
RESTORE = "restore"


@dataclass(frozen=True, slots=True)
class Change:
    """What one request asks for: an edit (``text``) or a removal, by whom, as what."""

    action: str  # EDIT, REMOVE or RESTORE
    by: str  # the user id of whoever makes it
    role: str  # author, owner, moderator or admin
    text: str | None = None
    reason: str | None = None
    ip: str | None = None


def not_found(seq: int) -> ApiError:
    return ApiError(
        ErrorCode.MESSAGE_NOT_FOUND, "No such message in this room.", details={"seq": seq}
    )


def conflict() -> ApiError:
    return ApiError(ErrorCode.CONFLICT, "The message changed meanwhile; read it again.")


async def message_of(rooms: Rooms, room_id: str, seq: int) -> Doc:
    doc = await rooms.store.get_message(room_id, seq)
    if doc is None or doc.get("hole"):
        raise not_found(seq)
    return doc


def _refuse_removed(doc: Doc) -> None:
    if doc.get("marker") in ("removed_by_moderator", "deleted_by_author"):
        raise ApiError(
            ErrorCode.MESSAGE_REMOVED,
            "This message was removed; it cannot change any more (admins read its history).",
        )


async def _role_over(rooms: Rooms, room: Doc, member: Doc, doc: Doc) -> str:
    """The role in which a member (not the author) may change ``doc``; 403 otherwise."""
    role = str(member["role"])
    if role not in ("owner", "moderator"):
        raise forbidden("Only the author, the room's owner and moderators change a message.")
    if doc["sender"] == timeline.MODERATOR:
        raise forbidden("What an admin posted as the room's moderator is changed by admins.")
    if role == "moderator":
        author = await rooms.store.get_member(room["_id"], str(doc["sender"]))
        if author is not None and author["role"] in ("owner", "moderator"):
            raise forbidden("A moderator changes plain members' messages only.")
    return role


async def by_member(
    rooms: Rooms, user_id: str, token: str, room_id: str, seq: int, change: Change
) -> models.RoomMessage:
    """A member edits or removes a message of a public room (the checks above)."""
    room, member, _ = await visible(rooms, room_id, user_id)
    if room["kind"] == PRIVATE:
        raise forbidden("Private rooms are end-to-end encrypted: the server holds no message.")
    member = member_of(member)
    # Each change is a revision kept for good and a push to every connected member:
    # before 2026-12-07 nothing limited them (1,500 edits of one message in 14 s).
    await rooms.limiter.hit("edit", user_id, rooms.config.edit_limit)
    doc = await message_of(rooms, room_id, seq)
    if change.action == RESTORE:
        # Undoing a removal is a moderator's, under the removal's rules: not the
        # author's (their own deletion is final), not over an admin's removal.
        removal = await _removal(rooms, room_id, doc)
        role = await _role_over(rooms, room, member, doc)
        if removal.get("role") == "admin":
            raise forbidden("An admin removed this message; admins restore it.")
        return await apply(rooms, room, doc, replace(change, role=role), token)
    _refuse_removed(doc)
    if doc["sender"] == user_id:
        role = "author"
        if change.action == EDIT:
            require_open(room)
            if doc.get("marker") == "edited_by_moderator":
                raise forbidden("A moderator changed this message; it stays as they left it.")
    else:
        role = await _role_over(rooms, room, member, doc)
    return await apply(rooms, room, doc, replace(change, role=role), token)


async def _removal(rooms: Rooms, room_id: str, doc: Doc) -> Doc:
    """The revision that removed ``doc`` (a moderator's or an admin's removal); a message
    not so removed is ``conflict``: there is nothing to restore."""
    rev = int(doc.get("rev", 1))
    removal = None
    if doc.get("marker") == "removed_by_moderator" and rev > 1:
        removal = await rooms.store.get_revision(room_id, int(doc["seq"]), rev)
    if removal is None:
        raise ApiError(
            ErrorCode.CONFLICT,
            "Only a message a moderator or an admin removed is restored; this one was not "
            "(its author's own deletion is final).",
        )
    return removal


def _marker(change: Change) -> str:
    if change.role == "author":
        return "edited" if change.action == EDIT else "deleted_by_author"
    return "edited_by_moderator" if change.action == EDIT else "removed_by_moderator"


def _refuse_past_cap(rooms: Rooms, doc: Doc, change: Change) -> None:
    """``forbidden`` for an edit or a restore (not an admin's) of a message that has
    ``max_edits`` revisions."""
    if change.role != "admin" and int(doc.get("rev", 1)) >= rooms.config.max_edits:
        raise forbidden(
            f"This message has {rooms.config.max_edits} revisions: it stays as it is "
            "(it can still be removed)."
        )


async def apply(
    rooms: Rooms, room: Doc, doc: Doc, change: Change, token: str
) -> models.RoomMessage:
    """Make the change (a new revision), push it, audit it unless the author made it.
    A restore's revision repeats the one before the removal (its text, mentions and
    marker): the message is as it was, and the removal stays in its history."""
    store = rooms.store
    room_id, seq = str(room["_id"]), int(doc["seq"])
    marker: str | None
    # A message's revisions are bounded (``max_edits``): past it, edits and restores are
    # refused and a removal is still made, once (a removed message is not removed
    # again); a cycle of removals and restores bypassed a cap on edits alone. Admins'
    # changes are not capped.
    if change.action == RESTORE:
        _refuse_past_cap(rooms, doc, change)
        await _removal(rooms, room_id, doc)
        before = await store.get_revision(room_id, seq, int(doc["rev"]) - 1)
        if before is None:
            raise conflict()
        content, mentions, marker = (
            before["text"],
            list(before.get("mentions", [])),
            before["marker"],
        )
    else:
        _refuse_removed(doc)
        marker = _marker(change)
    if change.action == EDIT:
        assert change.text is not None
        content = text.clean(change.text, "text", required=True, limit=TEXT_MAX, multiline=True)
        if content == doc["text"]:
            return timeline.message(doc)  # nothing changes: no revision (a retry too)
        _refuse_past_cap(rooms, doc, change)
        mentions = await timeline.mentioned_members(rooms, room_id, content, token)
    elif change.action == REMOVE:
        content, mentions = "", []
    rev = int(doc.get("rev", 0))
    if rev < 1:
        await store.init_rev(room_id, seq)
        rev = 1
    if rev == 1:
        await store.insert_revision(_original(doc))  # idempotent: the original, once
    now = now_ms()
    claim: Doc = {
        "_id": revision_id(room_id, seq, rev + 1), "room": room_id, "seq": seq, "rev": rev + 1,
        "text": content, "mentions": mentions, "marker": marker, "by": change.by,
        "role": change.role, "at": now, "reason": change.reason,
    }  # fmt: skip
    if not await store.insert_revision(claim):
        await _roll_forward(rooms, room_id, seq, rev)
        raise conflict()
    fields = _current(claim)
    if not await store.set_message(room_id, seq, rev, fields):
        now_doc = await store.get_message(room_id, seq)
        if now_doc is None or int(now_doc.get("rev", 1)) < rev + 1:
            raise conflict()  # cannot happen while the claim holds; never guess
    updated = {**doc, **fields}
    if change.role != "author":
        await rooms.audit.record(
            Entry(
                actor=Actor(change.by, change.role),
                action=f"message.{change.action}",
                target_type="message", target_id=f"{room_id}/{seq}",
                details={"room_id": room_id, "seq": seq, "rev": rev + 1, "marker": marker,
                         "sender": doc["sender"], "reason": change.reason},
                before={"text": doc["text"], "marker": doc.get("marker")},
                after={"text": content, "marker": marker}, ip=change.ip,
            )
        )  # fmt: skip
    rooms.metrics.messages.labels("restored" if change.action == RESTORE else marker).inc()
    log.info("message changed", extra={"room_id": room_id, "seq": seq, "marker": marker})
    await push.to_members(
        store, rooms.pusher, room, timeline.changed_frame(updated), "room_message_changed"
    )
    return timeline.message(updated)


def _original(doc: Doc) -> Doc:
    room_id, seq = str(doc["room"]), int(doc["seq"])
    return {
        "_id": revision_id(room_id, seq, 1), "room": room_id, "seq": seq, "rev": 1,
        "text": doc["text"], "mentions": list(doc.get("mentions", [])), "marker": None,
        "by": doc.get("posted_by") or doc["sender"],
        "role": doc.get("posted_role") or ("admin" if doc.get("posted_by") else "author"),
        "at": int(doc["sent_at"]), "reason": None,
    }  # fmt: skip


def _current(revision: Doc) -> Doc:
    """The message document's fields for ``revision``."""
    return {
        "rev": int(revision["rev"]), "text": revision["text"],
        "mentions": list(revision.get("mentions", [])), "marker": revision["marker"],
        "edited_at": int(revision["at"]),
    }  # fmt: skip


async def _roll_forward(rooms: Rooms, room_id: str, seq: int, rev: int) -> None:
    """Revision ``rev + 1`` is claimed: if the message still shows ``rev`` (its writer
    died, or is about to write), make it show the claim (the same write either way)."""
    claimed = await rooms.store.get_revision(room_id, seq, rev + 1)
    if claimed is not None:
        await rooms.store.set_message(room_id, seq, rev, _current(claimed))


async def history(rooms: Rooms, room: Doc, seq: int) -> models.RevisionHistory:
    """Every revision of a message, oldest first (admins)."""
    doc = await message_of(rooms, str(room["_id"]), seq)
    rev = int(doc.get("rev", 1))
    docs = await rooms.store.revisions_of(str(room["_id"]), seq, rev) if rev > 1 else []
    if not docs:
        docs = [_original(doc)]
    return models.RevisionHistory(
        room_id=str(room["_id"]),
        seq=seq,
        sender=str(doc["sender"]),
        current=timeline.message(doc),
        revisions=[
            models.Revision(
                rev=int(d["rev"]), text=d["text"], mentions=list(d.get("mentions", [])),
                marker=d.get("marker"), by=str(d["by"]), role=d["role"], at=int(d["at"]),
                reason=d.get("reason"),
            )
            for d in docs
        ],
    )  # fmt: skip
