"""Mention notifications: a list per user, newest first, with an unread count.

A notification is made by a mention in a public room's message (the server
parses the text) or in a private room's (the client names the mentioned
users; :mod:`services.rooms.room_messages`). Each is announced twice: a
``notification`` frame to the user's connected sockets (best effort), and a
``MentionNotice`` on ``<prefix>notifications`` for the notifier (through the
outbox: at least once).

Each notification is stored as ``"<user>|<n>"`` and reading is a list of
primary keys. The number is taken by the insert of the notification itself
(unique ``_id``: a writer tries the next number after the user's counter and
the next one again if it is taken, as long as it takes; one process writes a
user's notifications one at a time), so a number exists only with its
notification: the numbers have no gaps, whatever crashes or races, and the
unread count, ``n - read`` (the highest number minus the number read up to,
moved forward only by ``$max``), is what the list holds. ``users.n`` is raised
(``$max``) after the insert; one a process killed in between did not raise is
found by reading a few numbers past it. The same mention is one notification
however often it is handled (a record redelivered, two consumers during a
rebalance): its ``key`` (the user and the message) is a unique index.
(Until 2026-12-07 a number was taken with ``$inc`` before the notification was
written, and a handling that lost the race, or failed in between, left a number
no notification had: ``unread`` counted it for good.)
"""

from __future__ import annotations

import asyncio
from typing import Literal

from parley_contract import frames as f
from parley_contract.envelopes import MentionNotice

from services.common.errors import ApiError, ErrorCode
from services.rooms import models, text
from services.rooms.config import PAGE_MAX
from services.rooms.events import Check, Held
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
        live=bool(doc.get("live")),
    )  # fmt: skip


def frame(doc: Doc) -> f.Notification:
    return f.Notification(
        seq=int(doc["n"]), kind="mention", room_id=doc["room"], room_name=doc["room_name"],
        sender=doc["sender"], excerpt=doc["excerpt"], at=int(doc["at"]),
        message_seq=doc.get("message_seq"), server_id=doc.get("server_id"),
    )  # fmt: skip


async def _write(rooms: Rooms, draft: Doc, kind: Kind) -> Doc | None:
    """:func:`_write_held`, its notice sent at once."""
    written = await _write_held(rooms, draft, kind)
    if written is None:
        return None
    doc, held = written
    await rooms.events.release(held)
    return doc


async def _write_held(rooms: Rooms, draft: Doc, kind: Kind) -> tuple[Doc, Held] | None:
    """Write the notification ``draft`` (without ``_id`` and ``n``) under its user's next
    number, its notice for the notifier held in the outbox first (to be sent by the
    caller once it is written; dropped if it never was); None if the same mention
    (``key``) has its notification already.

    No cap on the tries: a number is lost only to another notification written there
    (a notification exists at ``n`` only once every number below it has one, so the
    next free number is past it), so every lost try is another writer's success and
    the user's list moves on with each. After a miss the next number is one past the
    one lost and past the user's counter (read again: many writers at once move it
    far). Before 2026-12-07 a writer gave up after 64 numbers: 150 posts mentioning one
    user at once left some stored, answered 500 and never announced.

    Within a process, one user's notifications are written one at a time (a lock per
    user): the race is then only between processes, and 150 at once cost 150 inserts,
    not thousands of lost tries. The notice is sent after the lock (Kafka's ack can
    take seconds)."""
    async with rooms.notifying(str(draft["user"])):
        return await _insert_next(rooms, draft, kind)


async def _insert_next(rooms: Rooms, draft: Doc, kind: Kind) -> tuple[Doc, Held] | None:
    """The insert of :func:`_write` and its notice held (to be released), or None."""
    store = rooms.store
    user_id, key = str(draft["user"]), str(draft["key"])
    # After the counter: a number past it that a killed writer took is met as taken.
    n = int((await store.get_user(user_id)).get("n", 0)) + 1
    while True:
        doc = {**draft, "_id": notification_id(user_id, n), "n": n}
        held = await rooms.events.hold_notice(
            _notice(doc, kind), Check("notifications", {"_id": doc["_id"], "key": key})
        )
        if await store.insert_notification(doc):
            await store.raise_notification_head(user_id, n)
            rooms.metrics.notifications.inc()
            return doc, held
        await rooms.events.drop(held)
        taken = (await store.notifications_at(user_id, [n])).get(n)
        if taken is None or taken.get("key") == key:
            return None  # refused for its key (or another copy took this number): made
        n = max(n, int((await store.get_user(user_id)).get("n", 0))) + 1


async def _push(rooms: Rooms, docs: list[Doc]) -> None:
    if docs:
        await rooms.pusher.send([(d["user"], None, frame(d)) for d in docs], "notification")


async def mentioned(rooms: Rooms, room: Doc, msg: Doc, users: list[str]) -> None:
    """One notification per mentioned user of a public room's message (the sender and
    the poster excluded by the caller)."""
    made: list[tuple[Doc, Held]] = []
    live = await rooms.presence.live(users)  # their notification frames reach them
    for user_id in users:
        draft = {
            "user": user_id, "key": f"{user_id}|m|{room['_id']}|{msg['seq']}",
            "kind": "mention", "room": room["_id"], "room_name": room["name"],
            "message_seq": msg["seq"], "sender": msg["sender"],
            "excerpt": text.excerpt(msg["text"]), "at": msg["sent_at"],
            "live": user_id in live,
        }  # fmt: skip
        if (written := await _write_held(rooms, draft, "public")) is not None:
            made.append(written)
    await _push(rooms, [doc for doc, _ in made])
    # The notices side by side, after the push: each waits for Kafka's ack (up to 5 s
    # while the broker is away; the outbox sends it later), and one after another a
    # post mentioning 20 users answered after 100 s, past HAProxy's timeout (a 504 for
    # a stored post).
    await asyncio.gather(*(rooms.events.release(held) for _, held in made))


async def mentioned_private(
    rooms: Rooms, room: Doc, server_id: str, sender: str, sent_at: int, user_id: str
) -> bool:
    """The notification of a private room's mention of ``user_id`` (a member, not the
    sender), made once per (user, message) however often, or however many times at
    once, the record is handled. True if it was made now."""
    store = rooms.store
    # A mention handled before 2026-12-07 was claimed in ``mention_claims`` (its
    # notification has no ``key``): a record of then, redelivered, makes no second one.
    # Not needed once the room-messages topic holds no record from before then.
    legacy = await store.mention_claim(user_id, server_id)
    if legacy is not None and await store.notifications_at(user_id, [legacy]):
        return False
    draft = {
        "user": user_id, "key": f"{user_id}|s|{server_id}", "kind": "mention",
        "room": room["_id"], "room_name": room["name"], "server_id": server_id,
        "sender": sender, "excerpt": PRIVATE_EXCERPT, "at": sent_at,
        "live": bool(await rooms.presence.live([user_id])),
    }  # fmt: skip
    doc = await _write(rooms, draft, "private")
    await _push(rooms, [doc] if doc is not None else [])
    return doc is not None


async def page(
    rooms: Rooms, user_id: str, before: int | None, limit: int
) -> models.NotificationPage:
    user = await rooms.store.get_user(user_id)
    read = int(user.get("read", 0))
    total = await rooms.store.notification_head(user_id, user)
    limit = min(limit, PAGE_MAX)
    cursor = total if before is None else min(before - 1, total)
    seqs = list(range(cursor, max(cursor - limit, 0), -1))
    docs = await rooms.store.notifications_at(user_id, seqs)
    cursor -= len(seqs)
    # A public room's message as it is now: one a moderator removed (or its author
    # deleted) shows no excerpt, an edited one its new text (the stored excerpt kept
    # what a moderator took down readable in the mentioned user's list). A deleted
    # room's messages show none either: the room answers ``room_not_found`` to everyone,
    # and its messages are kept for admins (until 2026-12-08 its mentions' text stayed
    # readable here).
    public = [
        (str(d["room"]), int(d["message_seq"])) for d in docs.values() if d.get("message_seq")
    ]
    of_rooms = await rooms.store.get_rooms(list(dict.fromkeys(r for r, _ in public)))
    gone = {r for r, room in of_rooms.items() if room.get("deleted_at") is not None}
    now = await rooms.store.texts_of([(r, s) for r, s in public if r not in gone])
    now.update({(r, s): "" for r, s in public if r in gone})
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
    """The excerpt shown: a public room's message as it is now (``now``: ``""`` when
    removed or deleted, or when its room was deleted)."""
    seq = doc.get("message_seq")
    if seq is None:
        return str(doc["excerpt"])  # a private room's: nothing the server read
    current = now.get((str(doc["room"]), int(seq)))
    return str(doc["excerpt"]) if current is None else text.excerpt(current)


async def mark_read(rooms: Rooms, user_id: str, up_to: int) -> models.Unread:
    total = await rooms.store.notification_head(user_id)
    if up_to > total:
        raise ApiError(
            ErrorCode.SEQ_NOT_ISSUED,
            f"You have {total} notifications; up_to cannot be beyond that.",
            details={"last": total},
        )
    after = await rooms.store.mark_read(user_id, up_to)
    return models.Unread(unread=max(total - int(after.get("read", 0)), 0))
