"""Public rooms' timeline: post (idempotent by client id) and page newest first.

Order: every message takes the room's next sequence number (one atomic
``$inc`` on the room document), and its ``_id`` is ``"<room>|<seq>"``, so a
page is a list of primary keys read with ``$in``, the same cost at message
ten and message ten million. A resend (same sender, same ``client_id``)
finds its ``client_ids`` record and gets the original back, marked
``duplicate``. Two copies of one message racing both take a number; the
loser marks its number as a hole (``hole: true``), which pages skip, and
answers with the winner's message. A number taken by a process that died
before writing its message stays a hole too.

A stored message is pushed to the room's connected members as a ``room_post``
frame (best effort, :mod:`services.rooms.push`); a resend is not pushed again.

Private rooms have no server timeline: their messages are end-to-end
encrypted and travel through the gateway (``forbidden`` here).
"""

from __future__ import annotations

import logging

from parley_contract import frames as f

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


def message(doc: Doc) -> models.RoomMessage:
    return models.RoomMessage(
        room_id=doc["room"], seq=int(doc["seq"]), sender=doc["sender"],
        client_id=doc["client_id"], text=doc["text"], mentions=list(doc.get("mentions", [])),
        sent_at=int(doc["sent_at"]),
    )  # fmt: skip


def post_frame(doc: Doc) -> f.RoomPost:
    return f.RoomPost(
        room_id=doc["room"], seq=int(doc["seq"]), sender=doc["sender"],
        client_id=doc["client_id"], text=doc["text"], mentions=list(doc.get("mentions", [])),
        sent_at=int(doc["sent_at"]),
    )  # fmt: skip


async def _mentioned(rooms: Rooms, room_id: str, body: str, token: str) -> list[str]:
    """User ids of the members the text mentions, in order of appearance."""
    names = mentions.parse(body, rooms.config.max_mentions)
    if not names:
        return []
    ids = await rooms.users.resolve_many(names, token)
    wanted = list(dict.fromkeys(ids[n] for n in names if n in ids))
    members = await rooms.store.get_members(room_id, wanted)
    return [u for u in wanted if u in members]


async def _original(rooms: Rooms, room_id: str, seq: int, draft: Doc) -> models.PostResult:
    """The message a client id already stands for (written now if its writer died)."""
    store = rooms.store
    doc = await store.get_message(room_id, seq)
    if doc is None or doc.get("hole"):
        await store.insert_message({**draft, "_id": message_id(room_id, seq), "seq": seq})
        doc = await store.get_message(room_id, seq)
    assert doc is not None
    rooms.metrics.messages.labels("duplicate").inc()
    return models.PostResult(**message(doc).model_dump(), duplicate=True)


async def post(
    rooms: Rooms, user_id: str, token: str, room_id: str, body: models.MessageIn
) -> models.PostResult:
    room, member, _ = await visible(rooms, room_id, user_id)
    if room["kind"] == PRIVATE:
        raise _private()
    member_of(member)
    store = rooms.store
    draft: Doc = {"room": room_id, "sender": user_id, "client_id": body.client_id}
    seen = await store.get_client_id(room_id, user_id, body.client_id)
    if seen is not None:
        return await _original(rooms, room_id, int(seen["seq"]), {**draft, "text": body.text})
    require_open(room)
    content = text.clean(body.text, "text", required=True, multiline=True)
    await rooms.limiter.hit("post", user_id, rooms.config.post_limit)
    mentioned = await _mentioned(rooms, room_id, content, token)
    draft.update(text=content, mentions=mentioned, sent_at=now_ms())
    seq = int((await store.bump_room(room_id, seq=1))["seq"])
    if not await store.claim_client_id(room_id, user_id, body.client_id, seq):
        # A copy of this message raced us and took the client id: ours is a hole.
        await store.insert_message(
            {"_id": message_id(room_id, seq), "room": room_id, "seq": seq, "hole": True}
        )
        seen = await store.get_client_id(room_id, user_id, body.client_id)
        assert seen is not None
        return await _original(rooms, room_id, int(seen["seq"]), draft)
    doc = {**draft, "_id": message_id(room_id, seq), "seq": seq}
    await store.insert_message(doc)
    rooms.metrics.messages.labels("stored").inc()
    await notifications.mentioned(rooms, room, doc, [u for u in mentioned if u != user_id])
    await push.room_post(rooms.store, rooms.pusher, room, post_frame(doc))
    return models.PostResult(**message(doc).model_dump(), duplicate=False)


async def page(
    rooms: Rooms, user_id: str, room_id: str, before: int | None, limit: int
) -> models.MessagePage:
    """Messages before ``before`` (default: the newest), newest first."""
    room, _, _ = await visible(rooms, room_id, user_id)
    if room["kind"] == PRIVATE:
        raise _private()
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
