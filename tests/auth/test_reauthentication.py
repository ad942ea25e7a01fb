"""The password asked again (2FA changes, recovery codes, a password change) is a request
limit per session of the account, counted before argon2; security notices are capped per account.

Before, these passed only through the login lockout, which a right password clears: a
signed-in user looping them with their own password held the argon2 slots other
users' logins wait for, and mailed a notice per request to the account's address
(never verified: anyone's).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pyotp
import pytest

from services.auth.config import AuthSettings
from services.auth.tokens import digest, normalize_recovery_code
from services.common.state import REGISTRY
from tests.auth.conftest import ROOMY
from tests.auth.helpers import PASSWORD, AuthApi, RecordingHasher

REAUTH = 4  # password re-checks per session per window
REAUTH_USER = 10  # and per account, all sessions together
NOTICES = 2  # security notices per account per window (then one saying so)

# Every endpoint that asks a signed-in user for the password again.
RECHECKS = [
    ("/auth/v1/password", {"current_password": PASSWORD, "new_password": PASSWORD}),
    ("/auth/v1/2fa/totp/setup", {"password": PASSWORD}),
    ("/auth/v1/2fa/totp/disable", {"password": PASSWORD}),
    ("/auth/v1/2fa/email/setup", {"password": PASSWORD}),
    ("/auth/v1/2fa/email/disable", {"password": PASSWORD}),
    ("/auth/v1/2fa/recovery-codes", {"password": PASSWORD}),
]


@pytest.fixture
def auth_config() -> AuthSettings:
    return AuthSettings.for_tests(
        **ROOMY,
        limit_reauth_account=f"{REAUTH}/900",
        limit_reauth_user=f"{REAUTH_USER}/900",
        limit_security_notices=f"{NOTICES}/3600",
        limit_email_code_sends="1/3600",
    )


@pytest.fixture
def hasher(auth: AuthApi, monkeypatch: pytest.MonkeyPatch) -> RecordingHasher:
    recorder = RecordingHasher(auth.service.passwords.hasher)
    monkeypatch.setattr(auth.service.passwords, "hasher", recorder)
    return recorder


async def user_doc(auth: AuthApi, user: dict[str, Any]) -> dict[str, Any]:
    doc = await auth.db["users"].find_one({"_id": user["user"]["user_id"]})
    assert doc is not None
    return dict(doc)


def mails_to(auth: AuthApi, addr: str) -> int:
    """Mails the sink holds for ``addr`` (it writes each before acknowledging it, so a
    request's mail is there once the request has answered)."""
    return len(list(auth.maildir.glob(f"*-{addr}.eml")))


async def test_password_rechecks_are_limited_per_session_before_argon2(
    auth: AuthApi, hasher: RecordingHasher
) -> None:
    user = await auth.signup()
    token, addr = user["access_token"], user["email"]

    async def setup() -> int:
        status, _ = await auth.call(
            "POST", "/auth/v1/2fa/totp/setup", {"password": PASSWORD}, token=token
        )
        return status

    # A burst with the right password: exactly the limit is checked, the rest refused.
    assert Counter(await asyncio.gather(*(setup() for _ in range(3 * REAUTH)))) == {
        200: REAUTH,
        429: 2 * REAUTH,
    }
    assert len(hasher.verified) == REAUTH
    before = await user_doc(auth, user)
    # Now every re-check is refused, right password or wrong, before any hashing, and
    # changes nothing: no pending secret, no new password, no factor off, no mail.
    for path, body in [*RECHECKS, ("/auth/v1/2fa/totp/setup", {"password": "a wrong one"})]:
        resp = await auth.client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
        err = (await resp.json())["error"]
        assert (resp.status, err["code"]) == (429, "rate_limited"), path
        assert 0 < err["details"]["retry_after"] <= 900
        assert resp.headers["Retry-After"] == str(err["details"]["retry_after"])
    assert len(hasher.verified) == REAUTH
    assert await user_doc(auth, user) == before
    assert await auth.redis.keys(f"{auth.service.store.prefix}:auth:eph:*") == []
    assert mails_to(auth, addr) == 0
    # The wrong password counted no login failure either (it was never checked).
    assert not await auth.redis.keys(f"{auth.service.store.prefix}:auth:rl:login_failures:*")
    await auth.call("GET", "/auth/v1/me", token=token, status=200)  # the session lives on
    # The owner's other session has its own window (review finding: per account, a
    # stolen session without the password, sending wrong ones, used up the owner's).
    owner = await auth.login(user["user"]["username"])
    await auth.call(
        "POST", "/auth/v1/2fa/totp/setup", {"password": PASSWORD},
        token=owner["access_token"], status=200,
    )  # fmt: skip
    # Another account has its own window.
    other = await auth.signup()
    await auth.call(
        "POST", "/auth/v1/2fa/totp/setup", {"password": PASSWORD},
        token=other["access_token"], status=200,
    )  # fmt: skip


async def test_password_rechecks_are_limited_per_account_whatever_the_sessions(
    auth: AuthApi, hasher: RecordingHasher
) -> None:
    """Per session alone, every login bought another window: one user signing in again
    and again ran argon2 ~1,000 times in 15 minutes from one address. The account's
    sessions together now get ``REAUTH_USER``; each session still at most ``REAUTH``
    of them (so a stolen one cannot spend the owner's)."""
    user = await auth.signup()
    sessions = [user, *[await auth.login(user["user"]["username"]) for _ in range(3)]]
    hasher.verified.clear()  # the logins' checks
    statuses = []
    for session in sessions:
        for _ in range(REAUTH + 1):
            status, body = await auth.call(
                "POST", "/auth/v1/2fa/recovery-codes", {"password": PASSWORD},
                token=session["access_token"],
            )  # fmt: skip
            statuses.append((status, body["error"]["code"]))
    # 409: the password was checked (then: no factor to make codes for).
    ok, limited = (409, "conflict"), (429, "rate_limited")
    run = [ok] * REAUTH + [limited]
    rest = REAUTH_USER - 2 * REAUTH
    assert statuses == run + run + [ok] * rest + [limited] * (2 * (REAUTH + 1) - rest)
    assert len(hasher.verified) == REAUTH_USER


async def test_security_notices_are_capped_per_account(auth: AuthApi) -> None:
    """Someone signs up with another person's address and makes changes in a loop:
    that address gets the first notices, one saying the next ones are held, then none."""
    addr = "someone-else@example.test"
    user = await auth.signup(email_addr=addr)
    token, uid = user["access_token"], user["user"]["user_id"]
    _, setup = await auth.call(
        "POST", "/auth/v1/2fa/totp/setup", {"password": PASSWORD}, token=token, status=200
    )
    await auth.call(
        "POST", "/auth/v1/2fa/totp/confirm",
        {"code": pyotp.TOTP(setup["secret"]).now()}, token=token, status=200,
    )  # fmt: skip
    assert mails_to(auth, addr) == 1  # the authenticator added
    last: dict[str, Any] = {}
    for _ in range(REAUTH - 1):
        _, last = await auth.call(
            "POST", "/auth/v1/2fa/recovery-codes", {"password": PASSWORD}, token=token, status=200
        )
    # Every change was made (the last codes are the stored ones)...
    stored = {d["_id"] async for d in auth.db["recovery_codes"].find({"user_id": uid})}
    assert stored == {digest(uid, normalize_recovery_code(c)) for c in last["recovery_codes"]}
    # ...but only NOTICES notices and one more were mailed.
    mails = await auth.mail_to(addr, after=NOTICES)
    assert len(mails) == NOTICES + 1 == mails_to(auth, addr)
    assert all(m.startswith("Subject: Parley: ") for m in mails)
    assert not any("This is the last notice until" in m for m in mails[:NOTICES])
    assert "This is the last notice until" in mails[NOTICES]
    assert "new recovery codes were made" in mails[NOTICES]
    # Each past the cap counted as a refusal (the dashboards' limiter panel).
    refusals = auth.app[REGISTRY].get_sample_value(
        "parley_rate_limit_refusals_total",
        {"service": "auth", "rule": "security_notices", "code": "rate_limited"},
    )
    assert refusals == REAUTH - NOTICES


async def test_email_setup_is_refused_before_argon2_when_no_code_can_be_sent(
    auth: AuthApi, hasher: RecordingHasher
) -> None:
    user = await auth.signup()
    token, addr = user["access_token"], user["email"]
    await auth.call(
        "POST", "/auth/v1/2fa/email/setup", {"password": PASSWORD}, token=token, status=202
    )
    assert len(hasher.verified) == 1
    assert mails_to(auth, addr) == 1
    before = await user_doc(auth, user)
    # The account's sends are used up: refused as such, the right password or a wrong
    # one, before the password is checked (it was checked first, at argon2's cost, and
    # a wrong one answered invalid_credentials).
    for password in (PASSWORD, "not the password"):
        status, body = await auth.call(
            "POST", "/auth/v1/2fa/email/setup", {"password": password}, token=token
        )
        assert (status, body["error"]["code"]) == (429, "rate_limited"), password
    assert len(hasher.verified) == 1
    assert mails_to(auth, addr) == 1
    assert await user_doc(auth, user) == before
