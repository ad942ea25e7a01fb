"""Changing second factors (issue #20): only with the password, always told to the owner,
and what a password reset does to them."""

from __future__ import annotations

from typing import Any

import pyotp

from tests.auth.helpers import PASSWORD, AuthApi, code_in

NEW_PASSWORD = "a brand new passphrase"


async def user_doc(auth: AuthApi, user: dict[str, Any]) -> dict[str, Any]:
    doc = await auth.db["users"].find_one({"_id": user["user"]["user_id"]})
    assert doc is not None
    return dict(doc)


async def enrol_totp(auth: AuthApi, user: dict[str, Any]) -> tuple[pyotp.TOTP, list[str]]:
    token = user["access_token"]
    _, setup = await auth.call(
        "POST", "/auth/v1/2fa/totp/setup", {"password": user["password"]}, token=token, status=200
    )
    totp = pyotp.TOTP(setup["secret"])
    _, codes = await auth.call(
        "POST", "/auth/v1/2fa/totp/confirm", {"code": totp.now()}, token=token, status=200
    )
    return totp, codes["recovery_codes"]


async def test_enrolling_a_factor_asks_for_the_password(auth: AuthApi) -> None:
    """A stolen access token alone cannot add the thief's authenticator or take codes."""
    user = await auth.signup()
    token = user["access_token"]
    before = await user_doc(auth, user)
    refusals = [
        # No password, a wrong one: refused, and nothing pending, nothing mailed.
        ("/auth/v1/2fa/totp/setup", None, 400, "invalid_json"),
        ("/auth/v1/2fa/totp/setup", {}, 422, "validation_failed"),
        ("/auth/v1/2fa/totp/setup", {"password": "not the password"}, 401, "invalid_credentials"),
        ("/auth/v1/2fa/email/setup", None, 400, "invalid_json"),
        ("/auth/v1/2fa/email/setup", {"password": "not the password"}, 401, "invalid_credentials"),
    ]
    for path, body, status, code in refusals:
        got, err = await auth.call("POST", path, body, token=token)
        assert (got, err["error"]["code"]) == (status, code), path
    assert await user_doc(auth, user) == before
    assert await auth.redis.keys(f"{auth.service.store.prefix}:auth:eph:*") == []
    assert not list(auth.maildir.glob(f"*-{user['email']}.eml"))
    # Re-authentication is under the login lockout like a login.
    status, _ = await auth.call(
        "POST", "/auth/v1/2fa/recovery-codes", {"password": "still not it"}, token=token
    )
    assert status == 401
    # With the password, enrolment goes ahead.
    _, codes = await enrol_totp(auth, user)
    assert len(codes) == 10
    # Removing a factor and new recovery codes ask for it too (as before).
    for path in ("/auth/v1/2fa/recovery-codes", "/auth/v1/2fa/totp/disable"):
        status, err = await auth.call("POST", path, {"password": "wrong again"}, token=token)
        assert (status, err["error"]["code"]) == (401, "invalid_credentials"), path
    assert (await user_doc(auth, user))["totp_enabled"]


async def test_the_owner_is_mailed_about_every_change(auth: AuthApi) -> None:
    user = await auth.signup()
    token, addr = user["access_token"], user["email"]
    await enrol_totp(auth, user)
    await auth.call(
        "POST", "/auth/v1/2fa/recovery-codes", {"password": PASSWORD}, token=token, status=200
    )
    await auth.call(
        "POST", "/auth/v1/2fa/email/setup", {"password": PASSWORD}, token=token, status=202
    )
    [*_, setup] = await auth.mail_to(addr, after=2)
    await auth.call(
        "POST", "/auth/v1/2fa/email/confirm", {"code": code_in(setup)}, token=token, status=200
    )
    await auth.call(
        "POST", "/auth/v1/2fa/totp/disable", {"password": PASSWORD}, token=token, status=204
    )
    await auth.call(
        "POST", "/auth/v1/2fa/email/disable", {"password": PASSWORD}, token=token, status=204
    )
    await auth.call(
        "POST", "/auth/v1/password",
        {"current_password": PASSWORD, "new_password": NEW_PASSWORD}, token=token, status=204,
    )  # fmt: skip
    mails = await auth.mail_to(addr, after=6)
    subjects = [m.splitlines()[0] for m in mails]
    assert subjects == [
        "Subject: Parley: an authenticator app was added to your account",
        "Subject: Parley: new recovery codes were made for your account",
        "Subject: Confirm e-mail sign-in codes: " + code_in(setup),
        "Subject: Parley: sign-in codes by e-mail were turned on for your account",
        "Subject: Parley: the authenticator app was removed from your account",
        "Subject: Parley: sign-in codes by e-mail were turned off for your account",
        "Subject: Parley: your password was changed",
    ]
    notice = mails[0]
    assert user["user"]["username"] in notice
    assert "127.0.0.1" in notice  # where the change came from
    assert "If this was not you" in notice


async def test_a_password_reset_turns_second_factors_off_and_says_so(auth: AuthApi) -> None:
    """The decision (docs/auth.md, "Password reset and second factors"): a reset is
    the owner's way back in when a second factor is lost, or was added by someone
    else, so it turns every factor off, and both mails say so."""
    user = await auth.signup()
    name, addr = user["user"]["username"], user["email"]
    await enrol_totp(auth, user)
    assert "challenge_id" in await auth.login(name)
    mails_before = len(await auth.mail_to(addr))
    await auth.call("POST", "/auth/v1/password/reset", {"email": addr}, status=202)
    await auth.service.drain()
    [*_, reset_mail] = await auth.mail_to(addr, after=mails_before)
    assert "turns off two-step sign-in" in reset_mail
    token = reset_mail.split("reset token: ")[1].split()[0]
    await auth.call(
        "POST", "/auth/v1/password/reset/confirm",
        {"token": token, "new_password": NEW_PASSWORD}, status=204,
    )  # fmt: skip
    [*_, notice] = await auth.mail_to(addr, after=mails_before + 1)
    assert notice.startswith("Subject: Parley: your password was reset")
    assert "Two-step sign-in was turned off" in notice
    doc = await user_doc(auth, user)
    assert (doc["totp_enabled"], doc["totp_secret"], doc["email_2fa"]) == (False, None, False)
    assert await auth.db["recovery_codes"].count_documents({"user_id": doc["_id"]}) == 0
    # The new password alone signs in; the owner can enrol again.
    tokens = await auth.login(name, NEW_PASSWORD)
    assert "access_token" in tokens
    _, status = await auth.call("GET", "/auth/v1/2fa", token=tokens["access_token"], status=200)
    assert status == {"totp": False, "email": False, "recovery_codes_left": 0}


async def test_a_reset_without_second_factors_says_nothing_about_them(auth: AuthApi) -> None:
    user = await auth.signup()
    addr = user["email"]
    await auth.call("POST", "/auth/v1/password/reset", {"email": addr}, status=202)
    await auth.service.drain()
    [reset_mail] = await auth.mail_to(addr)
    assert "two-step" not in reset_mail
    token = reset_mail.split("reset token: ")[1].split()[0]
    await auth.call(
        "POST", "/auth/v1/password/reset/confirm",
        {"token": token, "new_password": NEW_PASSWORD}, status=204,
    )  # fmt: skip
    [_, notice] = await auth.mail_to(addr, after=1)
    assert notice.startswith("Subject: Parley: your password was reset")
    assert "two-step" not in notice


async def test_the_documents_say_enrolment_needs_the_password(auth: AuthApi) -> None:
    _, doc = await auth.call("GET", "/auth/openapi.json", status=200)
    for path in ("/auth/v1/2fa/totp/setup", "/auth/v1/2fa/email/setup"):
        op = doc["paths"][path]["post"]
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/PasswordRequest"), path
        assert "invalid_credentials" in op["responses"]["401"]["description"]
        assert "account_locked" in op["responses"]["429"]["description"]


async def test_a_challenge_opened_with_a_password_changed_since_is_over(auth: AuthApi) -> None:
    """A second-factor challenge opened with the old password stayed answerable for
    its five minutes after the owner changed the password: a thief holding the old
    password and a recovery code (or the authenticator's seed) still got a session."""
    user = await auth.signup()
    name = user["user"]["username"]
    _, recovery = await enrol_totp(auth, user)
    challenge = (await auth.login(name))["challenge_id"]  # the thief, with the old password
    await auth.call(
        "POST", "/auth/v1/password",
        {"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        token=user["access_token"], status=204,
    )  # fmt: skip
    status, err = await auth.call(
        "POST", "/auth/v1/login/2fa",
        {"challenge_id": challenge, "method": "recovery", "code": recovery[0]},
    )  # fmt: skip
    assert (status, err["error"]["code"]) == (401, "challenge_expired")
    # The recovery code was not spent on it: the owner still has it.
    again = (await auth.login(name, NEW_PASSWORD))["challenge_id"]
    _, tokens = await auth.call(
        "POST", "/auth/v1/login/2fa",
        {"challenge_id": again, "method": "recovery", "code": recovery[0]}, status=200,
    )  # fmt: skip
    assert "access_token" in tokens


async def test_an_old_challenge_answered_after_its_factor_was_turned_off_is_over(
    auth: AuthApi,
) -> None:
    """Before: the answer was checked against a factor no longer on (TOTP's secret
    gone): an undocumented 409 ``conflict``, the attempt's place in the account's
    code-failure window kept (a failure counted toward a lockout), and the challenge
    left to be answered again. Now the challenge is over (``challenge_expired``),
    deleted, and the place given back."""
    user = await auth.signup()
    uid, name = user["user"]["user_id"], user["user"]["username"]
    totp, _ = await enrol_totp(auth, user)
    challenge = (await auth.login(name))["challenge_id"]
    await auth.call(
        "POST", "/auth/v1/2fa/totp/disable", {"password": PASSWORD},
        token=user["access_token"], status=204,
    )  # fmt: skip
    answer = {"challenge_id": challenge, "method": "totp", "code": totp.now()}
    status, err = await auth.call("POST", "/auth/v1/login/2fa", answer)
    assert (status, err["error"]["code"]) == (401, "challenge_expired"), err
    window = auth.service.limiter.key("code_failures", uid)
    assert int(await auth.redis.get(window) or 0) == 0
    status, err = await auth.call("POST", "/auth/v1/login/2fa", answer)
    assert (status, err["error"]["code"]) == (401, "challenge_expired")
    assert "access_token" in await auth.login(name)  # no factor left: tokens at once


async def test_a_challenge_opened_before_the_other_sessions_were_ended_is_over(
    auth: AuthApi,
) -> None:
    """Someone with the password (and a recovery code) was answering a challenge when
    the owner ended every other session: the challenge still opened a session. It is
    over now (the account's security stamp went up), and the code is not spent."""
    user = await auth.signup()
    name = user["user"]["username"]
    _, recovery = await enrol_totp(auth, user)
    challenge = (await auth.login(name))["challenge_id"]
    await auth.call("DELETE", "/auth/v1/sessions", token=user["access_token"], status=200)
    status, err = await auth.call(
        "POST", "/auth/v1/login/2fa",
        {"challenge_id": challenge, "method": "recovery", "code": recovery[0]},
    )  # fmt: skip
    assert status == 401 and err["error"]["code"] == "challenge_expired", err
    again = (await auth.login(name))["challenge_id"]
    await auth.call(
        "POST", "/auth/v1/login/2fa",
        {"challenge_id": again, "method": "recovery", "code": recovery[0]}, status=200,
    )  # fmt: skip
