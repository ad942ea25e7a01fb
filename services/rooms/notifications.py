"""Mention notifications: a list per user, newest first, with an unread count.

A notification is made by a mention in a public room's message (the server
parses the text) or in a private room's (the client names the mentioned
users; :mod:`services.rooms.room_messages`). Each is announced twice: a
``notification`` frame to the user's connected sockets (best effort), and a
``MentionNotice`` on ``<prefix>notifications`` for the notifier (through the
outbox: at least once).

Each notification takes the user's next number (``users.n``, one ``$inc``)
and is stored as ``"<user>|<n>"``; reading is a list of primary keys. The
user has read everything up to ``users.read`` (moved forward only, by
``$max``), so the unread count is ``n - read`` without a scan.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from parley_contract import frames as f
from parley_contract.envelopes import MentionNotice

from services.common.errors import ApiError, ErrorCode
from services.rooms import models, text
from services.rooms.config import PAGE_MAX
from services.rooms.events import Check
from services.rooms.state import Rooms
from services.rooms.store import Doc, notification_id

Kind = Literal["public", "private"]

# The excerpt of a private room's mention: the server cannot read the message.
PRIVATE_EXCERPT = "mentioned you"


def _notice(doc: Doc, kind: Kind) -> MentionNotice:
    return MentionNotice(
        user=doc["user"], n=int(doc["n"]), room_id=doc["room"], room_name=doc["room_name"],
        kind=kind, sender=doc["sender"], excerpt=doc["excerpt"], at=int(doc["at"]),
        message_seq=doc.get("message_seq"), server_id=doc.get("server_id"),
    )  # fmt: skip


def frame(doc: Doc) -> f.Notification:
    return f.Notification(
        seq=int(doc["n"]), kind="mention", room_id=doc["room"], room_name=doc["room_name"],
        sender=doc["sender"], excerpt=doc["excerpt"], at=int(doc["at"]),
        message_seq=doc.get("message_seq"), server_id=doc.get("server_id"),
    )  # fmt: skip


async def _announce(rooms: Rooms, docs: list[Doc], kind: Kind) -> None:
    """Write notifications, each with its notice for the notifier held in the outbox
    first (sent once the notification is there), then push the frames."""
    held = [
        await rooms.events.hold_notice(_notice(d, kind), Check("notifications", {"_id": d["_id"]}))
        for d in docs
    ]
    await rooms.store.insert_notifications(docs)
    rooms.metrics.notifications.inc(len(docs))
    await asyncio.gather(*(rooms.events.release(h) for h in held))
    await rooms.pusher.send([(d["user"], None, frame(d)) for d in docs], "notification")


async def mentioned(rooms: Rooms, room: Doc, msg: Doc, users: list[str]) -> None:
    """One notification per mentioned user of a public room's message (the sender
    excluded by the caller)."""
    store = rooms.store
    docs = []
    for user_id in users:
        n = await store.bump_user(user_id, "n")
        docs.append(
            {
                "_id": notification_id(user_id, n), "user": user_id, "n": n, "kind": "mention",
                "room": room["_id"], "room_name": room["name"], "message_seq": msg["seq"],
                "sender": msg["sender"], "excerpt": text.excerpt(msg["text"]),
                "at": msg["sent_at"],
            }
        )  # fmt: skip
    if docs:
        await _announce(rooms, docs, "public")


async def mentioned_private(
    rooms: Rooms, room: Doc, server_id: str, sender: str, sent_at: int, user_id: str
) -> bool:
    """The notification of a private room's mention of ``user_id`` (a member, not the
    sender), made once per (user, message) however often the record comes back.
    True if it was made now."""
    store = rooms.store
    n = await store.mention_claim(user_id, server_id)
    if n is None:
        n = await store.claim_mention(user_id, server_id, await store.bump_user(user_id, "n"))
    if await store.notifications_at(user_id, [n]):
        return False  # made already (its notice went through the outbox then)
    doc = {
        "_id": notification_id(user_id, n), "user": user_id, "n": n, "kind": "mention",
        "room": room["_id"], "room_name": room["name"], "server_id": server_id,
        "sender": sender, "excerpt": PRIVATE_EXCERPT, "at": sent_at,
    }  # fmt: skip
    await _announce(rooms, [doc], "private")
    return True


async def page(
    rooms: Rooms, user_id: str, before: int | None, limit: int
) -> models.NotificationPage:
    user = await rooms.store.get_user(user_id)
    total, read = int(user.get("n", 0)), int(user.get("read", 0))
    limit = min(limit, PAGE_MAX)
    cursor = total if before is None else min(before - 1, total)
    seqs = list(range(cursor, max(cursor - limit, 0), -1))
    docs = await rooms.store.notifications_at(user_id, seqs)
    cursor -= len(seqs)
    # A public room's message as it is now: one a moderator removed (or its author
    # deleted) shows no excerpt, an edited one its new text (the stored excerpt kept
    # what a moderator took down readable in the mentioned user's list).
    now = await rooms.store.texts_of(
        [(d["room"], int(d["message_seq"])) for d in docs.values() if d.get("message_seq")]
    )
    items = [
        models.Notification(
            seq=n, kind="mention", room_id=d["room"], room_name=d["room_name"],
            message_seq=d.get("message_seq"), server_id=d.get("server_id"),
            sender=d["sender"], excerpt=_excerpt(d, now),
            at=int(d["at"]), read=n <= read,
        )
        for n in seqs if (d := docs.get(n)) is not None
    ]  # fmt: skip
    return models.NotificationPage(
        notifications=items, unread=max(total - read, 0),
        next_before=cursor + 1 if cursor >= 1 else None,
    )  # fmt: skip


def _excerpt(doc: Doc, now: dict[tuple[str, int], str]) -> str:
    seq = doc.get("message_seq")
    if seq is None:
        return str(doc["excerpt"])  # a private room's: nothing the server read
    current = now.get((str(doc["room"]), int(seq)))
    return str(doc["excerpt"]) if current is None else text.excerpt(current)


async def mark_read(rooms: Rooms, user_id: str, up_to: int) -> models.Unread:
    user = await rooms.store.get_user(user_id)
    total = int(user.get("n", 0))
    if up_to > total:
        raise ApiError(
            ErrorCode.SEQ_NOT_ISSUED,
            f"You have {total} notifications; up_to cannot be beyond that.",
            details={"last": total},
        )
    after = await rooms.store.mark_read(user_id, up_to)
    return models.Unread(unread=max(total - int(after.get("read", 0)), 0))
