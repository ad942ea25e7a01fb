"""All of the rooms service's MongoDB and Kafka I/O (docs/rooms.md, "Storage").

Collections (database ``<db_prefix>rooms``). Every hot read is by ``_id``,
by equality or by a list of ids (``$in``): the embedded MongoDB server scans
its tables for ranges and secondary-index equality, and answers ``_id``
look-ups from its index (docs/embedded.md). Lists are therefore kept as
numbered slots whose counter says how far to read:

``rooms``          ``_id`` room id: name, topic, kind, state, owner, members
                   (count), ``version`` (one more with each event), ``slots``
                   (roster slots handed out), ``seq`` (messages handed out).
``members``        ``_id`` ``"<room>|<user>"``: role, ``slot`` (its roster
                   slot), ``user_slot`` (its slot in the user's room list),
                   joined_at. The truth of membership.
``roster``         ``_id`` ``"<room>|<slot>"``: user. A room's member list in
                   join order; an entry counts only while the member document
                   names the same slot (a leave, or a lost race, leaves holes).
``invitations``    ``_id`` ``"<room>|<user>"``: by, at, ``user_slot``.
``bans``           ``_id`` ``"<room>|<user>"``: room, user, by, at. Who may not
                   join, accept or be invited (a room's list pages by ``_id``).
``user_lists``     ``_id`` ``"<user>|<list>|<n>"`` (list ``r``: rooms,
                   ``i``: invitations): room. A user's rooms, newest first;
                   an entry counts only while the member (invitation)
                   document names the same ``user_slot``.
``users``          ``_id`` user: ``r``, ``i`` (slots handed out), ``n`` (the
                   highest notification written, raised after it), ``read``
                   (notifications read up to).
``directory``      ``_id`` ``"<name key>|<room>"``: public rooms by name.
``messages``       ``_id`` ``"<room>|<seq>"``: sender, client_id, text,
                   mentions, sent_at, ``unannounced`` (until its mentions and
                   push are made) (or ``hole: true``).
``client_ids``     ``_id`` ``"<room>|<sender>|<client id>"``: seq (resends).
``revisions``      ``_id`` ``"<room>|<seq>|<rev>"``: every version of a public
                   room's message once it changed (rev 1 is the original),
                   with who changed it, in which role, when and why
                   (services.rooms.moderation). Never updated or deleted.
``notifications``  ``_id`` ``"<user>|<n>"``: room, message, sender, excerpt,
                   ``key`` (unique: the user and the message, one notification
                   per mention). Its insert takes the number: no gaps.
``mention_claims`` ``_id`` ``"<user>|<server id>"``: ``n``, the notification a
                   private room's mention made before 2026-12-07 (read only).
``outbox``         events and notices not yet confirmed by Kafka
                   (services.rooms.events).
``announcements``  ``_id`` ``"<room>|<seq>"``: a public room's message with
                   mentions whose announcement is not yet known made: ``due``
                   (when a sweep may take it over), ``at`` (written).
                   Deleted once it is (services.rooms.timeline).

Numbers in ids are fixed-width decimals, so ids sort in numeric order. User
and room ids hold no ``|``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from aiokafka.errors import KafkaError
from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.common.clients import KafkaProducerHandle, Topics, in_id_order
from services.common.config import Settings
from services.common.outbox import Outbox

log = logging.getLogger(__name__)

Doc = dict[str, Any]

# Ids read per $in query.
ID_CHUNK = 500
# Notification numbers read at once past ``users.n`` (RoomStore.notification_head).
HEAD_PROBE = 8


def _n(n: int) -> str:
    return f"{n:012d}"


def member_id(room_id: str, user_id: str) -> str:
    return f"{room_id}|{user_id}"


def roster_id(room_id: str, slot: int) -> str:
    return f"{room_id}|{_n(slot)}"


def slot_of(entry: Doc) -> int:
    """The slot of a roster or user list entry (the number its ``_id`` ends with)."""
    return int(str(entry["_id"]).rsplit("|", 1)[1])


def list_id(user_id: str, kind: str, n: int) -> str:
    return f"{user_id}|{kind}|{_n(n)}"


def message_id(room_id: str, seq: int) -> str:
    return f"{room_id}|{_n(seq)}"


def client_key(room_id: str, sender: str, client_id: str) -> str:
    return f"{room_id}|{sender}|{client_id}"


def revision_id(room_id: str, seq: int, rev: int) -> str:
    return f"{room_id}|{_n(seq)}|{rev:06d}"


def notification_id(user_id: str, n: int) -> str:
    return f"{user_id}|{_n(n)}"


def directory_id(name_key: str, room_id: str) -> str:
    return f"{name_key}|{room_id}"


def now_ms() -> int:
    return int(time.time() * 1000)


class RoomStore:
    def __init__(self, db: AsyncDatabase[Doc], kafka: KafkaProducerHandle, settings: Settings):
        self.db = db
        self.rooms: AsyncCollection[Doc] = db["rooms"]
        self.members: AsyncCollection[Doc] = db["members"]
        self.roster: AsyncCollection[Doc] = db["roster"]
        self.invitations: AsyncCollection[Doc] = db["invitations"]
        self.bans: AsyncCollection[Doc] = db["bans"]
        self.user_lists: AsyncCollection[Doc] = db["user_lists"]
        self.users: AsyncCollection[Doc] = db["users"]
        self.directory: AsyncCollection[Doc] = db["directory"]
        self.messages: AsyncCollection[Doc] = db["messages"]
        self.client_ids: AsyncCollection[Doc] = db["client_ids"]
        self.revisions: AsyncCollection[Doc] = db["revisions"]
        self.notifications: AsyncCollection[Doc] = db["notifications"]
        self.outbox = Outbox(db["outbox"])
        self.announcements: AsyncCollection[Doc] = db["announcements"]
        self.mention_claims: AsyncCollection[Doc] = db["mention_claims"]
        self.handovers: AsyncCollection[Doc] = db["handovers"]
        self.kafka = kafka
        self.topic = Topics(settings).rooms
        self.notices_topic = Topics(settings).notifications
        self.send_timeout_s = max(settings.dependency_timeout_ms, 5000) / 1000

    async def ensure_indexes(self) -> None:
        """The outbox's due time, and the notifications' ``key`` (unique: one notification
        per mention, however often it is handled; sparse: those written before it have
        none); everything else is found by ``_id``."""
        await self.outbox.ensure_indexes()
        await self.notifications.create_index("key", unique=True, sparse=True)
        await self.announcements.create_index("due")

    # -- helpers -------------------------------------------------------------------------

    async def _by_ids(self, coll: AsyncCollection[Doc], ids: Sequence[str]) -> dict[str, Doc]:
        """The documents of ``ids``, ``ID_CHUNK`` ids a query, the queries side by side (a
        room of 5,000's members: ten round trips at once, not one after another)."""
        chunks = [list(ids[i : i + ID_CHUNK]) for i in range(0, len(ids), ID_CHUNK)]
        found = await asyncio.gather(
            *(coll.find({"_id": {"$in": chunk}}).to_list() for chunk in chunks)
        )
        return {str(doc["_id"]): doc for docs in found for doc in docs}

    async def _insert_new(self, coll: AsyncCollection[Doc], doc: Doc) -> bool:
        """Insert; False if the ``_id`` is taken."""
        try:
            await coll.insert_one(doc)
        except DuplicateKeyError:
            return False
        return True

    async def check(self, coll: str, query: Doc, exists: bool) -> bool:
        """Does a document matching ``query`` exist (``exists``) or not? (outbox checks)"""
        found = await self.db[coll].find_one(query, {"_id": 1})
        return (found is not None) == exists

    # -- hand-overs under way (members.transfer) -------------------------------------------

    async def begin_handover(self, room_id: str, by: str, to: str, at: int) -> bool:
        """Record a hand-over before its first write; False: one is under way."""
        return await self._insert_new(
            self.handovers, {"_id": room_id, "by": by, "to": to, "at": at}
        )

    async def claim_handover(
        self, room_id: str, by: str, to: str, at: int, stale_before: int
    ) -> bool:
        """Record a hand-over (an admin's choice of owner), taking the place of one begun
        before ``stale_before`` (cut short: its process is gone); False: a hand-over
        begun since is under way."""
        if await self.begin_handover(room_id, by, to, at):
            return True
        taken = await self.handovers.find_one_and_replace(
            {"_id": room_id, "at": {"$lt": stale_before}}, {"by": by, "to": to, "at": at}
        )
        return taken is not None

    async def set_handover_from(self, room_id: str, by: str) -> None:
        """The owner a recorded hand-over steps down (read again once it was recorded)."""
        await self.handovers.update_one({"_id": room_id}, {"$set": {"by": by}})

    async def end_handover(self, room_id: str) -> None:
        await self.handovers.delete_one({"_id": room_id})

    async def stale_handovers(self, before_ms: int, limit: int) -> list[Doc]:
        """Hand-overs begun before ``before_ms`` and never ended (a process killed in the
        middle): a scan of a collection that holds only the hand-overs under way."""
        return await self.handovers.find({"at": {"$lt": before_ms}}).limit(limit).to_list()

    # -- rooms ---------------------------------------------------------------------------

    async def insert_room(self, doc: Doc) -> None:
        await self.rooms.insert_one(doc)

    async def get_room(self, room_id: str) -> Doc | None:
        return await self.rooms.find_one({"_id": room_id})

    async def get_rooms(self, room_ids: Sequence[str]) -> dict[str, Doc]:
        return await self._by_ids(self.rooms, room_ids)

    async def bump_room(self, room_id: str, **inc: int) -> Doc:
        """``$inc`` counters of a room (``version``, ``slots``, ``members``, ``seq``); the
        room after."""
        doc = await self.rooms.find_one_and_update(
            {"_id": room_id}, {"$inc": inc}, return_document=ReturnDocument.AFTER
        )
        if doc is None:
            raise LookupError(room_id)
        return doc

    async def change_room(self, room: Doc, fields: Doc) -> Doc | None:
        """Set ``fields`` and take the room's next ``version`` in the same write, only if the
        room is still at the version of ``room`` (as it was read): the room after, or None
        if it changed since (another change took that version)."""
        version = room["version"] if "version" in room else {"$exists": False}
        return await self.rooms.find_one_and_update(
            {"_id": room["_id"], "version": version}, {"$set": fields, "$inc": {"version": 1}},
            return_document=ReturnDocument.AFTER,
        )  # fmt: skip

    async def set_room(self, room_id: str, fields: Doc) -> None:
        await self.rooms.update_one({"_id": room_id}, {"$set": fields})

    async def clear_owner(self, room_id: str, user_id: str) -> None:
        """The room has no owner, if its ``owner`` still names ``user_id`` (not one named
        since)."""
        await self.rooms.update_one({"_id": room_id, "owner": user_id}, {"$set": {"owner": None}})

    async def add_to_directory(self, key: str, room_id: str, name: str) -> None:
        await self.directory.update_one(
            {"_id": directory_id(key, room_id)},
            {"$set": {"room_id": room_id, "name_key": key, "name": name}},
            upsert=True,
        )

    async def remove_from_directory(self, key: str, room_id: str) -> None:
        await self.directory.delete_one({"_id": directory_id(key, room_id)})

    async def remove_directory_entry(self, entry_id: str) -> None:
        await self.directory.delete_one({"_id": entry_id})

    async def all_rooms(self, query: Doc, after: str, limit: int) -> list[Doc]:
        """Every room (admins), in id order after ``after``, matching ``query``: a scan,
        acceptable for an admin's search (docs/moderation.md)."""
        return await in_id_order(self.rooms, {**query, "_id": {"$gt": after}}, limit)

    async def search_directory(self, pattern: str | None, after: str, limit: int) -> list[Doc]:
        """Directory entries after ``after`` in name order, whose key matches ``pattern``
        (a regular expression already escaped), at most ``limit``."""
        query: Doc = {"_id": {"$gt": after}}
        if pattern is not None:
            query["name_key"] = {"$regex": pattern}
        return await in_id_order(self.directory, query, limit)

    # -- per-user counters ---------------------------------------------------------------

    async def bump_user(self, user_id: str, field: str) -> int:
        doc = await self.users.find_one_and_update(
            {"_id": user_id}, {"$inc": {field: 1}}, upsert=True,
            return_document=ReturnDocument.AFTER,
        )  # fmt: skip
        assert doc is not None
        return int(doc[field])

    async def get_user(self, user_id: str) -> Doc:
        return await self.users.find_one({"_id": user_id}) or {"_id": user_id}

    async def mark_read(self, user_id: str, up_to: int) -> Doc:
        doc = await self.users.find_one_and_update(
            {"_id": user_id}, {"$max": {"read": up_to}}, upsert=True,
            return_document=ReturnDocument.AFTER,
        )  # fmt: skip
        assert doc is not None
        return doc

    # -- members, roster, user lists -----------------------------------------------------

    async def get_member(self, room_id: str, user_id: str) -> Doc | None:
        return await self.members.find_one({"_id": member_id(room_id, user_id)})

    async def get_members(self, room_id: str, user_ids: Iterable[str]) -> dict[str, Doc]:
        ids = [member_id(room_id, u) for u in user_ids]
        return {str(d["user"]): d for d in (await self._by_ids(self.members, ids)).values()}

    async def memberships(self, user_id: str, room_ids: Iterable[str]) -> dict[str, Doc]:
        ids = [member_id(r, user_id) for r in room_ids]
        return {str(d["room"]): d for d in (await self._by_ids(self.members, ids)).values()}

    async def has_other_members(self, room_id: str, user_id: str) -> bool:
        """Does the room have a member other than ``user_id``? Read from the member
        documents (an ``_id`` range, at most two of them), not from the count, which a
        process killed mid-join or mid-leave leaves wrong."""
        query: Doc = {"_id": {"$gt": member_id(room_id, ""), "$lt": room_id + "}"}}
        return any(d["user"] != user_id for d in await in_id_order(self.members, query, 2))

    async def add_roster(self, room_id: str, slot: int, user_id: str) -> None:
        await self.roster.insert_one({"_id": roster_id(room_id, slot), "user": user_id})

    async def add_to_list(self, user_id: str, kind: str, n: int, room_id: str) -> None:
        await self.user_lists.insert_one({"_id": list_id(user_id, kind, n), "room": room_id})

    async def insert_member(self, doc: Doc) -> bool:
        """The commit point of a join: False if the user is a member already."""
        return await self._insert_new(self.members, doc)

    # A member's ``role_v``: the room version of the last change of its role (none: not
    # changed since the join), written with the role. Given the membership as it was
    # ``read``, a role change or a removal is written only if ``role_v`` is still the
    # same: two changes of one member land in the order of their versions, or the one
    # that read the older membership is refused.

    @staticmethod
    def _membership(room_id: str, user_id: str, slot: int, read: Doc | None) -> Doc:
        match: Doc = {"_id": member_id(room_id, user_id), "slot": slot}
        if read is not None:
            role_v = read.get("role_v")
            match["role_v"] = {"$exists": False} if role_v is None else role_v
        return match

    async def delete_member(
        self, room_id: str, user_id: str, slot: int, roles: Collection[str] | None = None,
        read: Doc | None = None,
    ) -> bool:  # fmt: skip
        """Remove exactly this membership (not a newer one made meanwhile); ``roles``:
        only while its role is one of them (not one promoted meanwhile); ``read``: only if
        its role did not change since it was read."""
        match = self._membership(room_id, user_id, slot, read)
        if roles is not None:
            match["role"] = {"$in": list(roles)}
        result = await self.members.delete_one(match)
        return result.deleted_count == 1

    async def set_role(
        self, room_id: str, user_id: str, slot: int, role: str, was: str | None = None,
        read: Doc | None = None, version: int | None = None,
    ) -> bool:  # fmt: skip
        """Set the member's role (``was``: only if it is that now; ``read``: only if it
        did not change since it was read), at room ``version``."""
        match = self._membership(room_id, user_id, slot, read)
        if was is not None:
            match["role"] = was
        fields: Doc = {"role": role} if version is None else {"role": role, "role_v": version}
        result = await self.members.update_one(match, {"$set": fields})
        return result.matched_count == 1

    async def forget_slots(self, room_id: str, user_id: str, slot: int | None,
                           kind: str, user_slot: int | None) -> None:  # fmt: skip
        """Drop a roster entry and a user-list entry (holes are skipped anyway)."""
        if slot is not None:
            await self.roster.delete_one({"_id": roster_id(room_id, slot)})
        if user_slot is not None:
            await self.user_lists.delete_one({"_id": list_id(user_id, kind, user_slot)})

    async def roster_after(self, room_id: str, after: int, limit: int | None) -> list[Doc]:
        """The first ``limit`` (None: all) roster entries of the room with a slot after
        ``after``, in slot order: an ``_id`` range read as an aggregation
        (``clients.in_id_order``, answered from the index by the embedded server too), so
        what it costs follows the entries there are (a leave deletes its own), not the
        slots ever handed out. Listing the ids of every slot read a room that thousands
        joined and left, 500 holes a round trip, on every member page and push."""
        query: Doc = {"_id": {"$gt": roster_id(room_id, after), "$lt": room_id + "}"}}
        return await in_id_order(self.roster, query, limit)

    async def listed(self, room_id: str, entries: Sequence[Doc]) -> list[tuple[int, Doc]]:
        """Of roster ``entries`` (in slot order), those that count: ``(slot, member
        document)`` where the member document names that slot (a join under way has no
        document yet; an entry a crash left behind names a membership that ended or a
        newer one)."""
        docs = await self.get_members(room_id, [str(x["user"]) for x in entries])
        out: list[tuple[int, Doc]] = []
        for x in entries:
            m = docs.get(str(x["user"]))
            if m is not None and int(m["slot"]) == slot_of(x):
                out.append((slot_of(x), m))
        return out

    async def list_before(
        self, user_id: str, kind: str, before: int | None, limit: int
    ) -> list[Doc]:
        """The first ``limit`` entries of a user's list with a slot below ``before``
        (None: all), newest first: an ``_id`` range read as an aggregation sorted
        backwards (answered from the index by the embedded server too, as
        ``clients.in_id_order`` is), so what it costs follows the entries there are (a
        withdrawn or declined invitation deletes its own), not the slots ever handed out."""
        high = list_id(user_id, kind, before) if before is not None else f"{user_id}|{kind}}}"
        pipeline: list[Doc] = [
            {"$match": {"_id": {"$gt": f"{user_id}|{kind}|", "$lt": high}}},
            {"$sort": {"_id": -1}},
            {"$limit": limit},
        ]
        return await (await self.user_lists.aggregate(pipeline)).to_list()

    async def list_entries(self, user_id: str, kind: str, ns: Sequence[int]) -> list[Doc]:
        ids = [list_id(user_id, kind, n) for n in ns]
        found = await self._by_ids(self.user_lists, ids)
        return [found[i] for i in ids if i in found]

    # -- bans ----------------------------------------------------------------------------

    async def get_ban(self, room_id: str, user_id: str) -> Doc | None:
        return await self.bans.find_one({"_id": member_id(room_id, user_id)})

    async def insert_ban(self, doc: Doc) -> bool:
        return await self._insert_new(self.bans, doc)

    async def delete_ban(self, room_id: str, user_id: str) -> Doc | None:
        return await self.bans.find_one_and_delete({"_id": member_id(room_id, user_id)})

    # A ban's ``n``: how many ban requests stand behind it (written as 1 by the one
    # that inserts it). A request refused after it wrote or joined the ban (its target
    # was promoted meanwhile) withdraws; the last one out deletes the ban, so a refused
    # moderator's ban never takes away the owner's ban of the same user at once.

    async def join_ban(self, room_id: str, user_id: str) -> Doc | None:
        """One more request stands behind the ban of ``user_id``: the ban (None: there
        is none). A ban written before ``n`` existed counts its own request too."""
        query, more = {"_id": member_id(room_id, user_id)}, {"$inc": {"n": 1}}
        doc = await self.bans.find_one_and_update(query, more, return_document=ReturnDocument.AFTER)
        if doc is not None and doc["n"] == 1:  # there was no count: its writer's 1 too
            doc = await self.bans.find_one_and_update(
                query, more, return_document=ReturnDocument.AFTER
            )
        return doc

    async def withdraw_from_ban(self, room_id: str, user_id: str) -> None:
        """A request that wrote or joined the ban of ``user_id`` is refused: one fewer
        stands behind it, and the last one out deletes it."""
        key = member_id(room_id, user_id)
        for _ in range(16):  # each miss is another request's change in between
            if await self.bans.find_one_and_update(
                {"_id": key, "n": {"$gt": 1}}, {"$inc": {"n": -1}}
            ):
                return
            if await self.bans.find_one_and_delete({"_id": key, "n": 1}):
                return
            if await self.get_ban(room_id, user_id) is None:
                return  # lifted meanwhile
        log.warning("a refused ban request could not withdraw", extra={"room_id": room_id})

    async def ban_page(self, room_id: str, after: str, limit: int) -> list[Doc]:
        """A room's bans in user id order, after ``after``: an ``_id`` range (``}``
        follows ``|``), as the directory pages; read by moderators only."""
        query: Doc = {"_id": {"$gt": member_id(room_id, after), "$lt": room_id + "}"}}
        return await in_id_order(self.bans, query, limit)

    # -- invitations ---------------------------------------------------------------------

    async def get_invitation(self, room_id: str, user_id: str) -> Doc | None:
        return await self.invitations.find_one({"_id": member_id(room_id, user_id)})

    async def get_invitations(self, user_id: str, room_ids: Iterable[str]) -> dict[str, Doc]:
        ids = [member_id(r, user_id) for r in room_ids]
        return {str(d["room"]): d for d in (await self._by_ids(self.invitations, ids)).values()}

    async def insert_invitation(self, doc: Doc) -> bool:
        return await self._insert_new(self.invitations, doc)

    async def delete_invitation(self, room_id: str, user_id: str) -> Doc | None:
        return await self.invitations.find_one_and_delete({"_id": member_id(room_id, user_id)})

    # -- messages ------------------------------------------------------------------------

    async def get_client_id(self, room_id: str, sender: str, client_id: str) -> Doc | None:
        return await self.client_ids.find_one({"_id": client_key(room_id, sender, client_id)})

    async def claim_client_id(self, room_id: str, sender: str, client_id: str, seq: int) -> bool:
        """Record that (sender, client id) is message ``seq``; False if it was already."""
        return await self._insert_new(
            self.client_ids,
            {"_id": client_key(room_id, sender, client_id), "seq": seq, "at": now_ms()},
        )

    async def move_client_id(
        self, room_id: str, sender: str, client_id: str, seq: int, to: int
    ) -> bool:
        """(sender, client id) stands for message ``to`` now, if it stood for ``seq``
        (a page took that number for a hole); False if another copy moved it first."""
        result = await self.client_ids.update_one(
            {"_id": client_key(room_id, sender, client_id), "seq": seq}, {"$set": {"seq": to}}
        )
        return result.matched_count == 1

    async def settle_seqs(
        self, room_id: str, seen_at: int | None, settled: int, head: int, at: int
    ) -> None:
        """The room's timeline watermark (services.rooms.timeline): numbers up to
        ``settled`` are settled, and the head was ``head`` at ``at``; only if no reader
        moved it since ``seen_at`` (None: never)."""
        match: Doc = {"_id": room_id}
        match["seq_seen_at"] = {"$exists": False} if seen_at is None else seen_at
        await self.rooms.update_one(
            match, {"$set": {"seq_settled": settled, "seq_seen": head, "seq_seen_at": at}}
        )

    async def insert_message(self, doc: Doc) -> bool:
        """False if that seq is already written (a resend that raced, or a hole marker)."""
        return await self._insert_new(self.messages, doc)

    async def mark_announced(self, room_id: str, seq: int) -> None:
        """The message's mentions and push are made: its ``unannounced`` mark goes."""
        await self.messages.update_one(
            {"_id": message_id(room_id, seq), "unannounced": {"$exists": True}},
            {"$unset": {"unannounced": ""}},
        )

    async def release_announcement(self, room_id: str, seq: int) -> None:
        """Give the announcement up (it failed): the next resend takes it at once."""
        await self.messages.update_one(
            {"_id": message_id(room_id, seq), "unannounced": {"$exists": True}},
            {"$set": {"unannounced": 0}},
        )

    async def take_announcement(self, room_id: str, seq: int, stale_ms: int) -> bool:
        """Take over the announcement of a message whose writer has had it longer than
        ``stale_ms`` (``unannounced``: when it was taken); True for the one caller that
        does (atomic), False while it is fresh or done."""
        now = now_ms()
        doc = await self.messages.find_one_and_update(
            {"_id": message_id(room_id, seq), "unannounced": {"$lt": now - stale_ms}},
            {"$set": {"unannounced": now}},
        )
        return doc is not None

    async def hold_announcement(self, room_id: str, seq: int, due_s: float) -> None:
        """Record that the message at ``seq`` is to be announced (before it is written): a
        sweep takes the announcement over from ``due_s`` (epoch seconds) if it is still
        not made then."""
        now = time.time()
        await self.announcements.update_one(
            {"_id": message_id(room_id, seq)},
            {"$set": {"room": room_id, "seq": seq, "due": due_s}, "$setOnInsert": {"at": now}},
            upsert=True,
        )

    async def drop_announcement(self, room_id: str, seq: int) -> None:
        await self.announcements.delete_one({"_id": message_id(room_id, seq)})

    async def lease_announcement(self, lease_s: float) -> Doc | None:
        """The next due announcement record, leased for ``lease_s`` (one sweep takes it)."""
        now = time.time()
        return await self.announcements.find_one_and_update(
            {"due": {"$lte": now}}, {"$set": {"due": now + lease_s}},
            return_document=ReturnDocument.AFTER,
        )  # fmt: skip

    async def insert_messages(self, docs: list[Doc]) -> None:
        """Many at once (tests and imports seed timelines this way)."""
        for i in range(0, len(docs), ID_CHUNK):
            await self.messages.insert_many(docs[i : i + ID_CHUNK], ordered=False)

    async def get_message(self, room_id: str, seq: int) -> Doc | None:
        return await self.messages.find_one({"_id": message_id(room_id, seq)})

    async def messages_at(self, room_id: str, seqs: Sequence[int]) -> dict[int, Doc]:
        found = await self._by_ids(self.messages, [message_id(room_id, s) for s in seqs])
        return {int(d["seq"]): d for d in found.values()}

    async def texts_of(self, messages: Sequence[tuple[str, int]]) -> dict[tuple[str, int], str]:
        """The current text of public rooms' messages ((room, seq) pairs; one ``$in``
        per ``ID_CHUNK``): removed or deleted, ``""``."""
        ids = list(dict.fromkeys(message_id(r, s) for r, s in messages))
        out: dict[tuple[str, int], str] = {}
        for i in range(0, len(ids), ID_CHUNK):
            found = self.messages.find(
                {"_id": {"$in": ids[i : i + ID_CHUNK]}}, {"text": 1, "room": 1, "seq": 1}
            )
            for doc in await found.to_list():
                out[(str(doc["room"]), int(doc["seq"]))] = str(doc.get("text") or "")
        return out

    async def init_rev(self, room_id: str, seq: int) -> None:
        """A message written before revisions existed gets ``rev: 1`` (``$max``: never
        lowers a later revision written concurrently)."""
        await self.messages.update_one({"_id": message_id(room_id, seq)}, {"$max": {"rev": 1}})

    async def set_message(self, room_id: str, seq: int, rev: int, fields: Doc) -> bool:
        """Move a message from revision ``rev`` to ``fields`` (which name the next); False
        if it is not at ``rev`` any more (another change won)."""
        result = await self.messages.update_one(
            {"_id": message_id(room_id, seq), "rev": rev}, {"$set": fields}
        )
        return result.matched_count == 1

    async def insert_revision(self, doc: Doc) -> bool:
        """Claim a revision number with its content; False if it is taken."""
        return await self._insert_new(self.revisions, doc)

    async def get_revision(self, room_id: str, seq: int, rev: int) -> Doc | None:
        return await self.revisions.find_one({"_id": revision_id(room_id, seq, rev)})

    async def revisions_of(self, room_id: str, seq: int, last: int) -> list[Doc]:
        """Revisions 1..``last`` that exist, oldest first (``$in`` of their ids)."""
        ids = [revision_id(room_id, seq, r) for r in range(1, last + 1)]
        found = await self._by_ids(self.revisions, ids)
        return [found[i] for i in ids if i in found]

    # -- notifications -------------------------------------------------------------------

    async def insert_notification(self, doc: Doc) -> bool:
        """One notification; False if its number (``_id``) or its ``key`` is taken."""
        return await self._insert_new(self.notifications, doc)

    async def notification_head(self, user_id: str, user: Doc | None = None) -> int:
        """The user's highest notification number: ``users.n`` (``user``: that document,
        read already), and past it the numbers a writer killed before it raised ``n``
        wrote (read :data:`HEAD_PROBE` at a time: numbers have no gaps)."""
        n = int((user if user is not None else await self.get_user(user_id)).get("n", 0))
        while True:
            found = await self.notifications_at(user_id, range(n + 1, n + HEAD_PROBE + 1))
            head = n
            while head + 1 in found:
                head += 1
            if head < n + HEAD_PROBE:
                return head
            n = head

    async def raise_notification_head(self, user_id: str, n: int) -> None:
        """Notification ``n`` is written: ``users.n`` is at least ``n`` (``$max``)."""
        await self.users.update_one({"_id": user_id}, {"$max": {"n": n}}, upsert=True)

    async def mention_claim(self, user_id: str, server_id: str) -> int | None:
        """The notification number a private-room mention (of ``user_id`` by message
        ``server_id``) was given by a claim written before 2026-12-07, if it was."""
        doc = await self.mention_claims.find_one({"_id": f"{user_id}|{server_id}"})
        return None if doc is None else int(doc["n"])

    async def notifications_at(self, user_id: str, ns: Iterable[int]) -> dict[int, Doc]:
        found = await self._by_ids(self.notifications, [notification_id(user_id, n) for n in ns])
        return {int(d["n"]): d for d in found.values()}

    # -- Kafka (the outbox: services/common/outbox.py) ----------------------------------------

    async def send_event(
        self, key: str, value: bytes, headers: Sequence[tuple[str, bytes]],
        topic: str | None = None,
    ) -> bool:  # fmt: skip
        """Produce one record (to ``<prefix>rooms`` unless ``topic``) and wait for Kafka's
        ack; False if it did not happen."""
        producer = self.kafka.get()
        topic = topic or self.topic
        if producer is None:
            return False
        try:
            await asyncio.wait_for(
                producer.send_and_wait(topic, value=value, key=key.encode(), headers=list(headers)),
                self.send_timeout_s,
            )
        except (KafkaError, TimeoutError) as exc:
            log.warning("event not sent", extra={"error": repr(exc), "topic": topic})
            return False
        return True
