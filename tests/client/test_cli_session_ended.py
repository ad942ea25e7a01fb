"""A session the server ended (logged out elsewhere, revoked, its device removed): the
first refresh that is refused forgets the refresh token for good, and `parley logout`
still works.

Before, the refused refresh cleared the token inside the store transaction and raised
there, which rolled the clearing back: every later command presented the dead token
again, the server answered ``refresh_token_reused`` (the user read "session ended for
safety (token used twice)", and the auth service logged a theft that did not happen),
and `parley logout`, which only let an ``ApiError`` pass, failed for good.

Against the real system; the CLI runs in this process (typer's runner, in a thread).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from parley.errors import NotLoggedIn

from tests.client.conftest import MakeClient, new_username
from tests.support.cli_runs import cli_env, cli_user, expire_access_token, run_cli
from tests.support.stack import System


async def test_a_refused_refresh_is_forgotten_and_never_presented_again(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await make_client()
    await alice.api.logout()  # the session ends elsewhere (another device, an admin)
    await expire_access_token(alice)
    refreshes: list[str] = []
    refresh = alice.api.refresh

    async def counted(token: str) -> dict[str, Any]:
        refreshes.append(token)
        return await refresh(token)

    monkeypatch.setattr(alice.api, "refresh", counted)
    with pytest.raises(NotLoggedIn, match="log in"):
        await alice.account.access_token()
    assert len(refreshes) == 1
    account = alice.store.read().get("account")
    assert account["refresh_token"] is None and account["access_token"] is None
    assert not alice.logged_in
    # Later calls say "log in" without presenting the dead token again (which the server
    # would answer with refresh_token_reused, and log as a theft).
    with pytest.raises(NotLoggedIn, match="not logged in"):
        await alice.account.access_token()
    with pytest.raises(NotLoggedIn, match="not logged in"):
        await alice.me()
    assert len(refreshes) == 1


async def test_logout_after_the_session_ended_forgets_the_tokens(
    make_client: MakeClient, system: System, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    name = new_username("e")
    alice = await cli_user(make_client, system.lb, home, name)
    await alice.api.logout()  # the session ends elsewhere
    await expire_access_token(alice)
    await alice.close()  # the CLI opens the same store
    env = cli_env(system.lb, home)

    code, out = await run_cli(env, "logout")
    assert (code, out) == (0, "Logged out."), out
    code, out = await run_cli(env, "whoami")
    assert code == 1 and "You are not logged in" in out, out
    assert "used twice" not in out
    code, out = await run_cli(env, "logout")
    assert code == 1 and "You are not logged in" in out, out
