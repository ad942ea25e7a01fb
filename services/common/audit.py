"""The one audit log of every admin action, in every service (docs/moderation.md, "Audit log").

Every service writes to the same collection, ``audit_log`` of the database
``<db_prefix>audit`` (:func:`services.common.clients.service_db` with the name
``audit``), through :class:`AuditLog`. An entry says who (the actor's user id,
name where known, and role), what (an action such as ``user.block`` or
``room.close``, and the service that did it), to what (a target type and id),
when, from where (the request id and the caller's address when known), and,
where it applies, the state before and after.

**Append-only.** This module is the only code that touches the collection, and
it has no update or delete path: an entry is inserted once and then only read
(``tests/common/test_audit.py`` checks that :class:`AuditLog` offers nothing
else). Nobody edits history; an operator who must purge entries (a retention
rule) does it in the database, outside the services.

**No end-to-end plaintext.** The services never hold the plaintext of an
end-to-end encrypted message, so no entry can carry it; public rooms' text
(server-readable by design) may appear in ``before``/``after`` of a message
edit or removal.

Entries are ordered by ``_id``: 13 digits of Unix milliseconds and 12 random
hex digits, so the newest first is ``_id`` descending and a page's cursor is
the last ``_id`` it returned (no two entries tie).

**Pages by millisecond** (:func:`page_by_millisecond`, the admin route's): a
page followed by more ends where a millisecond ends, so that ``before`` (a
time: "older than this millisecond") goes on from its last entry's time without
skipping the others of that millisecond (the page of ``limit`` entries cut a
millisecond in two, and ``before`` skipped its second half). A page whose
entries are all of one millisecond holds that whole millisecond.

**Read with an aggregation** (``$match``, ``$sort``, ``$limit``), as
:func:`services.common.clients.in_id_order` reads, newest first: the embedded
MongoDB answers a ``find`` of an ``_id`` range by reading the whole collection
(650-760 ms a page at 50,000 entries; a few ms this way; docs/embedded.md). An
action prefix is a range of ``action`` (a ``$regex`` in an aggregation reads
everything, slower still).
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from services.common.config import Settings
from services.common.logging import request_id_var

Doc = dict[str, Any]

DATABASE = "audit"
COLLECTION = "audit_log"
# A cursor is an entry's _id: 13 digits, a dash, 12 hex digits.
CURSOR_RE = re.compile(r"[0-9]{13}-[0-9a-f]{12}")
ACTION_RE = re.compile(r"[a-z_]+(\.[a-z_]+)*\.?")
# Above every character an action has after its prefix (ACTION_RE: ASCII): the end of
# the ``action`` range a prefix stands for.
_PREFIX_END = "\U0010ffff"
# The most entries of one millisecond a page holds (page_by_millisecond): the services
# write one entry per request, a few in a millisecond at most; past this (entries put
# into the database in bulk), ``before`` would skip the rest of that millisecond.
MAX_ONE_MS = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def entry_id(at_ms: int) -> str:
    return f"{at_ms:013d}-{secrets.token_hex(6)}"


def entry_ms(doc: Doc) -> int:
    """The millisecond of an entry, from its ``_id`` (what ``before`` compares)."""
    return int(str(doc["_id"])[:13])


def ms_time(at_ms: int) -> datetime:
    """Unix milliseconds as a datetime (``next_before``), in integers."""
    return _EPOCH + timedelta(milliseconds=at_ms)


def ms_before(before: datetime) -> int:
    """``Filters.before_ms`` of a time: the entries of a millisecond that starts before
    it are older (``.1235`` keeps those of ``.123``, which the truncated product of the
    timestamp lost), in integers."""
    micros = (before - _EPOCH) // timedelta(microseconds=1)
    return max(-(-micros // 1000), 0)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: a user id (or a tool, ``cli``), a name when known, and the role acted in
    (``admin``; ``owner`` or ``moderator`` of a room; ``operator`` for the CLI)."""

    id: str
    role: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Filters:
    """What a page of the log is restricted to (all optional, combined with AND)."""

    actor_id: str | None = None
    action_prefix: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    service: str | None = None
    before_ms: int | None = None
    cursor: str | None = None
    # Only entries of this millisecond or later (page_by_millisecond).
    since_ms: int | None = None

    def query(self) -> Doc:
        q: Doc = {}
        if self.actor_id:
            q["actor_id"] = self.actor_id
        if self.action_prefix:
            # A range, not a ``$regex``: the same entries (a prefix of ASCII), and read
            # without a scan by the embedded server's aggregation (module docstring).
            q["action"] = {"$gte": self.action_prefix, "$lt": self.action_prefix + _PREFIX_END}
        if self.target_type:
            q["target_type"] = self.target_type
        if self.target_id:
            q["target_id"] = self.target_id
        if self.service:
            q["service"] = self.service
        ids: Doc = {}
        if self.cursor:
            ids["$lt"] = self.cursor
        elif self.before_ms is not None:
            ids["$lt"] = f"{max(self.before_ms, 0):013d}"
        if self.since_ms is not None:
            ids["$gte"] = f"{max(self.since_ms, 0):013d}"
        if ids:
            q["_id"] = ids
        return q


@dataclass(frozen=True, slots=True)
class Entry:
    """One action, as :meth:`AuditLog.record` writes it."""

    actor: Actor
    action: str
    target_type: str | None = None
    target_id: str | None = None
    details: Doc = field(default_factory=dict)
    before: Doc | None = None
    after: Doc | None = None
    ip: str | None = None
    request_id: str | None = None


class AuditLog:
    """Writes and pages the shared audit log. Append-only: there is no update or delete."""

    def __init__(self, db: AsyncDatabase[Doc], service: str) -> None:
        self.coll: AsyncCollection[Doc] = db[COLLECTION]
        self.service = service

    @classmethod
    def of(cls, any_db: AsyncDatabase[Doc], settings: Settings, service: str) -> AuditLog:
        """The log for ``service``, given any database handle of its MongoDB client."""
        return cls(any_db.client[f"{settings.db_prefix}{DATABASE}"], service)

    async def ensure_indexes(self) -> None:
        """For a real MongoDB's filters (the embedded server scans anyway; it also
        refuses ``_id`` inside a compound index, so these are single fields)."""
        for key in ("actor_id", "target_id", "action", "service"):
            await self.coll.create_index([(key, ASCENDING)])

    async def record(self, entry: Entry, *, now_ms: int | None = None) -> Doc:
        """Append one entry (the request id defaults to the current request's)."""
        at_ms = int(time.time() * 1000) if now_ms is None else now_ms
        doc: Doc = {
            "_id": entry_id(at_ms),
            "at": datetime.fromtimestamp(at_ms / 1000, UTC),
            "at_ms": at_ms,
            "service": self.service,
            "actor_id": entry.actor.id,
            "actor": entry.actor.name or entry.actor.id,
            "actor_role": entry.actor.role,
            "action": entry.action,
            "target_type": entry.target_type,
            "target_id": entry.target_id,
            "details": dict(entry.details),
            "before": entry.before,
            "after": entry.after,
            "request_id": entry.request_id or request_id_var.get(),
            "ip": entry.ip,
        }
        await self.coll.insert_one(doc)
        return doc

    async def page(self, filters: Filters, limit: int) -> list[Doc]:
        """Up to ``limit`` entries matching ``filters``, newest first (an aggregation:
        module docstring)."""
        pipeline: list[Doc] = [
            {"$match": filters.query()},
            {"$sort": {"_id": -1}},
            {"$limit": limit},
        ]
        return [_at(doc) for doc in await (await self.coll.aggregate(pipeline)).to_list()]


async def page_by_millisecond(
    log: AuditLog, filters: Filters, limit: int
) -> tuple[list[Doc], bool]:
    """A page of up to ``limit`` entries, newest first, and whether older ones follow.

    A page followed by more ends where a millisecond ends: the entries of its last
    millisecond are all on it or all on the next page, so that paging by ``before``
    (the last entry's time) skips none, and neither does the cursor (the last
    ``_id``). A page whose ``limit + 1`` entries are all of one millisecond holds that
    whole millisecond instead (up to ``MAX_ONE_MS`` more entries)."""
    docs = await log.page(filters, limit + 1)
    if len(docs) <= limit:
        return docs, False
    cut = entry_ms(docs[limit])  # the millisecond of the first entry left out
    kept = [d for d in docs[:limit] if entry_ms(d) != cut]
    if kept:
        return kept, True
    rest = await log.page(replace(filters, cursor=docs[-1]["_id"], since_ms=cut), MAX_ONE_MS)
    whole = docs + rest
    older = await log.page(replace(filters, cursor=whole[-1]["_id"], since_ms=None), 1)
    return whole, bool(older)


def _at(doc: Doc) -> Doc:
    """``at`` as a tz-aware datetime, however the server returned it."""
    at = doc.get("at")
    if isinstance(at, datetime):
        doc["at"] = at if at.tzinfo else at.replace(tzinfo=UTC)
    else:
        doc["at"] = datetime.fromtimestamp(int(doc.get("at_ms", 0)) / 1000, UTC)
    return doc
