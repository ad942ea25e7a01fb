"""All of the notifier's MongoDB I/O (docs/notifier.md, "Storage").

Its own database, ``<db_prefix>notifier``:

``pending``  ``_id`` ``"<user>|<n>"`` (``n``: the notification's number in the
             user's list, 12 digits): a mention waiting for the user's next
             digest. Its ``_id`` makes a redelivered notice a no-op.
``digests``  ``_id`` user: ``due`` (Unix s, indexed), ``lo`` / ``hi`` (the
             lowest and highest ``n`` pending), ``v`` (raised by every write
             of mentions), ``fresh`` (the lowest ``n`` written since the digest
             was last leased), ``attempts`` (failed sends so far). One per user
             with mentions waiting; made by the first mention (due one interval
             later), deleted when the digest is sent, unless mentions came in
             while it was being sent: then it stays, for them alone.

And the auth service's ``users`` (``<db_prefix>auth``), **read only**: the
e-mail address, the username and the ``mention_emails`` preference (the
notifier is part of the auth service's bounded context; see the doc). And the
rooms service's ``messages`` (``<db_prefix>rooms``), **read only**, when a digest
is sent: the text and marker of the public rooms' messages it lists, so that a
message removed (or edited) since the mention is not mailed as it was.
Every read is by ``_id``; the one range query (``due``) is over the users
with a digest waiting, not over all users.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from parley_contract.envelopes import MentionNotice
from pymongo import ASCENDING, ReturnDocument, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from services.common.clients import insert_new

Doc = dict[str, Any]

ID_CHUNK = 500


def pending_id(user_id: str, n: int) -> str:
    return f"{user_id}|{n:012d}"


def message_id(room_id: str, seq: int) -> str:
    """A public room's message in the rooms service's ``messages`` (its ``message_id``)."""
    return f"{room_id}|{seq:012d}"


class NotifierStore:
    def __init__(
        self, db: AsyncDatabase[Doc], auth_db: AsyncDatabase[Doc], rooms_db: AsyncDatabase[Doc]
    ) -> None:
        self.db = db
        self.pending: AsyncCollection[Doc] = db["pending"]
        self.digests: AsyncCollection[Doc] = db["digests"]
        self.users: AsyncCollection[Doc] = auth_db["users"]
        self.messages: AsyncCollection[Doc] = rooms_db["messages"]

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

    async def retry_later(self, digest: Doc, attempts: int, delay_s: float) -> None:
        """The leased ``digest`` could not be sent for now (its ``attempts``-th failure):
        it is due again in ``delay_s``, keeping every mention it has."""
        await self.digests.update_one(
            {"_id": digest["_id"]},
            {"$set": {"due": time.time() + delay_s, "attempts": attempts}},
        )

    async def pending_of(self, user_id: str, lo: int, hi: int) -> list[Doc]:
        """The user's waiting mentions numbered ``lo..hi``, oldest first."""
        ids = [pending_id(user_id, n) for n in range(lo, hi + 1)]
        found = await self._by_ids(self.pending, ids)
        return [found[i] for i in ids if i in found]

    async def finish(self, digest: Doc, done: list[Doc], interval_s: float) -> None:
        """The leased ``digest`` is sent (or dropped) with the mentions ``done``: forget
        them. The digest goes too, unless mentions were written while it was out (its
        ``v`` changed, whatever their numbers: below ``lo``, between, above ``hi``):
        then it stays for those, due ``interval_s`` from now, from the lowest of them
        (``fresh``) to ``hi``, so its range does not keep what was sent."""
        ids = [str(d["_id"]) for d in done]
        for i in range(0, len(ids), ID_CHUNK):
            await self.pending.delete_many({"_id": {"$in": ids[i : i + ID_CHUNK]}})
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
                    "$unset": {"fresh": "", "attempts": ""},
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

    async def messages_now(self, items: Iterable[Doc]) -> dict[str, Doc]:
        """The public rooms' messages of ``items`` (pending mentions) as they are now,
        by :func:`message_id`: their ``text`` and ``marker`` (``removed_by_moderator``,
        ``deleted_by_author``, ``edited``, ...). One ``$in`` per ``ID_CHUNK``; a message
        not found is not in the answer."""
        ids = list(
            dict.fromkeys(
                message_id(str(i["room_id"]), int(i["message_seq"]))
                for i in items
                if i.get("message_seq") is not None
            )
        )
        return await self._by_ids(self.messages, ids, {"text": 1, "marker": 1})


def _pending_doc(notice: MentionNotice) -> Doc:
    return {
        "_id": pending_id(notice.user, notice.n), "user": notice.user, "n": notice.n,
        "room_id": notice.room_id, "room_name": notice.room_name, "kind": notice.kind,
        "sender": notice.sender, "excerpt": notice.excerpt, "at": notice.at,
        "message_seq": notice.message_seq, "server_id": notice.server_id,
    }  # fmt: skip
