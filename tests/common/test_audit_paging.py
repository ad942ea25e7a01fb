"""Paging the shared audit log at real size (services/common/audit.py): every entry once,
newest first, by cursor and by ``before``, without a scan of the collection per page.

Before: ``AuditLog.page`` was a ``find`` of an ``_id`` range, which the embedded MongoDB
answers by reading the whole collection (650-760 ms a page at 50,000 entries;
docs/embedded.md), and a page cut a millisecond in two, so that ``before`` (the last
entry's time) skipped the rest of that millisecond.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from services.common import audit
from services.common.audit import AuditLog, Filters, entry_id
from services.common.clients import mongo_client, service_db
from services.common.config import Settings

ENTRIES = 20_000
BASE_MS = 1_700_000_000_000


class NoScans:
    """The log's collection, refusing the ``find`` the embedded server scans for."""

    def __init__(self, coll: Any) -> None:
        self.coll = coll

    def find(self, *_: Any, **__: Any) -> Any:
        raise AssertionError("a find of an _id range reads the whole collection here")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.coll, name)


def seed_docs() -> list[dict[str, Any]]:
    """ENTRIES entries: mostly one a millisecond, and runs of 2-7 in one millisecond
    (a script's burst, services writing at once), of three actions."""
    docs: list[dict[str, Any]] = []
    ms = BASE_MS
    while len(docs) < ENTRIES:
        ms += 1 + secrets.randbelow(50)
        for _ in range(1 if secrets.randbelow(4) else 2 + secrets.randbelow(6)):
            n = len(docs)
            action = ("room.view", "user.block", "user.view")[n % 3]
            docs.append({
                "_id": entry_id(ms), "at": datetime.fromtimestamp(ms / 1000, UTC), "at_ms": ms,
                "service": "rooms" if action.startswith("room") else "auth",
                "actor_id": "a" * 32, "actor": "alice", "actor_role": "admin",
                "action": action, "target_type": action.split(".")[0],
                "target_id": secrets.token_hex(8), "details": {}, "before": None,
                "after": None, "request_id": None, "ip": None,
            })  # fmt: skip
    return docs[:ENTRIES]


@pytest.fixture(scope="module")
async def seeded(stack: Any) -> AsyncIterator[tuple[AuditLog, list[str]]]:
    """One log of ENTRIES entries for the module (inserted in bulk: ~10 s), and their
    ids newest first."""
    settings: Settings = stack.settings()
    client = mongo_client(settings)
    log = AuditLog.of(service_db(client, settings, "rooms"), settings, "rooms")
    docs = seed_docs()
    for i in range(0, len(docs), 5000):
        await log.coll.insert_many(docs[i : i + 5000], ordered=False)
    log.coll = NoScans(log.coll)  # type: ignore[assignment]
    yield log, sorted((d["_id"] for d in docs), reverse=True)
    await client.close()


async def test_paging_by_cursor_reads_every_entry_once_without_scans(
    seeded: tuple[AuditLog, list[str]],
) -> None:
    log, newest_first = seeded
    seen: list[str] = []
    cursor = None
    while True:
        page = await log.page(Filters(cursor=cursor), 100)
        seen += [d["_id"] for d in page]
        if len(page) < 100:
            break
        cursor = page[-1]["_id"]
    assert seen == newest_first
    # A filter on the action (a prefix) reads the same way, and finds what it names.
    users = await log.page(Filters(action_prefix="user.", cursor=newest_first[5000]), 100)
    assert len(users) == 100 and all(d["action"].startswith("user.") for d in users)
    assert [d["_id"] for d in users] == sorted((d["_id"] for d in users), reverse=True)
    assert await log.page(Filters(action_prefix="user.bl", target_id="nobody"), 10) == []


@pytest.mark.parametrize("by", ["cursor", "before"])
async def test_pages_end_where_a_millisecond_ends_so_before_skips_nothing(
    seeded: tuple[AuditLog, list[str]], by: str
) -> None:
    log, newest_first = seeded
    seen: list[str] = []
    filters = Filters()
    for _ in range(len(newest_first)):
        page, more = await audit.page_by_millisecond(log, filters, 37)
        seen += [d["_id"] for d in page]
        if not more:
            break
        assert 0 < len(page) <= 37
        last = page[-1]
        if by == "cursor":
            filters = Filters(cursor=last["_id"])
        else:  # as the admin route says it: next_before, a time, back as `before`
            filters = Filters(before_ms=audit.ms_before(audit.ms_time(audit.entry_ms(last))))
    assert seen == newest_first


async def test_a_millisecond_longer_than_a_page_is_one_page(settings: Settings) -> None:
    client = mongo_client(settings)
    try:
        log = AuditLog.of(service_db(client, settings, "rooms"), settings, "rooms")
        actor = audit.Actor("b" * 32, "admin")
        for i in range(5):
            await log.record(audit.Entry(actor, "room.view", "room", f"r{i}"), now_ms=BASE_MS)
        await log.record(audit.Entry(actor, "room.view", "room", "older"), now_ms=BASE_MS - 1)
        page, more = await audit.page_by_millisecond(log, Filters(), 2)
        assert sorted(d["target_id"] for d in page) == [f"r{i}" for i in range(5)] and more
        before = audit.ms_before(audit.ms_time(audit.entry_ms(page[-1])))
        page, more = await audit.page_by_millisecond(log, Filters(before_ms=before), 2)
        assert [d["target_id"] for d in page] == ["older"] and not more
    finally:
        await client.close()
