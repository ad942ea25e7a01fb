"""Mention notifications: a list per user, newest first, with an unread count.

Each notification takes the user's next number (``users.n``, one ``$inc``)
and is stored as ``"<user>|<n>"``; reading is a list of primary keys. The
user has read everything up to ``users.read`` (moved forward only, by
``$max``), so the unread count is ``n - read`` without a scan.
"""

from __future__ import annotations

from services.common.errors import ApiError, ErrorCode
from services.rooms import models, text
from services.rooms.config import PAGE_MAX
from services.rooms.state import Rooms
from services.rooms.store import Doc, notification_id


async def mentioned(rooms: Rooms, room: Doc, msg: Doc, users: list[str]) -> None:
    """One notification per mentioned user (the sender excluded by the caller)."""
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
    await store.insert_notifications(docs)
    rooms.metrics.notifications.inc(len(docs))


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
    items = [
        models.Notification(
            seq=n, kind="mention", room_id=d["room"], room_name=d["room_name"],
            message_seq=int(d["message_seq"]), sender=d["sender"], excerpt=d["excerpt"],
            at=int(d["at"]), read=n <= read,
        )
        for n in seqs if (d := docs.get(n)) is not None
    ]  # fmt: skip
    return models.NotificationPage(
        notifications=items, unread=max(total - read, 0),
        next_before=cursor + 1 if cursor >= 1 else None,
    )  # fmt: skip


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
