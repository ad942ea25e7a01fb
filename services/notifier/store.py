"""All of the notifier's MongoDB I/O (docs/notifier.md, "Storage").

Its own database, ``<db_prefix>notifier``:

``pending``  ``_id`` ``"<user>|<n>"`` (``n``: the notification's number in the
             user's list, 12 digits): a mention waiting for the user's next
             digest. Its ``_id`` makes a redelivered notice a no-op.
``digests``  ``_id`` user: ``due`` (Unix s, indexed), ``lo`` / ``hi`` (the
             lowest and highest ``n`` pending), ``v`` (raised by every write
             of mentions), ``fresh`` (the lowest ``n`` written since the digest
             was last leased), ``attempts`` (failed sends so far),
             ``refused_at`` (Unix s: the last refusal for good held back, as
             the SMTP server then took nothing else: docs/notifier.md). One per user
             with mentions waiting; made by the first mention (due one interval
             later), deleted when the digest is sent, unless mentions came in
             while it was being sent: then it stays, for them alone.

And the auth service's ``users`` (``<db_prefix>auth``), **read only**: the
e-mail address, the username and the ``mention_emails`` preference (the
notifier is part of the auth service's bounded context; see the doc). And the
rooms service's ``messages`` (``<db_prefix>rooms``), **read only**, when a digest
is sent: the start of the text and the marker of the public rooms' messages it
lists, so that a message removed (or edited) since the mention is not mailed as it
was. Reads are by ``_id``, or by a range of one user's pending ``_id`` (in
``_id`` order, a page at a time: ``clients.in_id_order``, and the ``count``
command: both answered from the ``_id`` index, by the embedded server too); the
one range query on another field (``due``) is over the users with a digest
waiting, not over all users. Building a digest reads at most a page of
mentions at a time, however many are pending (docs/notifier.md, "Size").
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from parley_contract.envelopes import MentionNotice
from pymongo import ASCENDING, ReturnDocument, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from services.common.clients import in_id_order, insert_new

Doc = dict[str, Any]

ID_CHUNK = 500
# The pending ids read in one round trip while a digest's mentions are counted out.
ID_PAGE = 2000


def pending_id(user_id: str, n: int) -> str:
    return f"{user_id}|{n:012d}"


def message_id(room_id: str, seq: int) -> str:
    """A public room's message in the rooms service's ``messages`` (its ``message_id``)."""
    return f"{room_id}|{seq:012d}"


def _n_of(pending: str) -> int:
    return int(pending.rsplit("|", 1)[1])


@dataclass(frozen=True)
class Held:
    """The mentions a leased digest stands for: its user's pending numbers ``n`` when
    it was read, as ``runs`` of consecutive numbers (``(first, last)``, ascending), and
    how many (``count``). A few bytes a run, whatever the mentions hold; exact: a
    mention written later (a notice late from another replica, its ``n`` in a gap) is
    in no run, since a run is every number from its first to its last."""

    runs: list[tuple[int, int]]
    count: int

    def __contains__(self, n: object) -> bool:
        if not isinstance(n, int):
            return False
        i = bisect_right(self.runs, n, key=lambda r: r[0]) - 1
        return i >= 0 and self.runs[i][0] <= n <= self.runs[i][1]


class NotifierStore:
    def __init__(
        self, db: AsyncDatabase[Doc], auth_db: AsyncDatabase[Doc], rooms_db: AsyncDatabase[Doc]
    ) -> None:
        self.db = db
        self.pending: AsyncCollection[Doc] = db["pending"]
        self.digests: AsyncCollection[Doc] = db["digests"]
        self.users: AsyncCollection[Doc] = auth_db["users"]
        self.messages: AsyncCollection[Doc] = rooms_db["messages"]
        self.rooms: AsyncCollection[Doc] = rooms_db["rooms"]

    async def ensure_indexes(self) -> None:
        await self.digests.create_index([("due", ASCENDING)])

    async def _by_ids(
        self, coll: AsyncCollection[Doc], ids: list[str], fields: Doc | None = None
    ) -> dict[str, Doc]:
        out: dict[str, Doc] = {}
        for i in range(0, len(ids), ID_CHUNK):
            query = {"_id": {"$in": ids[i : i + ID_CHUNK]}}
            for doc in await coll.find(query, fields).to_list():
                out[str(doc["_id"])] = doc
        return out

    async def add_many(self, notices: list[MentionNotice], interval_s: float) -> list[bool]:
        """Keep mentions for their users' digests, in two round trips whatever their
        number: one unordered insert (a duplicate is a notice kept before) and one bulk
        upsert of the users' digest ranges. Whether each notice was new, in order.

        A digest's range is raised in either case: a notice that comes again because
        the worker died (or the write failed) between the two writes would otherwise
        stay kept and never be in any digest's range."""
        if not notices:
            return []
        docs = [_pending_doc(n) for n in notices]
        refused = await insert_new(self.pending, docs)  # kept before, or earlier in it
        ranges: dict[str, tuple[int, int]] = {}
        for n in notices:
            lo, hi = ranges.get(n.user, (n.n, n.n))
            ranges[n.user] = (min(lo, n.n), max(hi, n.n))
        # The first mention since the last digest sets when the next is due.
        due = time.time() + interval_s
        # ``v`` tells ``finish`` that mentions came in while the digest was being sent
        # (even one between ``lo`` and ``hi``), ``fresh`` which ones (see ``finish``).
        await self.digests.bulk_write(
            [
                UpdateOne(
                    {"_id": user},
                    {
                        "$setOnInsert": {"due": due},
                        "$min": {"lo": lo, "fresh": lo},
                        "$max": {"hi": hi},
                        "$inc": {"v": 1},
                    },
                    upsert=True,
                )
                for user, (lo, hi) in ranges.items()
            ],
            ordered=False,
        )
        return [i not in refused for i in range(len(docs))]

    async def lease_due(self, lease_s: float) -> Doc | None:
        """A digest that is due, held for ``lease_s`` (another replica skips it). Its
        ``fresh`` is cleared: from now on it is the lowest mention written meanwhile."""
        now = time.time()
        return await self.digests.find_one_and_update(
            {"due": {"$lte": now}},
            {"$set": {"due": now + lease_s}, "$unset": {"fresh": ""}},
            return_document=ReturnDocument.AFTER,
        )

    async def hold(self, digest: Doc, lease_s: float) -> bool:
        """Hold the leased ``digest`` ``lease_s`` from now (the whole send's time), if it
        is still this lease's (its ``due`` as leased: another replica takes it only once
        the lease is over, and sets ``due`` anew). False: the lease was lost."""
        due = time.time() + lease_s
        held = await self.digests.update_one(
            {"_id": digest["_id"], "due": digest["due"]}, {"$set": {"due": due}}
        )
        if held.matched_count:
            digest["due"] = due
        return bool(held.matched_count)

    async def retry_later(
        self, digest: Doc, attempts: int, delay_s: float, refused_at: float | None = None
    ) -> None:
        """The leased ``digest`` could not be sent for now (its ``attempts``-th failure):
        it is due again in ``delay_s``, keeping every mention it has. ``refused_at``:
        this failure was a refusal for good, held back (docs/notifier.md)."""
        fields: Doc = {"due": time.time() + delay_s, "attempts": attempts}
        if refused_at is not None:
            fields["refused_at"] = refused_at
        await self.digests.update_one({"_id": digest["_id"]}, {"$set": fields})

    def _range(self, user_id: str, lo: int, hi: int, after: int | None = None) -> Doc:
        start = {"$gte": pending_id(user_id, lo)} if after is None else {
            "$gt": pending_id(user_id, after)
        }  # fmt: skip
        return {"_id": {**start, "$lte": pending_id(user_id, hi)}}

    async def held(self, user_id: str, lo: int, hi: int) -> Held:
        """The user's pending mentions numbered ``lo..hi`` (:class:`Held`), without
        reading them: counted (the ``count`` command; every number there: one run),
        else their ids read ``ID_PAGE`` at a time."""
        if hi < lo:
            return Held([], 0)
        reply = await self.db.command(
            "count", self.pending.name, query=self._range(user_id, lo, hi)
        )
        if int(reply["n"]) == hi - lo + 1:
            return Held([(lo, hi)], hi - lo + 1)
        runs: list[tuple[int, int]] = []
        count = 0
        after: int | None = None
        while True:
            page = await self._ids(self._range(user_id, lo, hi, after), ID_PAGE)
            for n in page:
                if runs and runs[-1][1] == n - 1:
                    runs[-1] = (runs[-1][0], n)
                else:
                    runs.append((n, n))
            count += len(page)
            if len(page) < ID_PAGE:
                return Held(runs, count)
            after = page[-1]

    async def _ids(self, match: Doc, limit: int) -> list[int]:
        pipeline: list[Doc] = [
            {"$match": match}, {"$sort": {"_id": 1}}, {"$limit": limit}, {"$project": {"_id": 1}},
        ]  # fmt: skip
        return [
            _n_of(str(d["_id"])) for d in await (await self.pending.aggregate(pipeline)).to_list()
        ]

    async def pending_page(
        self, user_id: str, lo: int, hi: int, after: int | None, limit: int
    ) -> list[Doc]:
        """Up to ``limit`` of the user's waiting mentions numbered ``lo..hi`` and above
        ``after`` (None: from ``lo``), oldest first."""
        return await in_id_order(self.pending, self._range(user_id, lo, hi, after), limit)

    async def finish(self, digest: Doc, done: Held, interval_s: float) -> None:
        """The leased ``digest`` is sent (or dropped) with the mentions ``done`` (all it
        stands for, listed in the e-mail or only counted): forget them, a run of at
        least ``ID_CHUNK`` by its ``_id`` range, the others by ``$in`` of ``ID_CHUNK``
        ids. The digest goes too, unless mentions were written while it was out (its
        ``v`` changed, whatever their numbers: below ``lo``, between, above ``hi``):
        then it stays for those, due ``interval_s`` from now, from the lowest of them
        (``fresh``) to ``hi``, so its range does not keep what was sent."""
        user_id = str(digest["_id"])
        ids: list[str] = []
        for first, last in done.runs:
            if last - first + 1 >= ID_CHUNK:
                await self.pending.delete_many(self._range(user_id, first, last))
                continue
            ids += (pending_id(user_id, n) for n in range(first, last + 1))
            if len(ids) >= ID_CHUNK:
                await self.pending.delete_many({"_id": {"$in": ids}})
                ids = []
        if ids:
            await self.pending.delete_many({"_id": {"$in": ids}})
        # A digest written before ``v`` existed has none: ``None`` matches that.
        gone = await self.digests.delete_one({"_id": digest["_id"], "v": digest.get("v")})
        if gone.deleted_count:
            return
        while (now := await self.digests.find_one({"_id": digest["_id"]})) is not None:
            # Only if no mention is written between the read and this update (else read
            # again): a concurrent ``$min`` on ``lo`` would be overwritten.
            kept = await self.digests.update_one(
                {"_id": digest["_id"], "v": now.get("v")},
                {
                    "$set": {"lo": now.get("fresh", now["lo"]), "due": time.time() + interval_s},
                    "$unset": {"fresh": "", "attempts": "", "refused_at": ""},
                },
            )
            if kept.matched_count:
                return

    # -- the auth service's users (read only) ---------------------------------------------

    async def user(self, user_id: str) -> Doc | None:
        return await self.users.find_one(
            {"_id": user_id},
            {"email": 1, "username": 1, "mention_emails": 1, "blocked": 1},
        )

    async def usernames(self, user_ids: Iterable[str]) -> dict[str, str]:
        ids = list(dict.fromkeys(user_ids))
        docs = await self._by_ids(self.users, ids, {"username": 1})
        return {k: str(d["username"]) for k, d in docs.items()}

    # -- the rooms service's messages (read only) -----------------------------------------

    async def messages_now(self, items: Iterable[Doc], text_max: int) -> dict[str, Doc]:
        """The public rooms' messages of ``items`` (pending mentions) as they are now,
        by :func:`message_id`: the first ``text_max`` characters of their ``text``
        (a message holds up to 4,000; the e-mail shows 140) and their ``marker``
        (``removed_by_moderator``, ``deleted_by_author``, ``edited``, ...). One ``$in``
        per ``ID_CHUNK``; a message not found is not in the answer."""
        ids = list(
            dict.fromkeys(
                message_id(str(i["room_id"]), int(i["message_seq"]))
                for i in items
                if i.get("message_seq") is not None
            )
        )
        fields = {"text": {"$substrCP": ["$text", 0, text_max]}, "marker": 1}
        return await self._by_ids(self.messages, ids, fields)

    async def deleted_rooms(self, items: Iterable[Doc]) -> set[str]:
        """The rooms of ``items`` an admin deleted (``deleted_at``: they exist for nobody
        but admins, docs/moderation.md). One ``$in`` per ``ID_CHUNK``."""
        ids = list(dict.fromkeys(str(i["room_id"]) for i in items))
        rooms = await self._by_ids(self.rooms, ids, {"deleted_at": 1})
        return {r for r, doc in rooms.items() if doc.get("deleted_at") is not None}


def _pending_doc(notice: MentionNotice) -> Doc:
    return {
        "_id": pending_id(notice.user, notice.n), "user": notice.user, "n": notice.n,
        "room_id": notice.room_id, "room_name": notice.room_name, "kind": notice.kind,
        "sender": notice.sender, "excerpt": notice.excerpt, "at": notice.at,
        "message_seq": notice.message_seq, "server_id": notice.server_id,
    }  # fmt: skip
