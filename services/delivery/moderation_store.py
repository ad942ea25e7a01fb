"""MongoDB I/O of the moderation of end-to-end encrypted messages (database
``<prefix>delivery``; docs/moderation-messages.md):

- ``reports``: one document per verified report: ``_id`` (time-ordered),
  ``key`` (unique: one report per reporter and message), ``state`` (``open``,
  ``actioned``, ``dismissed``), the message's metadata as the tag bound it,
  the reporter, and the **verified plaintext**, once, as its bytes
  (``plaintext``, BSON binary; decoded for display where it is read: reports
  filed before held it twice, as ``text`` and a base64url ``plaintext``): the
  only place Parley stores a message's plaintext, on purpose, and only for a
  message one of its recipients reported (at most ``PARLEY_LIMIT_REPORTS`` a
  reporter). Never deleted (docs/moderation-messages.md, "Trade-offs").
- ``tombstones``: one document per removed message (``_id`` = its server id):
  who removed it (``by``: ``sender`` or ``admin``, ``actor``), when (``at``),
  the signature, the reason, and how many device inboxes its tombstones went to
  (``inboxes``). No ciphertext, no plaintext. Deleted by the moderation upkeep
  (services/delivery/moderation.py) once older than ``tombstone_keep_s``.
- ``removals_pending``: one document per removal under way (``_id`` = the
  server id): the device inboxes its tombstones go to (``targets``) and when it
  was begun or last taken up (``since``, Unix ms). Written before the removal is
  recorded, deleted once its tombstones are produced: one left behind is a
  removal whose request died part-way, which the upkeep finishes.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.common.clients import in_id_order

REPORT_STATES = ("open", "actioned", "dismissed")


class ModerationStore:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self.reports = db["reports"]
        self.tombstones = db["tombstones"]
        self.pending = db["removals_pending"]

    async def ensure_indexes(self) -> None:
        await self.reports.create_index([("key", ASCENDING)], unique=True)
        await self.reports.create_index([("server_id", ASCENDING)])
        # The queue's filter (open reports first among thousands resolved) and the
        # removals a Redis loss marks again (restore_gone). Single fields: the embedded
        # server refuses ``_id`` inside a compound index.
        await self.reports.create_index([("state", ASCENDING)])
        await self.tombstones.create_index([("at", ASCENDING)])

    # Reports ------------------------------------------------------------------
    async def report_by_key(self, key: str) -> dict[str, Any] | None:
        """The report a reporter filed of a message (``key``: see moderation.py), if any."""
        return await self.reports.find_one({"key": key}, {"plaintext": 0, "text": 0})

    async def file_report(self, doc: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Insert a report; returns (the report, False), or (the one already filed by this
        reporter for this message, True): a repeat is looked for first
        (:meth:`report_by_key`), this catches two filed at once."""
        try:
            await self.reports.insert_one(doc)
        except DuplicateKeyError:
            again = await self.report_by_key(doc["key"])
            if again is not None:
                return again, True
            raise
        return doc, False

    async def reports_page(
        self, state: str | None, after: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """Reports in filing order (``_id`` after ``after``), optionally of one state."""
        flt: dict[str, Any] = {}
        if state is not None:
            flt["state"] = state
        if after is not None:
            flt["_id"] = {"$gt": after}
        docs = await in_id_order(self.reports, flt, limit + 1)
        return docs[:limit], len(docs) > limit

    async def report(self, report_id: str) -> dict[str, Any] | None:
        return await self.reports.find_one({"_id": report_id})

    async def report_of(self, server_id: str) -> dict[str, Any] | None:
        """The first report filed of a message, if any."""
        return await self.reports.find_one({"server_id": server_id}, sort=[("_id", ASCENDING)])

    async def resolve(
        self, report_id: str, state: str, note: str, by: str, at: int
    ) -> dict[str, Any] | None:
        """Move an open report to ``state``; None when there is no open report of that id."""
        return await self.reports.find_one_and_update(
            {"_id": report_id, "state": "open"},
            {"$set": {"state": state, "resolution": {"note": note, "by": by, "at": at}}},
            return_document=ReturnDocument.AFTER,
        )

    # Tombstones ---------------------------------------------------------------
    async def record_tombstone(self, doc: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Record a removal once; returns (the record, whether it existed already)."""
        try:
            await self.tombstones.insert_one(doc)
        except DuplicateKeyError:
            existing = await self.tombstones.find_one({"_id": doc["_id"]})
            if existing is not None:
                return existing, True
            raise
        return doc, False

    async def mark_audited(self, server_id: str) -> None:
        """An admin's removal has its audit entry (``audited``; unset for others)."""
        await self.tombstones.update_one({"_id": server_id}, {"$set": {"audited": True}})

    async def tombstone(self, server_id: str) -> dict[str, Any] | None:
        return await self.tombstones.find_one({"_id": server_id})

    async def purge_tombstones(self, before_ms: int) -> int:
        """Delete the records of removals made before ``before_ms``; how many."""
        res = await self.tombstones.delete_many({"at": {"$lt": before_ms}})
        return int(res.deleted_count)

    # Removals under way -------------------------------------------------------
    async def begin_removal(self, server_id: str, targets: list[str], since: int) -> None:
        """Note a removal under way (before it is recorded), with where its tombstones
        go: a request that dies before :meth:`end_removal` leaves it for the upkeep."""
        await self.pending.update_one(
            {"_id": server_id}, {"$set": {"targets": targets, "since": since}}, upsert=True
        )

    async def removals_due(self, before_ms: int, limit: int) -> list[dict[str, Any]]:
        """Removals under way since before ``before_ms``: their requests died. The
        collection holds only removals under way (a handful), so reading it is cheap
        on every server."""
        return [d async for d in self.pending.find({"since": {"$lt": before_ms}}).limit(limit)]

    async def take_removal(self, server_id: str, since: int, now_ms: int) -> bool:
        """Take up a removal left behind (``since`` as read), so that one process
        finishes it; False when another process took it (or finished it) first."""
        res = await self.pending.update_one(
            {"_id": server_id, "since": since}, {"$set": {"since": now_ms}}
        )
        return int(res.modified_count) == 1

    async def end_removal(self, server_id: str, since: int) -> None:
        """The removal begun (or taken up) at ``since`` is carried out."""
        await self.pending.delete_one({"_id": server_id, "since": since})
