"""An account keeps at most ``max_sessions`` live sessions: a sign-in past it ends the
least recently used (docs/auth.md, "Sessions"). Uncapped, every sign-in added one for
30 days, and every listing (the user's own, the admin console's) read them all."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from services.auth import sessions
from services.auth.config import AuthSettings
from services.auth.tokens import new_id
from tests.auth.conftest import ROOMY
from tests.auth.helpers import AuthApi


@pytest.fixture
def auth_config() -> AuthSettings:
    return AuthSettings.for_tests(**ROOMY, max_sessions=3)


async def test_a_sign_in_past_the_cap_ends_the_least_recently_used_session(
    auth: AuthApi,
) -> None:
    first = await auth.signup()
    name = first["user"]["username"]
    second = await auth.login(name)
    third = await auth.login(name)
    # The first is used again (a refresh): the second is now the least recently used.
    first = await auth.refresh(first["refresh_token"])
    fourth = await auth.login(name)
    _, listing = await auth.call("GET", "/auth/v1/sessions", token=fourth["access_token"])
    live = {s["session_id"] for s in listing["sessions"]}
    assert live == {first["session_id"], third["session_id"], fourth["session_id"]}
    status, err = await auth.call("GET", "/auth/v1/me", token=second["access_token"])
    assert (status, err["error"]["code"]) == (401, "token_revoked")
    await auth.refresh(second["refresh_token"], status=401)
    for kept in (first, third, fourth):
        assert (await auth.call("GET", "/auth/v1/me", token=kept["access_token"]))[0] == 200
    # Many more sign-ins: still three, the newest ones.
    latest = [await auth.login(name) for _ in range(6)]
    _, listing = await auth.call("GET", "/auth/v1/sessions", token=latest[-1]["access_token"])
    assert {s["session_id"] for s in listing["sessions"]} == {s["session_id"] for s in latest[-3:]}


async def session_docs(auth: AuthApi, user_id: str) -> list[dict[str, Any]]:
    """The account's session documents (the embedded server purges expired ones first,
    at this read: docs/embedded.md)."""
    return [d async for d in auth.db["sessions"].find({"user_id": user_id})]


async def test_a_session_the_cap_ends_is_kept_only_as_long_as_revocation_needs_it(
    auth: AuthApi,
) -> None:
    """Ended by the cap, a session kept its 30 days (``expires_at``): they piled up, and
    every sign-in's read of the live ones grew with them (20 ms to 72 ms at 20,000). Its
    ``expires_at`` is now the end of what revocation needs (the access tokens' lifetime,
    ``revoked_since``), and the TTL index reclaims it then."""
    user = await auth.signup()
    uid, name = user["user"]["user_id"], user["user"]["username"]
    for _ in range(3):
        await auth.login(name)
    assert [d["_id"] for d in await session_docs(auth, uid) if d.get("revoked_at")] == [
        user["session_id"]
    ]
    ended = await auth.service.store.session(user["session_id"])
    assert ended is not None and ended["revoked_reason"] == "session_limit"
    kept = ended["expires_at"] - ended["revoked_at"]
    assert kept == timedelta(seconds=auth.service.revocation_ttl_s)


async def test_thousands_of_ended_sessions_are_reclaimed_not_read_by_every_sign_in(
    auth: AuthApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At size: 5,000 sessions ended together (as "end my other sessions" or a block
    does) an hour ago are gone at the next read, instead of staying for 30 days in
    what every sign-in's read of the live sessions goes through."""
    user = await auth.signup()
    uid, name = user["user"]["user_id"], user["user"]["username"]
    now = auth.service.now()
    docs = [
        {
            "_id": new_id(), "user_id": uid, "created_at": now, "last_used_at": now,
            "expires_at": now + timedelta(days=30), "revoked_at": None,
        }
        for _ in range(5000)
    ]  # fmt: skip
    await auth.db["sessions"].insert_many(docs)
    hour_ago = now - timedelta(hours=1)
    monkeypatch.setattr(auth.service, "clock", lambda: hour_ago)
    ended = await sessions.revoke_all(auth.service, uid, "blocked")
    monkeypatch.undo()
    assert len(ended) == 5001
    await auth.login(name)
    left = await session_docs(auth, uid)
    assert [d.get("revoked_at") for d in left] == [None]
