"""Queries with a top-level ``$or`` beside another condition: the embedded MongoDB server
does not bracket the ``$or`` in its SQL (docs/embedded.md), so the other condition was
dropped for its last branch (review, 2026-12-07)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.auth.helpers import AuthApi


async def test_a_clients_revocation_reads_only_its_own_sessions(auth: AuthApi) -> None:
    now = datetime.now(UTC)
    await auth.db["sessions"].insert_many([
        {"_id": "x-live", "client_id": "X", "user_id": "u1", "revoked_at": None},
        {"_id": "x-old", "client_id": "X", "user_id": "u1", "revoked_at": now - timedelta(days=1)},
        {"_id": "y-revoked", "client_id": "Y", "user_id": "u2", "revoked_at": now},
        {"_id": "y-live", "client_id": "Y", "user_id": "u3", "revoked_at": None},
    ])  # fmt: skip
    since = now - timedelta(minutes=5)
    live, told = await auth.service.store.revoke_client_sessions("X", now, "disabled", since)
    assert (live, told) == (1, [("u1", "x-live")])
    y_live = await auth.db["sessions"].find_one({"_id": "y-live"})
    assert y_live is not None and y_live["revoked_at"] is None
