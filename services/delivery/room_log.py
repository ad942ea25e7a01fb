"""A private room's messages in one log per room (docs/rooms.md, "The room log").

A private room's message is one sender-key ciphertext, the same for every
member device. It is stored once, in the room's log (MongoDB collection
``room_log``), numbered in the room (``seq`` 1, 2, 3, ... with no gaps), and
pushed once to every pod on the room channel with the member list
(:func:`~services.common.routing.multicast`): each pod writes the frame to the
members' sockets it holds. Nothing is written per member device: a device
keeps its own place in each room's log (the last ``seq`` it has) and reads
what it missed with :meth:`RoomLog.page` (``GET /delivery/v1/rooms/{room}/log``).
Before this log every member device's copy was an inbox item, numbered,
indexed, acknowledged and deleted one by one: 35 to 62 µs of server CPU per
member-message (docs/BENCHMARKS.md, "Overlapping sends").

Order and visibility. A message's number is the room's last number plus one,
read from the log itself (the greatest ``_id`` of the room, ``"<room>|<seq,
16 digits>"``), and the insert of that ``_id`` is what claims it: two writers
that read the same last number cannot both insert it (the loser reads again).
So a number becomes visible only after every smaller one is: a device that
read up to ``seq`` n and goes on from n misses nothing, whatever writer was
slow (a consumer that lost its partitions mid-batch included).

Once per message. ``server_id`` (a hash of the room, the sender and the
client id, :func:`parley_contract.envelopes.room_server_id`) has a unique
index: a record consumed again (a worker killed before its commit) or a
resend finds its message stored, takes no second number, and is pushed again
(a push may have been lost with the worker): a device that gets a frame twice
keeps it once (its ``server_id``).

Removal. A removed message (``<p>:gone:{<server id>}``, set before its
tombstones are sent, services/delivery/moderation.py) keeps its number with
no body (``gone``): the writer checks the mark after its insert, and the
removal blanks the entry after setting the mark, so whichever comes second
blanks it. Pages leave blanked entries out.

Who reads what. The log route asks the rooms service, with the caller's
token, whether the caller is a member of the room (a private room they are not
in is ``room_not_found``, as everywhere) and since when: a page holds only
messages stored since the member joined (``joined_at``), and since the
``since`` the device gives (a device linked later asks from its link).
Entries older than ``inbox_expiry_s`` are deleted by the expiry job, as
unacknowledged inbox items are.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from parley_contract import envelopes as e
from parley_contract import frames as f
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from services.delivery.moderation_keys import ModerationKeys, TaggedFields
from services.delivery.store import DeliveryStore

log = logging.getLogger(__name__)

Doc = dict[str, Any]

# Attempts at numbering a room's batch when other writers keep taking its numbers.
_ROUNDS = 8


def entry_id(room: str, seq: int) -> str:
    return f"{room}|{seq:016d}"


@dataclass(slots=True)
class Appended:
    """What one batch of room records did."""

    stored: int = 0
    repeats: int = 0
    removed: int = 0
    pushes: list[tuple[list[str], f.RoomMessage]] | None = None
    """(member users, frame) to push: the new messages and the repeats still there."""


class RoomLog:
    def __init__(self, store: DeliveryStore, keys: ModerationKeys) -> None:
        self.store = store
        self.keys = keys
        self.log: AsyncCollection[Doc] = store.db["room_log"]

    async def ensure_indexes(self) -> None:
        await self.log.create_index("server_id", unique=True)
        await self.log.create_index([("room", ASCENDING), ("stored_at", ASCENDING)])
        await self.log.create_index("stored_at")

    # Writing ----------------------------------------------------------------
    async def append(self, envs: Sequence[e.RoomEnvelope], now: float) -> Appended:
        """Store ``envs`` (in order: a room's records come from one partition) in their
        rooms' logs; what to push for them."""
        out = Appended(pushes=[])
        if not envs:
            return out
        by_id: dict[str, e.RoomEnvelope] = {}
        for env in envs:
            by_id.setdefault(env.server_id, env)  # a record twice in one batch: once
        docs = await self._existing(list(by_id))
        fresh: dict[str, list[e.RoomEnvelope]] = {}
        for sid, env in by_id.items():
            if sid in docs:
                out.repeats += 1
            else:
                fresh.setdefault(env.room, []).append(env)
        for room, todo in fresh.items():
            for doc in await self._insert(room, todo, now):
                if doc["server_id"] in docs:
                    out.repeats += 1
                else:
                    out.stored += 1
                docs[doc["server_id"]] = doc
        _, gone = await self.store.hot.claims_and_gone([], list(docs))
        if gone:
            await self.blank(sorted(gone))
            out.removed = len(gone)
        assert out.pushes is not None
        for sid, env in by_id.items():
            entry = docs.get(sid)
            if entry is None or sid in gone or entry.get("gone"):
                continue
            out.pushes.append((_members(env), frame_of(entry)))
        return out

    async def _existing(self, server_ids: list[str]) -> dict[str, Doc]:
        found: dict[str, Doc] = {}
        async for doc in self.log.find({"server_id": {"$in": server_ids}}):
            found[doc["server_id"]] = doc
        return found

    async def _insert(self, room: str, envs: list[e.RoomEnvelope], now: float) -> list[Doc]:
        """Number and insert one room's new messages; returns their entries (an entry
        another writer stored meanwhile is returned as it stored it)."""
        stored: list[Doc] = []
        todo = list(envs)
        for _ in range(_ROUNDS):
            last = await self.head(room)
            batch = [self._doc(env, last + i + 1, now) for i, env in enumerate(todo)]
            try:
                await self.log.insert_many(batch, ordered=True)
                return stored + batch
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors") or []
                first = int(errors[0]["index"]) if errors else 0
                if any(int(err.get("code", 0)) != 11000 for err in errors):
                    raise
            # The entries before the first error are in; from there another writer took
            # the number, or stored the message: read again and go on.
            stored += batch[:first]
            rest = todo[first:]
            taken = await self._existing([env.server_id for env in rest])
            stored += list(taken.values())
            todo = [env for env in rest if env.server_id not in taken]
            if not todo:
                return stored
        raise RuntimeError(f"room {room}: no number after {_ROUNDS} tries")

    async def head(self, room: str) -> int:
        """The room's last number (0: an empty log)."""
        doc = await self.log.find_one(
            {"_id": {"$gt": f"{room}|", "$lt": f"{room}|~"}}, {"_id": 1},
            sort=[("_id", DESCENDING)],
        )  # fmt: skip
        return 0 if doc is None else int(doc["_id"].rpartition("|")[2])

    def _doc(self, env: e.RoomEnvelope, seq: int, now: float) -> Doc:
        doc: Doc = {
            "_id": entry_id(env.room, seq), "room": env.room, "seq": seq,
            "server_id": env.server_id, "from": env.from_, "from_device": env.from_device,
            "body": env.body, "sent_at": env.sent_at, "stored_at": now,
            "mentions": list(env.mentions),
        }  # fmt: skip
        if env.commitment is not None:
            doc["commitment"] = env.commitment
            doc["franking_tag"] = self.keys.tag(room_tag_fields(
                commitment=env.commitment, server_id=env.server_id, sender=env.from_,
                sender_device=env.from_device, sent_at=env.sent_at, room=env.room,
            ))  # fmt: skip
        return doc

    async def blank(self, server_ids: Sequence[str]) -> int:
        """Take the bodies of removed messages out of their rooms' logs (their numbers
        stay); how many entries changed."""
        if not server_ids:
            return 0
        res = await self.log.update_many(
            {"server_id": {"$in": list(server_ids)}, "gone": {"$ne": True}},
            {"$set": {"gone": True, "body": "", "mentions": []},
             "$unset": {"commitment": "", "franking_tag": ""}},
        )  # fmt: skip
        return int(res.modified_count)

    async def purge_expired(self, cutoff: float) -> int:
        """Delete entries stored before ``cutoff`` (seconds)."""
        res = await self.log.delete_many({"stored_at": {"$lt": cutoff}})
        return int(res.deleted_count)

    # Reading ----------------------------------------------------------------
    async def page(
        self, room: str, after: int, since_ms: int, limit: int
    ) -> tuple[list[f.RoomMessage], int, bool]:
        """Up to ``limit`` messages of ``room`` after ``after``, stored at or after
        ``since_ms``, oldest first; returns them, the number to read after next (the
        last one this page looked at) and whether there may be more."""
        start = after
        if since_ms > 0:
            first = await self.log.find_one(
                {"room": room, "stored_at": {"$gte": since_ms / 1000}}, {"seq": 1},
                sort=[("stored_at", ASCENDING)],
            )  # fmt: skip
            if first is None:
                return [], max(after, await self.head(room)), False
            start = max(after, int(first["seq"]) - 1)
        docs = [
            d async for d in self.log.find(
                {"_id": {"$gt": entry_id(room, start), "$lt": f"{room}|~"}},
                sort=[("_id", ASCENDING)], limit=limit + 1,
            )
        ]  # fmt: skip
        more = len(docs) > limit
        docs = docs[:limit]
        last = int(docs[-1]["seq"]) if docs else start
        return [frame_of(d) for d in docs if not d.get("gone")], last, more


def room_tag_fields(
    *, commitment: str, server_id: str, sender: str, sender_device: int, sent_at: int, room: str
) -> TaggedFields:
    """What a private room message's reporting tag binds: the message as the server
    accepted it for the room (``recipient`` empty: one tag for every member,
    docs/crypto.md "Message franking")."""
    return TaggedFields(
        commitment=commitment, server_id=server_id, sender=sender,
        sender_device=int(sender_device), recipient="", sent_at=int(sent_at),
        conversation=e.room_conversation(room),
    )  # fmt: skip


def frame_of(doc: Doc) -> f.RoomMessage:
    return f.RoomMessage(
        room=doc["room"], seq=int(doc["seq"]), server_id=doc["server_id"], from_=doc["from"],
        from_device=int(doc["from_device"]), body=doc["body"], sent_at=int(doc["sent_at"]),
        commitment=doc.get("commitment"), mentions=list(doc.get("mentions") or []) or None,
        franking_tag=doc.get("franking_tag"),
    )  # fmt: skip


def _members(env: e.RoomEnvelope) -> list[str]:
    """The users a message is pushed to: the members whose devices it was sent to
    (the gateway's targets), and the sender (their other sockets)."""
    users = dict.fromkeys([env.from_])
    for inbox in e.room_targets(env):
        users[inbox.rpartition(".")[0]] = None
    return list(users)


__all__ = ["Appended", "RoomLog", "entry_id", "frame_of", "room_tag_fields"]
