"""MongoDB I/O of the moderation of end-to-end encrypted messages (database
``<prefix>delivery``; docs/moderation-messages.md):

- ``reports``: one document per verified report: ``_id`` (time-ordered),
  ``key`` (unique: one report per reporter and message), ``state`` (``open``,
  ``actioned``, ``dismissed``), the message's metadata as the tag bound it,
  the reporter, and the **verified plaintext** (``text``, and ``plaintext``
  base64url): the only place Parley stores a message's plaintext, on purpose,
  and only for a message one of its recipients reported.
- ``tombstones``: one document per removed message (``_id`` = its server id):
  who removed it (``by``: ``sender`` or ``admin``, ``actor``), when, the
  signature, and how many copies were deleted. No ciphertext, no plaintext.
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

    async def ensure_indexes(self) -> None:
        await self.reports.create_index([("key", ASCENDING)], unique=True)
        await self.reports.create_index([("server_id", ASCENDING)])
        # The queue's filter (open reports first among thousands resolved) and the
        # removals a Redis loss marks again (restore_gone). Single fields: the embedded
        # server refuses ``_id`` inside a compound index.
        await self.reports.create_index([("state", ASCENDING)])
        await self.tombstones.create_index([("at", ASCENDING)])

    # Reports ------------------------------------------------------------------
    async def file_report(self, doc: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Insert a report; returns (the report, False), or (the one already filed by this
        reporter for this message, True)."""
        existing = await self.reports.find_one({"key": doc["key"]})
        if existing is not None:
            return existing, True
        try:
            await self.reports.insert_one(doc)
        except DuplicateKeyError:
            again = await self.reports.find_one({"key": doc["key"]})
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

    async def tombstone(self, server_id: str) -> dict[str, Any] | None:
        return await self.tombstones.find_one({"_id": server_id})
