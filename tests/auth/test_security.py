"""Security properties: isolation between users, brute-force limits, no account enumeration."""

from __future__ import annotations

import time
from typing import Any

import pyotp
import pytest

from services.auth.config import AuthSettings
from tests.auth.helpers import PASSWORD, AuthApi, unique_name


@pytest.fixture
def auth_config() -> AuthSettings:
    return AuthSettings.for_tests(
        limit_signup_ip="4/3600",
        limit_login_ip="6/300",
        limit_login_failures="3/900",
        limit_code_ip="1000/300",
        limit_code_failures="4/900",
        challenge_max_attempts=3,
        limit_reset_ip="1000/3600",
        limit_reset_account="2/3600",
        limit_refresh_ip="1000/60",
    )


def ip(addr: str) -> dict[str, str]:
    return {"X-Forwarded-For": addr}


def without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    err = dict(body["error"])
    err.pop("request_id", None)
    return err


async def test_a_user_cannot_read_or_change_another_users_data(auth: AuthApi) -> None:
    alice = await auth.signup()
    bob = await auth.signup()
    bt = bob["access_token"]
    # Bob's view of himself never includes Alice.
    _, me = await auth.call("GET", "/auth/v1/me", token=bt, status=200)
    assert me["user_id"] == bob["user"]["user_id"]
    _, sessions = await auth.call("GET", "/auth/v1/sessions", token=bt, status=200)
    assert [s["session_id"] for s in sessions["sessions"]] == [bob["session_id"]]
    # Alice's session id is not found for Bob, and stays alive.
    status, err = await auth.call("DELETE", f"/auth/v1/sessions/{alice['session_id']}", token=bt)
    assert (status, err["error"]["code"]) == (404, "session_not_found")
    await auth.call("GET", "/auth/v1/me", token=alice["access_token"], status=200)
    # Revoking "all other sessions" only touches Bob's own.
    await auth.call("DELETE", "/auth/v1/sessions", token=bt, status=200)
    await auth.call("GET", "/auth/v1/me", token=alice["access_token"], status=200)
    # The public look-up shows nothing private.
    _, pub = await auth.call("GET", f"/auth/v1/users/{alice['user']['user_id']}", token=bt)
    assert set(pub) == {"user_id", "username"}
    # Bob's password change, 2FA enrolment and recovery codes change Bob only.
    await auth.call("POST", "/auth/v1/2fa/totp/setup", {"password": PASSWORD}, token=bt, status=200)
    _, st = await auth.call("GET", "/auth/v1/2fa", token=alice["access_token"], status=200)
    assert st == {"totp": False, "email": False, "recovery_codes_left": 0}
    alice_doc = await auth.db["users"].find_one({"_id": alice["user"]["user_id"]})
    assert alice_doc["totp_pending"] is None
    await auth.call(
        "POST", "/auth/v1/password",
        {"current_password": PASSWORD, "new_password": "bob's brand new secret"}, token=bt,
        status=204,
    )  # fmt: skip
    await auth.login(alice["user"]["username"], PASSWORD, status=200)
    # Another user's token for a user that is not there: nothing leaks.
    status, err = await auth.call("GET", "/auth/v1/admin/users", token=bt)
    assert (status, err["error"]["code"]) == (403, "forbidden")


async def test_login_brute_force_locks_the_account_not_revealing_it_exists(
    auth: AuthApi,
) -> None:
    user = await auth.signup()
    name = user["user"]["username"]
    ghost = unique_name()
    for attempt in range(3):
        real = await auth.call(
            "POST", "/auth/v1/login", {"username": name, "password": f"guess-{attempt}"},
            headers=ip("10.0.0.1"),
        )  # fmt: skip
        fake = await auth.call(
            "POST", "/auth/v1/login", {"username": ghost, "password": f"guess-{attempt}"},
            headers=ip("10.0.0.2"),
        )  # fmt: skip
        assert real[0] == fake[0] == 401
        assert without_request_id(real[1]) == without_request_id(fake[1])
        assert real[1]["error"]["code"] == "invalid_credentials"
    # Locked now from that address, even with the right password (the owner
    # elsewhere is not: tests/auth/test_lockout.py).
    for who, addr in ((name, "10.0.0.1"), (ghost, "10.0.0.2")):
        resp = await auth.client.post(
            "/auth/v1/login", json={"username": who, "password": PASSWORD}, headers=ip(addr)
        )
        body = await resp.json()
        assert resp.status == 429
        assert body["error"]["code"] == "account_locked"
        assert 0 < int(resp.headers["Retry-After"]) <= 900
        assert body["error"]["details"]["retry_after"] == int(resp.headers["Retry-After"])
    # Another account is not affected.
    other = await auth.signup()
    await auth.login(other["user"]["username"], status=200)


async def test_login_rate_limit_per_ip_uses_the_last_forwarded_hop(auth: AuthApi) -> None:
    user = await auth.signup()
    body = {"username": user["user"]["username"], "password": PASSWORD}
    for _ in range(6):
        status, _ = await auth.call("POST", "/auth/v1/login", body, headers=ip("192.0.2.1"))
        assert status == 200
    # A client cannot escape by prepending addresses: only the last hop counts.
    resp = await auth.client.post(
        "/auth/v1/login", json=body, headers={"X-Forwarded-For": "203.0.113.7, 192.0.2.1"}
    )
    assert resp.status == 429
    assert (await resp.json())["error"]["code"] == "rate_limited"
    assert int(resp.headers["Retry-After"]) > 0
    # A different client address has its own budget.
    status, _ = await auth.call("POST", "/auth/v1/login", body, headers=ip("192.0.2.2"))
    assert status == 200


async def test_second_factor_brute_force_is_stopped(auth: AuthApi) -> None:
    user = await auth.signup()
    token = user["access_token"]
    _, setup = await auth.call(
        "POST", "/auth/v1/2fa/totp/setup", {"password": PASSWORD}, token=token, status=200
    )
    totp = pyotp.TOTP(setup["secret"])
    await auth.call(
        "POST", "/auth/v1/2fa/totp/confirm", {"code": totp.now()}, token=token, status=200
    )
    name = user["user"]["username"]
    now = time.time()
    valid = {totp.at(now + drift) for drift in (-60, -30, 0, 30, 60)}
    wrong = next(f"{n:06d}" for n in range(1000000) if f"{n:06d}" not in valid)

    # Per challenge: 3 attempts, then it is gone.
    ch = (await auth.login(name))["challenge_id"]
    codes = []
    for _ in range(3):
        status, err = await auth.call(
            "POST", "/auth/v1/login/2fa", {"challenge_id": ch, "method": "totp", "code": wrong}
        )
        codes.append((status, err["error"]["code"], err["error"]["details"]["attempts_left"]))
    assert codes == [(401, "invalid_code", 2), (401, "invalid_code", 1), (401, "invalid_code", 0)]
    status, err = await auth.call(
        "POST", "/auth/v1/login/2fa", {"challenge_id": ch, "method": "totp", "code": totp.now()}
    )
    assert (status, err["error"]["code"]) == (401, "challenge_expired")

    # Per account: the 4th failure (across challenges) locks code entry.
    ch = (await auth.login(name))["challenge_id"]
    status, err = await auth.call(
        "POST",
        "/auth/v1/login/2fa",
        {"challenge_id": ch, "method": "recovery", "code": "AAAAA-AAAAA"},
    )
    assert (status, err["error"]["code"]) == (401, "invalid_code")
    resp = await auth.client.post(
        "/auth/v1/login/2fa", json={"challenge_id": ch, "method": "totp", "code": totp.now()}
    )
    assert resp.status == 429
    assert (await resp.json())["error"]["code"] == "account_locked"
    assert int(resp.headers["Retry-After"]) > 0
    # A guessed challenge id gets nothing.
    status, err = await auth.call(
        "POST", "/auth/v1/login/2fa",
        {"challenge_id": "x" * 43, "method": "totp", "code": "123456"},
    )  # fmt: skip
    assert (status, err["error"]["code"]) == (401, "challenge_expired")


async def test_signup_is_limited_per_ip(auth: AuthApi) -> None:
    for _ in range(4):
        await auth.signup()
    name = unique_name()
    resp = await auth.client.post(
        "/auth/v1/signup",
        json={"username": name, "email": f"{name}@example.test", "password": PASSWORD},
    )
    assert resp.status == 429
    assert (await resp.json())["error"]["code"] == "rate_limited"
    assert "Retry-After" in resp.headers
    assert await auth.db["users"].find_one({"username": name}) is None


async def test_ipv6_addresses_of_one_prefix_share_a_limit(auth: AuthApi) -> None:
    """Before: each IPv6 address had its own bucket, so one host with a /64 (2^64
    addresses) signed up, logged in and reset without limit. Now the /64 counts."""

    async def signup_from(addr: str) -> int:
        name = unique_name()
        resp = await auth.client.post(
            "/auth/v1/signup",
            json={"username": name, "email": f"{name}@example.test", "password": PASSWORD},
            headers=ip(addr),
        )
        return resp.status

    statuses = [await signup_from(f"2001:db8:7:1::{i:x}") for i in range(1, 6)]
    assert statuses == [201, 201, 201, 201, 429]
    assert await signup_from("2001:db8:7:2::1") == 201  # another subscriber's /64


async def test_password_reset_reveals_nothing_and_is_limited(auth: AuthApi) -> None:
    user = await auth.signup()
    ghost = f"{unique_name()}@example.test"
    real = await auth.call("POST", "/auth/v1/password/reset", {"email": user["email"]})
    fake = await auth.call("POST", "/auth/v1/password/reset", {"email": ghost})
    assert real[0] == fake[0] == 202
    assert real[1] == fake[1]
    await auth.service.drain()
    await auth.mail_to(user["email"])
    assert not list(auth.maildir.glob(f"*-{ghost}.eml"))
    # Per address, whether it exists or not: the third request is refused.
    for email_addr in (user["email"], ghost):
        await auth.call("POST", "/auth/v1/password/reset", {"email": email_addr}, status=202)
        resp = await auth.client.post("/auth/v1/password/reset", json={"email": email_addr})
        assert resp.status == 429 and "Retry-After" in resp.headers


async def test_signup_says_only_what_the_form_must(auth: AuthApi) -> None:
    user = await auth.signup()
    other = unique_name()
    status, err = await auth.call(
        "POST", "/auth/v1/signup",
        {"username": user["user"]["username"].upper(), "email": f"{other}@example.test",
         "password": PASSWORD},
    )  # fmt: skip
    assert (status, err["error"]["code"]) == (409, "username_taken")
    status, err = await auth.call(
        "POST", "/auth/v1/signup",
        {"username": other, "email": user["email"].upper(), "password": PASSWORD},
    )  # fmt: skip
    assert (status, err["error"]["code"]) == (409, "email_taken")
