"""Changing second factors (issue #20): only with the password, always told to the owner,
and what a password reset does to them."""

from __future__ import annotations

import asyncio
from typing import Any

import pyotp
import pytest

from services.auth.tokens import digest
from services.common.auth import device_revocation_key
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


# The same six digits in other scripts: Arabic-Indic, full-width, mathematical bold.
OTHER_DIGITS = tuple(
    "".join(chr(zero + d) for d in range(10)) for zero in (0x0660, 0xFF10, 0x1D7CE)
)


def in_other_digits(code: str) -> list[str]:
    return [code.translate(str.maketrans("0123456789", digits)) for digits in OTHER_DIGITS]


async def test_a_code_in_other_digits_is_a_wrong_code_not_a_server_error(auth: AuthApi) -> None:
    """A TOTP code spelled in Unicode digits passed the six-digit pattern (``\\d``) and
    reached ``hmac.compare_digest`` as a non-ASCII str, which raises TypeError: enrolment
    and the login's second factor answered 500, after the attempt had taken its places
    in the code-failure windows and a challenge attempt. Now it is a wrong code, counted
    as one (as "abcdef" is), and the right code in ASCII still works."""
    user = await auth.signup()
    uid, name, token = user["user"]["user_id"], user["user"]["username"], user["access_token"]
    _, setup = await auth.call(
        "POST", "/auth/v1/2fa/totp/setup", {"password": PASSWORD}, token=token, status=200
    )
    totp = pyotp.TOTP(setup["secret"])
    window = auth.service.limiter.key("code_failures", f"{uid}|127.0.0.1")
    for code in in_other_digits(totp.now()):
        status, err = await auth.call(
            "POST", "/auth/v1/2fa/totp/confirm", {"code": code}, token=token
        )
        assert (status, err["error"]["code"]) == (401, "invalid_code"), code
    assert int(await auth.redis.get(window)) == 3  # each a failure, as a wrong code is
    await auth.redis.delete(window)  # (room for the login's below)
    assert not (await user_doc(auth, user)).get("totp_enabled")
    _, codes = await auth.call(
        "POST", "/auth/v1/2fa/totp/confirm", {"code": totp.now()}, token=token, status=200
    )
    recovery = codes["recovery_codes"]
    challenge = (await auth.login(name))["challenge_id"]
    for left, code in zip((4, 3, 2), in_other_digits(totp.now()), strict=True):
        status, err = await auth.call(
            "POST", "/auth/v1/login/2fa",
            {"challenge_id": challenge, "method": "totp", "code": code},
        )  # fmt: skip
        assert (status, err["error"]["code"]) == (401, "invalid_code"), code
        assert err["error"]["details"]["attempts_left"] == left
    # A recovery code in full-width letters is no code of ours either.
    wide = recovery[0].translate({c: c + 0xFEE0 for c in range(0x21, 0x7F)})
    status, err = await auth.call(
        "POST", "/auth/v1/login/2fa",
        {"challenge_id": challenge, "method": "recovery", "code": wide},
    )  # fmt: skip
    assert (status, err["error"]["code"]) == (401, "invalid_code")
    _, tokens = await auth.call(
        "POST", "/auth/v1/login/2fa",
        {"challenge_id": challenge, "method": "recovery", "code": recovery[0]}, status=200,
    )  # fmt: skip
    assert tokens["user"]["user_id"] == uid


async def enrol_email(auth: AuthApi, user: dict[str, Any]) -> None:
    token = user["access_token"]
    await auth.call(
        "POST", "/auth/v1/2fa/email/setup", {"password": PASSWORD}, token=token, status=202
    )
    [*_, mail] = await auth.mail_to(user["email"])
    await auth.call(
        "POST", "/auth/v1/2fa/email/confirm", {"code": code_in(mail)}, token=token, status=200
    )


def sends_from(auth: AuthApi, user: dict[str, Any], address: str) -> str:
    """The key of the (account, address) window of e-mailed codes."""
    return auth.service.limiter.key("email_code_sends", f"{user['user']['user_id']}|{address}")


async def test_someone_with_only_the_password_cannot_use_up_the_owners_code_sends(
    auth: AuthApi,
) -> None:
    """E-mailed codes counted per account (6 an hour): someone with only the password
    signed in six times, and the owner's login mailed no code (``email_code_sent``
    false, a resend 429) for an hour, again every hour. Now per (account, address), and
    per account (20) only from addresses the account never fully signed in from."""
    user = await auth.signup()  # from 127.0.0.1: a known address from now on
    name = user["user"]["username"]
    await enrol_email(auth, user)

    async def login_from(address: str) -> Any:
        _, body = await auth.call(
            "POST", "/auth/v1/login", {"username": name, "password": PASSWORD},
            headers={"X-Forwarded-For": address}, status=200,
        )  # fmt: skip
        return body

    thief = "203.0.113.1"
    assert [(await login_from(thief))["email_code_sent"] for _ in range(7)] == [True] * 6 + [False]
    challenge = (await login_from(thief))["challenge_id"]
    status, err = await auth.call(
        "POST", "/auth/v1/login/2fa/email", {"challenge_id": challenge},
        headers={"X-Forwarded-For": thief},
    )  # fmt: skip
    assert (status, err["error"]["code"]) == (429, "rate_limited")
    owner = await auth.login(name)
    assert owner["email_code_sent"]
    await auth.call(
        "POST", "/auth/v1/login/2fa/email", {"challenge_id": owner["challenge_id"]}, status=202
    )
    # Many addresses: 20 codes an hour for the account from unknown ones, then none from a
    # new address; a refused send counts nowhere. The owner's known address still gets.
    for address in ("203.0.113.2", "203.0.113.3"):
        assert all([(await login_from(address))["email_code_sent"] for _ in range(6)])
    last = "203.0.113.4"
    assert [(await login_from(last))["email_code_sent"] for _ in range(3)] == [True, True, False]
    assert int(await auth.redis.get(sends_from(auth, user, last))) == 2
    assert (await auth.login(name))["email_code_sent"]


async def test_a_challenge_opened_before_a_password_change_mails_no_more_codes(
    auth: AuthApi,
) -> None:
    """Before, a resend checked only that the account existed and was not blocked: a
    challenge opened with the old password kept mailing codes (and spending the sends)
    for its five minutes after the owner changed the password."""
    user = await auth.signup()
    name = user["user"]["username"]
    await enrol_email(auth, user)
    challenge = (await auth.login(name))["challenge_id"]
    await auth.call(
        "POST", "/auth/v1/password",
        {"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        token=user["access_token"], status=204,
    )  # fmt: skip
    window = sends_from(auth, user, "127.0.0.1")
    sent_before = int(await auth.redis.get(window) or 0)
    status, err = await auth.call("POST", "/auth/v1/login/2fa/email", {"challenge_id": challenge})
    assert (status, err["error"]["code"]) == (401, "challenge_expired")
    assert int(await auth.redis.get(window) or 0) == sent_before
    record = f"{auth.service.store.prefix}:auth:eph:challenge:{digest(challenge)}"
    assert not await auth.redis.exists(record)


async def recovery_works(auth: AuthApi, name: str, code: str) -> bool:
    challenge = (await auth.login(name))["challenge_id"]
    status, _ = await auth.call(
        "POST", "/auth/v1/login/2fa",
        {"challenge_id": challenge, "method": "recovery", "code": code},
    )  # fmt: skip
    return status == 200


async def test_two_confirms_at_once_turn_the_factor_on_once(auth: AuthApi) -> None:
    """Confirm read the account, then wrote: a double submit (or two tabs) both answered
    200, each with its own recovery codes (twenty live, or the first answer's dead), and
    two notices were mailed. Now one write on condition that the secret is still
    pending: one answer has the codes, the other is 409 ``conflict``; the codes shown
    are the ones that work."""
    for _ in range(4):
        user = await auth.signup()
        name, token = user["user"]["username"], user["access_token"]
        _, setup = await auth.call(
            "POST", "/auth/v1/2fa/totp/setup", {"password": PASSWORD}, token=token, status=200
        )
        code = pyotp.TOTP(setup["secret"]).now()
        answers = await asyncio.gather(
            *[
                auth.call("POST", "/auth/v1/2fa/totp/confirm", {"code": code}, token=token)
                for _ in range(2)
            ]
        )
        statuses = sorted(status for status, _ in answers)
        assert statuses == [200, 409], answers
        [codes] = [body["recovery_codes"] for status, body in answers if status == 200]
        [refusal] = [body["error"]["code"] for status, body in answers if status == 409]
        assert (len(codes), refusal) == (10, "conflict")
        _, state = await auth.call("GET", "/auth/v1/2fa", token=token, status=200)
        assert (state["totp"], state["recovery_codes_left"]) == (True, 10)
        mails = await auth.mail_to(user["email"])
        assert sum("an authenticator app was added" in m for m in mails) == 1
        assert await recovery_works(auth, name, codes[0])


async def test_a_confirm_whose_setup_was_replaced_meanwhile_says_so_not_already_on(
    auth: AuthApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: a confirm whose conditional write matched nothing answered 409 "TOTP is
    already on" whatever the cause; a setup started again in another tab between its
    read and its write left TOTP off, the client told it was on."""
    user = await auth.signup()
    token = user["access_token"]
    _, first = await auth.call(
        "POST", "/auth/v1/2fa/totp/setup", {"password": PASSWORD}, token=token, status=200
    )
    store = auth.service.store
    enable = store.enable_totp

    async def setup_again_first(*args: Any, **kwargs: Any) -> Any:
        # The other tab's setup lands between this confirm's read and its write.
        await auth.call(
            "POST", "/auth/v1/2fa/totp/setup", {"password": PASSWORD}, token=token, status=200
        )
        return await enable(*args, **kwargs)

    monkeypatch.setattr(store, "enable_totp", setup_again_first)
    code = pyotp.TOTP(first["secret"]).now()
    status, body = await auth.call("POST", "/auth/v1/2fa/totp/confirm", {"code": code}, token=token)
    assert (status, body["error"]["code"]) == (401, "challenge_expired"), body
    _, state = await auth.call("GET", "/auth/v1/2fa", token=token, status=200)
    assert state["totp"] is False


async def test_totp_and_email_codes_confirmed_at_once_make_one_set_of_codes(
    auth: AuthApi,
) -> None:
    """Both read "no factor yet" and both made recovery codes, each set replacing the
    other's (delete, then insert): one answer's codes were dead, or twenty were live.
    Whichever write comes second sees the other factor on and makes none."""
    for _ in range(4):
        user = await auth.signup()
        name, token = user["user"]["username"], user["access_token"]
        _, setup = await auth.call(
            "POST", "/auth/v1/2fa/totp/setup", {"password": PASSWORD}, token=token, status=200
        )
        await auth.call(
            "POST", "/auth/v1/2fa/email/setup", {"password": PASSWORD}, token=token, status=202
        )
        [*_, mail] = await auth.mail_to(user["email"])
        answers = await asyncio.gather(
            auth.call(
                "POST", "/auth/v1/2fa/totp/confirm",
                {"code": pyotp.TOTP(setup["secret"]).now()}, token=token,
            ),
            auth.call("POST", "/auth/v1/2fa/email/confirm", {"code": code_in(mail)}, token=token),
        )  # fmt: skip
        assert [status for status, _ in answers] == [200, 200], answers
        shown = sorted((body["recovery_codes"] for _, body in answers), key=len)
        assert [len(codes) for codes in shown] == [0, 10]
        _, state = await auth.call("GET", "/auth/v1/2fa", token=token, status=200)
        assert (state["totp"], state["email"], state["recovery_codes_left"]) == (True, True, 10)
        assert await recovery_works(auth, name, shown[1][0])


async def test_a_refused_second_factor_spends_no_recovery_code(
    auth: AuthApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The code was checked (a recovery code used up, a TOTP step taken) before the
    session was refused: a device removed since the password was checked answered 403
    ``device_removed`` with one recovery code fewer. The device is checked first now;
    and a refusal after the check (the account's sessions ended in between) gives the
    recovery code back."""
    user = await auth.signup()
    uid, name, token = user["user"]["user_id"], user["user"]["username"], user["access_token"]
    _, recovery = await enrol_totp(auth, user)
    _, challenge = await auth.call(
        "POST", "/auth/v1/login",
        {"username": name, "password": PASSWORD, "device_id": 7}, status=200,
    )  # fmt: skip
    # The key directory removes device 7 meanwhile.
    removed = device_revocation_key(auth.service.settings.redis_prefix, uid, 7)
    await auth.redis.set(removed, b"1", ex=600)
    answer = {"challenge_id": challenge["challenge_id"], "method": "recovery", "code": recovery[0]}
    status, err = await auth.call("POST", "/auth/v1/login/2fa", answer)
    assert (status, err["error"]["code"]) == (403, "device_removed")
    _, state = await auth.call("GET", "/auth/v1/2fa", token=token, status=200)
    assert state["recovery_codes_left"] == 10
    failures = auth.service.limiter.key("code_failures", f"{uid}|127.0.0.1")
    assert await auth.redis.get(failures) is None  # the attempt counted nowhere

    # Every session ended between the check of the code and the session's write.
    store = auth.service.store
    insert = store.insert_session

    async def ended_meanwhile(doc: dict[str, Any]) -> None:
        await store.raise_security_stamp(uid)
        await insert(doc)

    challenge = await auth.login(name)
    monkeypatch.setattr(store, "insert_session", ended_meanwhile)
    answer = {"challenge_id": challenge["challenge_id"], "method": "recovery", "code": recovery[0]}
    status, err = await auth.call("POST", "/auth/v1/login/2fa", answer)
    assert (status, err["error"]["code"]) == (401, "invalid_credentials")
    monkeypatch.undo()
    _, state = await auth.call("GET", "/auth/v1/2fa", token=token)
    assert state["recovery_codes_left"] == 10
    assert await recovery_works(auth, name, recovery[0])
