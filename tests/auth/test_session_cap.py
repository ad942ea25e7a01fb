"""An account keeps at most ``max_sessions`` live sessions: a sign-in past it ends the
least recently used (docs/auth.md, "Sessions"). Uncapped, every sign-in added one for
30 days, and every listing (the user's own, the admin console's) read them all."""

from __future__ import annotations

import pytest

from services.auth.config import AuthSettings
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
