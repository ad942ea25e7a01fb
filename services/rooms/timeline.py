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
the message there, whole, as a first post would (pages skip the number
until then). Whichever copy writes the message announces it (mentions, the
``room_post`` push), once; a process that dies after writing a message and
before announcing it leaves it unannounced (the timeline is the record).

A stored message is pushed to the room's connected members as a ``room_post``
frame (best effort, :mod:`services.rooms.push`); a resend is not pushed again.

Private rooms have no server timeline: their messages are end-to-end
encrypted and travel through the gateway (``forbidden`` here).
"""

from __future__ import annotations

import logging

from parley_contract import frames as f

from services.common.audit import Actor, Entry
from services.common.errors import ApiError, ErrorCode
from services.rooms import mentions, models, notifications, push, text
from services.rooms.config import PAGE_MAX
from services.rooms.rooms import PRIVATE, member_of, require_open, visible
from services.rooms.state import Rooms
from services.rooms.store import Doc, message_id, now_ms

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
    seen = await store.get_client_id(room_id, key, body.client_id)
    if seen is not None:
        stored = await store.get_message(room_id, int(seen["seq"]))
        if stored is not None:
            return _repeat(rooms, stored)
        # Its writer died between taking the client id and writing the message: this
        # resend writes it, whole (cleaned, its mentions and time), and announces it.
        seq = int(seen["seq"])
    if not as_moderator:
        require_open(room)
    content = text.clean(body.text, "text", required=True, multiline=True)
    if not as_moderator and seq is None:
        await rooms.limiter.hit("post", poster, rooms.config.post_limit)
    mentioned = await mentioned_members(rooms, room_id, content, token)
    draft.update(text=content, mentions=mentioned, sent_at=now_ms(), rev=1)
    if seq is None:
        seq = int((await store.bump_room(room_id, seq=1))["seq"])
        if not await store.claim_client_id(room_id, key, body.client_id, seq):
            # A copy of this message raced us and took the client id: ours is a hole.
            await store.insert_message(
                {"_id": message_id(room_id, seq), "room": room_id, "seq": seq, "hole": True}
            )
            seen = await store.get_client_id(room_id, key, body.client_id)
            assert seen is not None
            seq = int(seen["seq"])
    doc = {**draft, "_id": message_id(room_id, seq), "seq": seq}
    if not await store.insert_message(doc):
        # Another copy wrote it first (and announces it): its message is the answer.
        stored = await store.get_message(room_id, seq)
        assert stored is not None
        return _repeat(rooms, stored)
    rooms.metrics.messages.labels("stored").inc()
    await notifications.mentioned(rooms, room, doc, [u for u in mentioned if u != sender])
    await push.room_post(rooms.store, rooms.pusher, room, post_frame(doc))
    if as_moderator:
        await rooms.audit.record(
            Entry(
                actor=Actor(poster, role), action="message.post", target_type="message",
                target_id=f"{room_id}/{seq}", details={"room_id": room_id, "seq": seq},
                after={"text": content}, ip=ip,
            )
        )  # fmt: skip
    return models.PostResult(**message(doc).model_dump(), duplicate=False)


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
    room_id = room["_id"]
    limit = min(limit, PAGE_MAX)
    head = int(room.get("seq", 0))
    cursor = head if before is None else min(before - 1, head)
    budget = limit + HOLE_SLACK
    found: list[Doc] = []
    while cursor >= 1 and len(found) < limit and budget > 0:
        seqs = list(range(cursor, max(cursor - (limit - len(found)), 0), -1))
        cursor -= len(seqs)
        budget -= len(seqs)
        docs = await rooms.store.messages_at(room_id, seqs)
        found += [d for s in seqs if (d := docs.get(s)) is not None and not d.get("hole")]
    return models.MessagePage(
        messages=[message(d) for d in found], next_before=cursor + 1 if cursor >= 1 else None
    )
