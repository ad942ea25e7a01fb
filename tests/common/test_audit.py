"""The one audit log (services/common/audit.py): append-only, every service's entries in
one collection, filters and a cursor that never skips an entry of the same millisecond."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator

import pytest

from services.common.audit import CURSOR_RE, Actor, AuditLog, Entry, Filters
from services.common.clients import mongo_client, service_db
from services.common.config import Settings


@pytest.fixture
async def logs(settings: Settings) -> AsyncIterator[tuple[AuditLog, AuditLog]]:
    client = mongo_client(settings)
    yield (
        AuditLog.of(service_db(client, settings, "auth"), settings, "auth"),
        AuditLog.of(service_db(client, settings, "rooms"), settings, "rooms"),
    )
    await client.close()


def test_the_log_can_only_be_appended_to_and_read() -> None:
    methods = {n for n, _ in inspect.getmembers(AuditLog, inspect.isfunction)}
    assert methods == {"__init__", "ensure_indexes", "record", "page"}
    source = inspect.getsource(inspect.getmodule(AuditLog))  # type: ignore[arg-type]
    for verb in ("update_", "delete_", "replace_", "find_one_and", "drop"):
        assert verb not in source


async def test_every_service_writes_one_collection_and_pages_filter_it(
    logs: tuple[AuditLog, AuditLog], settings: Settings
) -> None:
    auth, rooms = logs
    assert auth.coll.full_name == rooms.coll.full_name == f"{settings.db_prefix}audit.audit_log"
    admin, other = Actor("a1", "admin", "alice"), Actor("a2", "admin")
    at = 1_700_000_000_000
    # Many entries in one millisecond: the cursor still pages through each once.
    for i in range(7):
        await rooms.record(Entry(admin, "room.close", "room", f"r{i % 2}"), now_ms=at)
    await auth.record(Entry(admin, "user.block", "user", "u1", before={"blocked": False},
                            after={"blocked": True}, ip="10.0.0.1"), now_ms=at + 1)  # fmt: skip
    await rooms.record(Entry(other, "message.remove", "message", "r0/1"), now_ms=at + 2)

    newest = await rooms.page(Filters(), 100)
    assert [d["action"] for d in newest[:2]] == ["message.remove", "user.block"]
    assert newest[1]["service"] == "auth" and newest[1]["actor"] == "alice"
    assert newest[1]["before"] == {"blocked": False} and newest[1]["ip"] == "10.0.0.1"
    assert newest[0]["actor"] == "a2" and newest[0]["actor_role"] == "admin"
    assert newest[0]["at"].tzinfo is not None and CURSOR_RE.fullmatch(newest[0]["_id"])

    seen: list[str] = []
    cursor = None
    while True:
        page = await auth.page(Filters(action_prefix="room.", cursor=cursor), 3)
        seen += [d["_id"] for d in page]
        if len(page) < 3:
            break
        cursor = page[-1]["_id"]
    assert len(seen) == len(set(seen)) == 7

    async def count(f: Filters) -> int:
        return len(await auth.page(f, 100))

    assert await count(Filters(service="auth")) == 1
    assert await count(Filters(actor_id="a2")) == 1
    assert await count(Filters(target_type="room", target_id="r0")) == 4
    assert await count(Filters(action_prefix="user.bl")) == 1
    assert await count(Filters(action_prefix="room.close.")) == 0
    assert await count(Filters(before_ms=at + 1)) == 7
