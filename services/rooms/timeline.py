"""Public rooms' timeline: post (idempotent by client id) and page newest first.

Order: every message takes the room's next sequence number (one atomic
``$inc`` on the room document), and its ``_id`` is ``"<room>|<seq>"``, so a
page is a list of primary keys read with ``$in``, the same cost at message
ten and message ten million. A resend (same sender, same ``client_id``)
finds its ``client_ids`` record and gets the original back, marked
``duplicate``. Two copies of one message racing both take a number; the
loser marks its number as a hole (``hole: true``), which pages skip, and
answers with the winner's message. A process that died between taking the
client id and writing its message left its number empty: a resend writes
the message there, whole, as a first post would. Whichever copy writes the
message announces it (mentions, the ``room_post`` push), once. A message is
written marked ``unannounced`` (when its announcement was taken) until that is
done: a post whose announcement failed (given up: at once) or whose process
died after writing it (after ``ANNOUNCE_LEASE_MS``) is announced by one resend
(answered ``duplicate``; copies sent while the writer is at it announce
nothing), or, for a message with mentions, by the sweep (:func:`announce_due`):
its writer records it in ``announcements`` before writing it and deletes the
record once the announcement is made, and any replica's sweep takes over a
record still there past ``ANNOUNCE_LEASE_MS``. Before 2026-12-07 only a resend
did, and a client's retry comes within seconds, inside the lease: answered
``duplicate``, it stopped, and the mentions were never made. A message without
mentions that nobody resends stays unannounced: its push only says "look now".

A number taken and not yet written is **in flight**, not a hole: a page from
the newest leaves out in-flight numbers above its first message (they are
newer than the page, as a message posted after it is), and any page ends
before one below a message it lists (``next_before`` points at it: asked
again, the page goes on from there). Before 2026-12-07 pages skipped them as
holes, and a message written a moment later was behind the reader's cursor
for good. A number can stay empty for good (its writer died), so the room
keeps a watermark: every number up to ``seq_settled`` was taken at least
``inflight_grace_s`` ago (readers move it on, at most once per grace: at
``seq_seen_at`` the head was ``seq_seen``), and a page that meets an empty
one of those marks it a hole (an insert: a writer that was slower still finds
its number taken, takes a new one and moves its client id there, so the
message is never lost behind a page either).

A stored message is pushed to the room's connected members as a ``room_post``
frame (best effort, :mod:`services.rooms.push`); a resend is not pushed again
(unless the message is still ``unannounced``).

Private rooms have no server timeline: their messages are end-to-end
encrypted and travel through the gateway (``forbidden`` here).
"""

from __future__ import annotations

import contextlib
import logging
import time

from parley_contract import frames as f

from services.common.audit import Actor, Entry
from services.common.errors import ApiError, ErrorCode
from services.rooms import mentions, models, notifications, push, text
from services.rooms.config import PAGE_MAX, TEXT_MAX
from services.rooms.rooms import PRIVATE, deleted, member_of, require_open, visible
from services.rooms.state import Rooms
from services.rooms.store import Doc, message_id, now_ms

# How long a post's writer has to announce it (mentions, push) before a resend of it
# takes the announcement over (the writer failed or died).
ANNOUNCE_LEASE_MS = 60_000
# A sweep's record of a message never written (its writer died before the insert and
# no resend came: a resend writes and announces it itself) is dropped after this long.
UNWRITTEN_KEPT_S = 600.0

log = logging.getLogger(__name__)

# Numbers looked at per page beyond its size before answering a short page (holes).
HOLE_SLACK = 50


def _private() -> ApiError:
    return ApiError(
        ErrorCode.FORBIDDEN,
        "Private rooms are end-to-end encrypted: their messages go through the gateway.",
    )


# The sender of what an admin, or the room's owner or a moderator, posts as the room's
# moderator (not a user id: those are 32 hex digits); who it was is kept in
# ``posted_by`` / ``posted_role`` and the audit log, not shown to members.
MODERATOR = "moderator"


def message(doc: Doc) -> models.RoomMessage:
    edited = doc.get("edited_at")
    return models.RoomMessage(
        room_id=doc["room"], seq=int(doc["seq"]), sender=doc["sender"],
        client_id=doc["client_id"], text=doc["text"], mentions=list(doc.get("mentions", [])),
        sent_at=int(doc["sent_at"]), rev=int(doc.get("rev", 1)), marker=doc.get("marker"),
        edited_at=None if edited is None else int(edited),
    )  # fmt: skip


def changed_frame(doc: Doc) -> f.RoomMessageChanged:
    return f.RoomMessageChanged(
        room_id=doc["room"], seq=int(doc["seq"]), rev=int(doc["rev"]), marker=doc["marker"],
        text=doc["text"], mentions=list(doc.get("mentions", [])), at=int(doc["edited_at"]),
    )  # fmt: skip


def post_frame(doc: Doc) -> f.RoomPost:
    return f.RoomPost(
        room_id=doc["room"], seq=int(doc["seq"]), sender=doc["sender"],
        client_id=doc["client_id"], text=doc["text"], mentions=list(doc.get("mentions", [])),
        sent_at=int(doc["sent_at"]),
    )  # fmt: skip


async def mentioned_members(rooms: Rooms, room_id: str, body: str, token: str) -> list[str]:
    """User ids of the members the text mentions, in order of appearance."""
    names = mentions.parse(body, rooms.config.max_mentions)
    if not names:
        return []
    ids = await rooms.users.resolve_many(names, token)
    wanted = list(dict.fromkeys(ids[n] for n in names if n in ids))
    members = await rooms.store.get_members(room_id, wanted)
    return [u for u in wanted if u in members]


# Numbers a post takes at most (each after a page took the one before for a hole).
RENUMBER_MAX = 8


async def _number(
    rooms: Rooms, room_id: str, key: str, client_id: str, moved_from: int | None = None
) -> int:
    """The room's next number for the message of ``client_id`` (``moved_from``: its
    client id stood for that number, which a page took for a hole). A copy of the
    message that took (or moved) the client id first wins: the number taken here
    becomes a hole, and the answer is the winner's number."""
    store = rooms.store
    seq = int((await store.bump_room(room_id, seq=1))["seq"])
    if moved_from is None:
        won = await store.claim_client_id(room_id, key, client_id, seq)
    else:
        won = await store.move_client_id(room_id, key, client_id, moved_from, seq)
    if won:
        return seq
    await store.insert_message(
        {"_id": message_id(room_id, seq), "room": room_id, "seq": seq, "hole": True}
    )
    seen = await store.get_client_id(room_id, key, client_id)
    assert seen is not None
    return int(seen["seq"])


def _repeat(rooms: Rooms, doc: Doc) -> models.PostResult:
    """The answer to a resend: the message its client id already stands for."""
    rooms.metrics.messages.labels("duplicate").inc()
    return models.PostResult(**message(doc).model_dump(), duplicate=True)


async def post(
    rooms: Rooms, user_id: str, token: str, room_id: str, body: models.MessageIn
) -> models.PostResult:
    room, member, _ = await visible(rooms, room_id, user_id)
    if room["kind"] == PRIVATE:
        raise _private()
    member_of(member)
    return await store_post(rooms, room, user_id, user_id, token, body)


async def post_as_moderator(
    rooms: Rooms, user_id: str, token: str, room_id: str, body: models.MessageIn,
    ip: str | None = None,
) -> models.PostResult:  # fmt: skip
    """The room's owner or a moderator posts as the room's moderator (closed rooms too)."""
    room, member, _ = await visible(rooms, room_id, user_id)
    if room["kind"] == PRIVATE:
        raise _private()
    role = member_of(member)["role"]
    if role not in ("owner", "moderator"):
        raise ApiError(
            ErrorCode.FORBIDDEN, "Only the room's owner and moderators post as its moderator."
        )
    return await store_post(rooms, room, MODERATOR, user_id, token, body, role, ip)


async def store_post(
    rooms: Rooms, room: Doc, sender: str, poster: str, token: str, body: models.MessageIn,
    role: str = "author", ip: str | None = None,
) -> models.PostResult:  # fmt: skip
    """Store and announce a post of ``sender``: a member, or :data:`MODERATOR` for a
    ``poster`` in ``role`` (``admin``, ``owner``, ``moderator``: no post limit, closed
    rooms too; audited once, resends not)."""
    room_id = room["_id"]
    store = rooms.store
    as_moderator = sender == MODERATOR
    # Resends are recognised per poster: two admins' same client id are two messages.
    key = f"{MODERATOR}:{poster}" if as_moderator else sender
    draft: Doc = {"room": room_id, "sender": sender, "client_id": body.client_id}
    if as_moderator:
        draft.update(posted_by=poster, posted_role=role)
    seq: int | None = None
    moved_from: int | None = None
    seen = await store.get_client_id(room_id, key, body.client_id)
    if seen is not None:
        stored = await store.get_message(room_id, int(seen["seq"]))
        if stored is not None and not stored.get("hole"):
            if stored.get("unannounced") is not None and await store.take_announcement(
                room_id, int(stored["seq"]), ANNOUNCE_LEASE_MS
            ):
                # Its writer failed (or died) before announcing it: this resend does, once
                # (copies sent while the writer is still at it announce nothing: each
                # was a push to every member and a write per mention). Not an edited or
                # removed message: it goes out as it was first sent or not at all.
                await _take_over(rooms, room, stored)
            return _repeat(rooms, stored)
        if stored is None:
            # Its writer died between taking the client id and writing the message:
            # this resend writes it, whole (cleaned, its mentions and time), and
            # announces it.
            seq = int(seen["seq"])
        else:
            moved_from = int(seen["seq"])  # a page took its number for a hole: a new one
    if not as_moderator:
        require_open(room)
    content = text.clean(body.text, "text", required=True, limit=TEXT_MAX, multiline=True)
    if not as_moderator and seen is None:
        await rooms.limiter.hit("post", poster, rooms.config.post_limit)
    mentioned = await mentioned_members(rooms, room_id, content, token)
    # ``unannounced`` (when its announcement was taken) until its mentions and push are
    # done: a resend past ANNOUNCE_LEASE_MS takes it over and makes them.
    sent = now_ms()
    draft.update(text=content, mentions=mentioned, sent_at=sent, rev=1, unannounced=sent)
    if seq is None:
        seq = await _number(rooms, room_id, key, body.client_id, moved_from)
    for _ in range(RENUMBER_MAX):
        doc = {**draft, "_id": message_id(room_id, seq), "seq": seq}
        if mentioned:  # its mentions are made even if this process dies now: the sweep
            await store.hold_announcement(room_id, seq, time.time() + ANNOUNCE_LEASE_MS / 1000)
        if await store.insert_message(doc):
            break
        stored = await store.get_message(room_id, seq)
        if stored is not None and not stored.get("hole"):
            # Another copy wrote it first (and announces it): its message is the answer.
            return _repeat(rooms, stored)
        # A page took the number for a hole (this post outlasted ``inflight_grace_s``):
        # the message takes the room's next number, and its client id moves there.
        seq = await _number(rooms, room_id, key, body.client_id, seq)
    else:
        raise ApiError(ErrorCode.CONFLICT, "The message could not be numbered; send it again.")
    rooms.metrics.messages.labels("stored").inc()
    await _announce_or_release(rooms, room, doc)
    await _announced(rooms, doc)
    if as_moderator:
        await rooms.audit.record(
            Entry(
                actor=Actor(poster, role), action="message.post", target_type="message",
                target_id=f"{room_id}/{seq}", details={"room_id": room_id, "seq": seq},
                after={"text": content}, ip=ip,
            )
        )  # fmt: skip
    return models.PostResult(**message(doc).model_dump(), duplicate=False)


async def _announce_or_release(rooms: Rooms, room: Doc, doc: Doc) -> None:
    """:func:`_announce`; if it fails, the announcement is given up so that the client's
    resend (answered ``duplicate``) takes it over at once, not after the lease."""
    try:
        await _announce(rooms, room, doc)
    except BaseException:
        with contextlib.suppress(Exception):
            await rooms.store.release_announcement(str(doc["room"]), int(doc["seq"]))
        raise


async def _take_over(rooms: Rooms, room: Doc | None, doc: Doc) -> None:
    """Announce ``doc``, whose announcement was just taken over from a writer that failed
    or died (a resend, or the sweep). Not an edited or removed message, nor one of a
    deleted room: it goes out as it was first sent or not at all."""
    first = int(doc.get("rev", 1)) == 1 and not doc.get("marker")
    if room is not None and not deleted(room) and first:
        await _announce_or_release(rooms, room, doc)
    else:
        await rooms.store.mark_announced(str(doc["room"]), int(doc["seq"]))
    await _announced(rooms, doc)


async def _announced(rooms: Rooms, doc: Doc) -> None:
    """The announcement is made: its sweep record goes (one left behind is dropped by the
    sweep, which finds the message announced)."""
    if doc.get("mentions"):
        with contextlib.suppress(Exception):
            await rooms.store.drop_announcement(str(doc["room"]), int(doc["seq"]))


async def announce_due(rooms: Rooms) -> int:
    """Take over and make the announcements whose writers have not made them within
    ``ANNOUNCE_LEASE_MS`` (they died, or failed and no resend came); returns how many.
    Each record is leased first, so that one replica's sweep has it; one whose
    announcement fails now is due again after the lease."""
    store = rooms.store
    made = 0
    while (record := await store.lease_announcement(ANNOUNCE_LEASE_MS / 1000)) is not None:
        room_id, seq = str(record["room"]), int(record["seq"])
        doc = await store.get_message(room_id, seq)
        if doc is None:
            # Not written (yet): its writer may still insert it, or a resend will.
            if time.time() - float(record.get("at") or 0) > UNWRITTEN_KEPT_S:
                await store.drop_announcement(room_id, seq)
            continue
        if doc.get("hole") or doc.get("unannounced") is None:
            await store.drop_announcement(room_id, seq)  # announced, or no message here
            continue
        if not await store.take_announcement(room_id, seq, ANNOUNCE_LEASE_MS):
            continue  # its writer (or a resend) has it still: due again after the lease
        await _take_over(rooms, await store.get_room(room_id), doc)
        rooms.metrics.messages.labels("announced_late").inc()
        made += 1
    return made


async def _announce(rooms: Rooms, room: Doc, doc: Doc) -> None:
    """The mention notifications and the ``room_post`` push of a stored message, then its
    ``unannounced`` mark cleared. Made by the post that wrote it, or by a resend that
    finds the mark (the writer failed or died in between): notifications are made once
    per mention however often this runs (their ``key``); the frame may go twice, and
    only says "look now"."""
    # Nobody is told of their own message: the sender, and behind a ``moderator`` post
    # its poster (the sender there is ``moderator``, no user: the poster was told).
    told = (doc["sender"], doc.get("posted_by"))
    await notifications.mentioned(
        rooms, room, doc, [u for u in doc.get("mentions", []) if u not in told]
    )
    await push.room_post(rooms.store, rooms.pusher, room, post_frame(doc))
    await rooms.store.mark_announced(str(doc["room"]), int(doc["seq"]))


async def page(
    rooms: Rooms, user_id: str, room_id: str, before: int | None, limit: int
) -> models.MessagePage:
    """Messages before ``before`` (default: the newest), newest first. A room an admin
    made private keeps the public timeline it had, readable by its members only."""
    room, member, _ = await visible(rooms, room_id, user_id)
    if room["kind"] == PRIVATE and (member is None or not int(room.get("seq", 0))):
        raise _private()
    return await timeline_page(rooms, room, before, limit)


async def timeline_page(
    rooms: Rooms, room: Doc, before: int | None, limit: int
) -> models.MessagePage:
    """A page of the timeline, newest first, that never goes past a number in flight
    (taken, neither written nor a hole yet: see the module doc)."""
    room_id = room["_id"]
    store = rooms.store
    limit = min(limit, PAGE_MAX)
    head = int(room.get("seq", 0))
    read_at = now_ms()  # every number up to ``head`` was taken before this
    # From the newest: in-flight numbers above the first message are newer than the page.
    from_head = before is None or before > head
    cursor = head if before is None else min(before - 1, head)
    settled = int(room.get("seq_settled", 0))
    budget = limit + HOLE_SLACK
    found: list[Doc] = []
    stop = pending = False
    while cursor >= 1 and len(found) < limit and budget > 0 and not stop:
        seqs = list(range(cursor, max(cursor - (limit - len(found)), 0), -1))
        budget -= len(seqs)
        docs = await store.messages_at(room_id, seqs)
        for s in seqs:
            d = docs.get(s)
            if d is None and s <= settled:
                d = await _fence(rooms, room_id, s)  # taken long ago, never written
            if d is None:
                pending = True
                if found or not from_head:
                    stop = True  # the page ends before it: next_before points at it
                    break
                # else newer than the page (nothing listed yet): left out
            elif not d.get("hole"):
                found.append(d)
            cursor = s - 1
    if pending:
        await _settle(rooms, room, head, read_at)
    return models.MessagePage(
        messages=[message(d) for d in found], next_before=cursor + 1 if cursor >= 1 else None
    )


async def _fence(rooms: Rooms, room_id: str, seq: int) -> Doc:
    """Mark ``seq`` a hole (it was taken more than ``inflight_grace_s`` ago and is still
    empty: its writer died, or is slower than that and takes a new number); the message
    if it was written meanwhile."""
    store = rooms.store
    hole = {"_id": message_id(room_id, seq), "room": room_id, "seq": seq, "hole": True}
    if await store.insert_message({**hole, "at": now_ms()}):
        log.info("an empty timeline number marked a hole", extra={"room_id": room_id})
        return hole
    doc = await store.get_message(room_id, seq)
    assert doc is not None
    return doc


async def _settle(rooms: Rooms, room: Doc, head: int, read_at: int) -> None:
    """Move the room's watermark on, at most once per ``inflight_grace_s``: what was the
    head at the last move is settled now (taken at least a grace ago), and ``head`` (read
    before ``read_at``) the head seen now."""
    seen_at = room.get("seq_seen_at")
    grace_ms = int(rooms.config.inflight_grace_s * 1000)
    if seen_at is not None and read_at - int(seen_at) < grace_ms:
        return
    settled = int(room.get("seq_seen", 0)) if seen_at is not None else 0
    await rooms.store.settle_seqs(
        room["_id"], None if seen_at is None else int(seen_at), settled, head, read_at
    )
