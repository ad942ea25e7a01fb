"""Errors a user meets, tokens and logins, against the real system."""

from __future__ import annotations

from pathlib import Path

import pytest
from parley import ApiError, Client, NotLoggedIn, ServerUnavailable, UserNotFound
from parley.api import Api

from tests.client.conftest import CHEAP_KDF, PASSWORD, MakeClient, new_username
from tests.support.stack import System


async def test_wrong_password_and_unknown_user_say_so(make_client: MakeClient) -> None:
    alice = await make_client()
    assert alice.username
    fresh = await make_client(alice.username, signup=False)
    with pytest.raises(ApiError) as exc:
        await fresh.login(alice.username, "not the password at all")
    assert exc.value.code == "invalid_credentials"
    assert str(exc.value) == "Wrong username or password."
    with pytest.raises(UserNotFound) as missing:
        await alice.send(new_username("nobody"), "hi", wait=None)
    assert "No user named" in str(missing.value)
    taken = await make_client(signup=False)
    with pytest.raises(ApiError) as dup:
        await taken.signup(alice.username, PASSWORD, "other@example.test")
    assert dup.value.code == "username_taken"


async def test_server_down_is_a_clear_error(tmp_path: Path) -> None:
    api = Api("http://127.0.0.1:9")
    with pytest.raises(ServerUnavailable) as exc:
        await api.login("alice", "password", None)
    assert "Cannot reach the Parley server at http://127.0.0.1:9" in str(exc.value)
    await api.close()


async def test_refresh_rotates_tokens_and_two_processes_share_them(
    make_client: MakeClient, system: System
) -> None:
    alice = await make_client()
    # A second client on the same store (as `parley send` beside `parley chat`).
    twin = Client(system.lb, data_dir=alice.data_dir, passphrase="test passphrase", kdf=CHEAP_KDF)
    await twin.open()
    try:
        first = await alice.access_token()
        rotated = await alice.access_token(force=True)
        assert rotated != first
        # The twin sees the refreshed token in the store and does not present the
        # (now used) refresh token again, which the server would treat as theft.
        assert await twin.access_token(force=True) == rotated
        assert (await twin.me())["user_id"] == alice.user_id
        again = await twin.access_token(force=True)
        assert again != rotated
        assert (await alice.me())["user_id"] == alice.user_id
    finally:
        await twin.close()


async def test_logout_then_login_again_keeps_the_device(make_client: MakeClient) -> None:
    alice = await make_client()
    assert alice.username
    device = alice.device()
    assert device is not None
    await alice.logout()
    with pytest.raises(NotLoggedIn):
        await alice.connect()
    await alice.login(alice.username, PASSWORD)
    again = alice.device()
    assert again is not None and again.identity == device.identity
    devices = await alice.devices()
    assert [d["device_id"] for d in devices] == [alice.device_id]
    assert devices[0]["this_device"] is True
    sessions = await alice.auth_sessions()
    assert [s["current"] for s in sessions] == [True]


async def test_login_with_a_second_factor(make_client: MakeClient) -> None:
    import time

    import pyotp
    from parley.client import SecondFactor

    alice = await make_client()
    assert alice.username
    await alice.access_token()
    setup = await alice.api.request("POST", "/auth/v1/2fa/totp/setup", json={"password": PASSWORD})
    totp = pyotp.TOTP(setup["secret"])
    codes = await alice.api.request("POST", "/auth/v1/2fa/totp/confirm", json={"code": totp.now()})
    assert codes["recovery_codes"]
    asked: list[SecondFactor] = []

    async def prompt(challenge: SecondFactor) -> tuple[str, str]:
        asked.append(challenge)
        if len(asked) == 1:
            return "totp", "000000" if totp.now() != "000000" else "111111"  # a wrong code first
        # The confirmation used this time step's code; the next step's is accepted (drift 1).
        return "totp", totp.at(time.time() + 30)

    # A new install: the second factor comes before anything about devices.
    again = await make_client(alice.username, signup=False)
    user_id = await again.login(alice.username, PASSWORD, second_factor=prompt, new_identity=True)
    assert user_id == alice.user_id
    assert len(asked) == 2 and "totp" in asked[0].methods and "recovery" in asked[0].methods
    with pytest.raises(ApiError) as exc:
        await (await make_client(alice.username, signup=False)).login(alice.username, PASSWORD)
    assert exc.value.code == "second_factor_required"
