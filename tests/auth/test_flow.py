"""The whole path a user walks, through real MongoDB, Redis and SMTP."""

from __future__ import annotations

import asyncio
import re
import secrets
import time

import orjson
import pyotp
import pytest

from services.auth import admin
from services.auth.models import AdminUserPatch, BlockRequest
from services.auth.state import Caller
from services.common.auth import (
    Claims,
    TokenVerifier,
    device_revocation_key,
    revocation_channel,
)
from services.common.config import Settings
from tests.auth.helpers import PASSWORD, AuthApi, code_in, unique_name
from tests.support.aio import eventually


async def test_signup_login_totp_refresh_logout(auth: AuthApi, settings: Settings) -> None:
    user = await auth.signup()
    uid = user["user"]["user_id"]
    assert user["token_type"] == "Bearer"
    assert user["expires_in"] == settings.access_token_ttl_s
    assert user["user"]["roles"] == ["user"]
    _, me = await auth.call("GET", "/auth/v1/me", token=user["access_token"], status=200)
    assert me["username"] == user["user"]["username"]
    assert me["two_factor"] == {"totp": False, "email": False, "recovery_codes_left": 0}

    # The token is a real EdDSA JWT the shared verifier accepts, via the public JWKS.
    verifier = TokenVerifier(settings, str(auth.client.make_url("/.well-known/jwks.json")))
    claims = await verifier.verify(user["access_token"])
    await verifier.close()
    assert (claims.sub, claims.sid, claims.roles) == (uid, user["session_id"], ("user",))

    # Enrol TOTP.
    _, setup = await auth.call(
        "POST",
        "/auth/v1/2fa/totp/setup",
        {"password": PASSWORD},
        token=user["access_token"],
        status=200,
    )
    assert setup["provisioning_uri"].startswith("otpauth://totp/Parley:")
    assert f"secret={setup['secret']}" in setup["provisioning_uri"]
    totp = pyotp.TOTP(setup["secret"])
    status, err = await auth.call(
        "POST", "/auth/v1/2fa/totp/confirm", {"code": "000000"}, token=user["access_token"]
    )
    if totp.now() != "000000":
        assert (status, err["error"]["code"]) == (401, "invalid_code")
    _, codes = await auth.call(
        "POST",
        "/auth/v1/2fa/totp/confirm",
        {"code": totp.now()},
        token=user["access_token"],
        status=200,
    )
    assert len(codes["recovery_codes"]) == 10
    assert all(re.fullmatch(r"[A-Z2-9]{5}-[A-Z2-9]{5}", c) for c in codes["recovery_codes"])

    # Log out: the access token stops working at once.
    await auth.call("POST", "/auth/v1/logout", token=user["access_token"], status=204)
    status, err = await auth.call("GET", "/auth/v1/me", token=user["access_token"])
    assert (status, err["error"]["code"]) == (401, "token_revoked")

    # Log in: a challenge, not tokens.
    challenge = await auth.login(user["user"]["username"])
    assert challenge["second_factor_required"] is True
    assert "access_token" not in challenge
    assert challenge["methods"] == ["totp", "recovery"]
    # The code just used at enrolment cannot be replayed in the same time step.
    enrol_code = totp.now()
    status, err = await auth.call(
        "POST",
        "/auth/v1/login/2fa",
        {"challenge_id": challenge["challenge_id"], "method": "totp", "code": enrol_code},
    )
    if status == 401:
        assert err["error"]["code"] == "invalid_code"
        assert err["error"]["details"]["attempts_left"] == 4
        # Next time step's code (accepted: one step of drift either way).
        next_code = totp.at(time.time() + 30)
        _, tokens = await auth.call(
            "POST",
            "/auth/v1/login/2fa",
            {"challenge_id": challenge["challenge_id"], "method": "totp", "code": next_code},
            status=200,
        )
    else:
        tokens = err
    assert tokens["user"]["user_id"] == uid
    # The challenge is single use.
    status, err = await auth.call(
        "POST",
        "/auth/v1/login/2fa",
        {"challenge_id": challenge["challenge_id"], "method": "recovery", "code": "x"},
    )
    assert (status, err["error"]["code"]) == (401, "challenge_expired")

    # Refresh: new tokens, same session; the old refresh token is spent.
    fresh = await auth.refresh(tokens["refresh_token"])
    assert fresh["session_id"] == tokens["session_id"]
    assert fresh["refresh_token"] != tokens["refresh_token"]
    await auth.call("GET", "/auth/v1/me", token=fresh["access_token"], status=200)

    # Log out ends the session: its refresh token is refused too.
    await auth.call("POST", "/auth/v1/logout", token=fresh["access_token"], status=204)
    body = await auth.refresh(fresh["refresh_token"], status=401)
    assert body["error"]["code"] == "token_revoked"


async def test_email_codes_and_recovery_codes(auth: AuthApi) -> None:
    user = await auth.signup()
    token = user["access_token"]
    await auth.call(
        "POST", "/auth/v1/2fa/email/setup", {"password": PASSWORD}, token=token, status=202
    )
    [setup_mail] = await auth.mail_to(user["email"])
    assert "Confirm" in setup_mail
    _, codes = await auth.call(
        "POST", "/auth/v1/2fa/email/confirm", {"code": code_in(setup_mail)}, token=token, status=200
    )
    recovery = codes["recovery_codes"]
    assert len(recovery) == 10

    # Login: e-mail is the only factor, so the code is sent straight away, over SMTP.
    challenge = await auth.login(user["user"]["username"])
    assert challenge["methods"] == ["email", "recovery"]
    assert challenge["email_code_sent"] is True
    mails = await auth.mail_to(user["email"], after=1)
    code = code_in(mails[-1])
    wrong = "000000" if code != "000000" else "111111"
    status, err = await auth.call(
        "POST",
        "/auth/v1/login/2fa",
        {"challenge_id": challenge["challenge_id"], "method": "email", "code": wrong},
    )
    assert (status, err["error"]["code"]) == (401, "invalid_code")
    _, tokens = await auth.call(
        "POST",
        "/auth/v1/login/2fa",
        {"challenge_id": challenge["challenge_id"], "method": "email", "code": code},
        status=200,
    )
    _, me = await auth.call("GET", "/auth/v1/me", token=tokens["access_token"], status=200)
    assert me["two_factor"] == {"totp": False, "email": True, "recovery_codes_left": 10}

    # A resend gives a new code; the old one stops working.
    challenge = await auth.login(user["user"]["username"])
    await auth.mail_to(user["email"], after=2)
    await auth.call(
        "POST",
        "/auth/v1/login/2fa/email",
        {"challenge_id": challenge["challenge_id"]},
        status=202,
    )
    mails = await auth.mail_to(user["email"], after=3)
    old, new = code_in(mails[-2]), code_in(mails[-1])
    if old != new:
        status, err = await auth.call(
            "POST",
            "/auth/v1/login/2fa",
            {"challenge_id": challenge["challenge_id"], "method": "email", "code": old},
        )
        assert err["error"]["code"] == "invalid_code"

    # A recovery code works once (any case, with or without the dash).
    code = recovery[0].lower().replace("-", "")
    _, tokens = await auth.call(
        "POST",
        "/auth/v1/login/2fa",
        {"challenge_id": challenge["challenge_id"], "method": "recovery", "code": code},
        status=200,
    )
    challenge = await auth.login(user["user"]["username"])
    status, err = await auth.call(
        "POST",
        "/auth/v1/login/2fa",
        {"challenge_id": challenge["challenge_id"], "method": "recovery", "code": recovery[0]},
    )
    assert (status, err["error"]["code"]) == (401, "invalid_code")
    _, status_body = await auth.call("GET", "/auth/v1/2fa", token=tokens["access_token"])
    assert status_body["recovery_codes_left"] == 9

    # A method that is not on is refused without burning an attempt.
    status, err = await auth.call(
        "POST",
        "/auth/v1/login/2fa",
        {"challenge_id": challenge["challenge_id"], "method": "totp", "code": "123456"},
    )
    assert (status, err["error"]["code"]) == (400, "bad_request")

    # Turning e-mail codes off needs the password; then login gives tokens again.
    status, err = await auth.call(
        "POST",
        "/auth/v1/2fa/email/disable",
        {"password": "not the password"},
        token=tokens["access_token"],
    )
    assert (status, err["error"]["code"]) == (401, "invalid_credentials")
    await auth.call(
        "POST",
        "/auth/v1/2fa/email/disable",
        {"password": PASSWORD},
        token=tokens["access_token"],
        status=204,
    )
    tokens = await auth.login(user["user"]["username"])
    assert "access_token" in tokens
    _, st = await auth.call("GET", "/auth/v1/2fa", token=tokens["access_token"])
    assert st == {"totp": False, "email": False, "recovery_codes_left": 0}


async def test_refresh_reuse_revokes_the_whole_family(auth: AuthApi, settings: Settings) -> None:
    user = await auth.signup()
    first = user["refresh_token"]
    second = (await auth.refresh(first))["refresh_token"]
    third_body = await auth.refresh(second)
    third = third_body["refresh_token"]

    pubsub = auth.redis.pubsub()
    await pubsub.subscribe(revocation_channel(settings.redis_prefix))
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    try:
        # An attacker replays the first token: reuse detected, the session ends.
        body = await auth.refresh(first, status=401)
        assert body["error"]["code"] == "refresh_token_reused"
        msg = await eventually(
            lambda: pubsub.get_message(ignore_subscribe_messages=True, timeout=1),
            lambda m: m is not None,
        )
        assert orjson.loads(msg["data"]) == {
            "type": "session_revoked",
            "user_id": user["user"]["user_id"],
            "sid": user["session_id"],
        }
    finally:
        await pubsub.aclose()
    # The legitimate holder's newest token is dead too, and so is its access token.
    body = await auth.refresh(third, status=401)
    assert body["error"]["code"] == "token_revoked"
    status, err = await auth.call("GET", "/auth/v1/me", token=third_body["access_token"])
    assert (status, err["error"]["code"]) == (401, "token_revoked")
    # An unknown token is simply invalid.
    body = await auth.refresh("not-a-token", status=401)
    assert body["error"]["code"] == "invalid_token"


async def test_sessions_are_listed_and_revoked_by_their_owner(auth: AuthApi) -> None:
    user = await auth.signup()
    name = user["user"]["username"]
    second = await auth.login(name)
    third = await auth.login(name)
    _, listing = await auth.call("GET", "/auth/v1/sessions", token=second["access_token"])
    sids = {s["session_id"]: s for s in listing["sessions"]}
    assert set(sids) == {user["session_id"], second["session_id"], third["session_id"]}
    assert sids[second["session_id"]]["current"] is True
    assert sids[user["session_id"]]["current"] is False

    await auth.call(
        "DELETE", f"/auth/v1/sessions/{third['session_id']}", token=second["access_token"],
        status=204,
    )  # fmt: skip
    status, err = await auth.call("GET", "/auth/v1/me", token=third["access_token"])
    assert err["error"]["code"] == "token_revoked"

    _, revoked = await auth.call(
        "DELETE", "/auth/v1/sessions", token=second["access_token"], status=200
    )
    assert revoked == {"revoked": 1}
    status, _ = await auth.call("GET", "/auth/v1/me", token=user["access_token"])
    assert status == 401
    _, listing = await auth.call("GET", "/auth/v1/sessions", token=second["access_token"])
    assert [s["session_id"] for s in listing["sessions"]] == [second["session_id"]]


async def test_change_password_ends_the_other_sessions(auth: AuthApi) -> None:
    user = await auth.signup()
    other = await auth.login(user["user"]["username"])
    new = "a much better passphrase 42"
    status, err = await auth.call(
        "POST",
        "/auth/v1/password",
        {"current_password": "wrong password here", "new_password": new},
        token=user["access_token"],
    )
    assert (status, err["error"]["code"]) == (401, "invalid_credentials")
    status, err = await auth.call(
        "POST",
        "/auth/v1/password",
        {"current_password": PASSWORD, "new_password": "password123"},
        token=user["access_token"],
    )
    assert (status, err["error"]["code"]) == (422, "weak_password")
    await auth.call(
        "POST",
        "/auth/v1/password",
        {"current_password": PASSWORD, "new_password": new},
        token=user["access_token"],
        status=204,
    )
    await auth.call("GET", "/auth/v1/me", token=user["access_token"], status=200)
    status, _ = await auth.call("GET", "/auth/v1/me", token=other["access_token"])
    assert status == 401
    await auth.login(user["user"]["username"], PASSWORD, status=401)
    await auth.login(user["user"]["username"], new, status=200)


async def test_password_reset_by_email(auth: AuthApi) -> None:
    user = await auth.signup()
    await auth.call("POST", "/auth/v1/password/reset", {"email": user["email"].upper()}, status=202)
    [mail] = await auth.mail_to(user["email"])
    token = re.search(r"reset token: (\S+)", mail)
    assert token
    new = "reset to something long"
    body = {"token": token.group(1), "new_password": "qwertyuiop"}
    status, err = await auth.call("POST", "/auth/v1/password/reset/confirm", body)
    assert (status, err["error"]["code"]) == (422, "weak_password")
    body["new_password"] = new
    await auth.call("POST", "/auth/v1/password/reset/confirm", body, status=204)
    # Single use, and every session was ended.
    status, err = await auth.call("POST", "/auth/v1/password/reset/confirm", body)
    assert (status, err["error"]["code"]) == (401, "invalid_token")
    status, _ = await auth.call("GET", "/auth/v1/me", token=user["access_token"])
    assert status == 401
    await auth.login(user["user"]["username"], new, status=200)


async def test_a_sign_in_raced_with_a_password_reset_gets_no_session(
    auth: AuthApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A login read the account, checked the old password (argon2: a fifth of a
    second), and opened its session after a reset had written the new password and
    ended every session it found: a thief with the old password kept a session the
    owner's reset promised to end. Its session is now refused and ended."""
    user = await auth.signup()
    uid, name = user["user"]["user_id"], user["user"]["username"]
    await auth.call("POST", "/auth/v1/password/reset", {"email": user["email"]}, status=202)
    [mail] = await auth.mail_to(user["email"])
    token = re.search(r"reset token: (\S+)", mail)
    assert token
    store = auth.service.store
    insert_session = store.insert_session
    reached, gate = asyncio.Event(), asyncio.Event()

    async def held(doc: dict[str, object]) -> None:
        reached.set()
        await gate.wait()  # the old password checked; the session not in yet
        await insert_session(doc)

    monkeypatch.setattr(store, "insert_session", held)
    thief = asyncio.create_task(
        auth.call("POST", "/auth/v1/login", {"username": name, "password": PASSWORD})
    )
    await reached.wait()
    body = {"token": token.group(1), "new_password": "reset to something long"}
    await auth.call("POST", "/auth/v1/password/reset/confirm", body, status=204)
    gate.set()
    status, err = await thief
    assert (status, err["error"]["code"]) == (401, "invalid_credentials")
    live = [d async for d in auth.db["sessions"].find({"user_id": uid, "revoked_at": None})]
    assert live == []


@pytest.mark.parametrize("change", ["block", "roles"])
async def test_a_sign_in_raced_with_a_block_or_a_role_change_gets_no_session(
    auth: AuthApi, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """A login read the account (an admin, not blocked), checked the password, and
    opened its session after an admin had blocked the account, or taken its admin
    role, and ended every session it found: the session survived it (only the
    password was compared once it was in), its access token carrying the admin role
    taken away. It is refused and ended now."""
    user = await auth.signup()
    uid, name = user["user"]["user_id"], user["user"]["username"]
    svc = auth.service
    await svc.store.update_user(uid, {"roles": ["user", "admin"]})
    acting = Claims(sub=secrets.token_hex(16), sid="s", roles=("user", "admin"), jti="j", exp=0)
    store = svc.store
    insert_session = store.insert_session
    reached, gate = asyncio.Event(), asyncio.Event()

    async def held(doc: dict[str, object]) -> None:
        reached.set()
        await gate.wait()  # the password checked; the session not in yet
        await insert_session(doc)

    monkeypatch.setattr(store, "insert_session", held)
    signing_in = asyncio.create_task(
        auth.call("POST", "/auth/v1/login", {"username": name, "password": PASSWORD})
    )
    await reached.wait()
    if change == "block":
        await admin.block_user(svc, acting, Caller(ip="127.0.0.1"), uid, BlockRequest(reason="x"))
    else:
        patch = AdminUserPatch.model_validate({"roles": ["user"]})
        await admin.edit_user(svc, acting, Caller(ip="127.0.0.1"), uid, patch)
    gate.set()
    status, body = await signing_in
    assert status == 401 and body["error"]["code"] == "invalid_credentials", body
    live = [d async for d in auth.db["sessions"].find({"user_id": uid, "revoked_at": None})]
    assert live == []


async def test_a_refresh_that_failed_on_the_server_can_be_tried_again(
    auth: AuthApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refresh token was used up before the new tokens were issued: a server error
    in between answered 5xx, and the client's retry was taken for a stolen token's
    reuse (the session ended, the user signed out). The token is given back now."""
    user = await auth.signup()
    issue = auth.service.tokens.issue
    failures: list[str] = []

    async def fails_once(*args: object, **kw: object) -> str:
        if not failures:
            failures.append("signing")
            raise ConnectionError("the key store did not answer")
        return await issue(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(auth.service.tokens, "issue", fails_once)
    status, _ = await auth.call(
        "POST", "/auth/v1/token/refresh", {"refresh_token": user["refresh_token"]}
    )
    assert status >= 500 and failures
    again = await auth.refresh(user["refresh_token"])  # the retry
    assert again["session_id"] == user["session_id"]
    await auth.call("GET", "/auth/v1/me", token=again["access_token"], status=200)
    # Used once now: a third use is a reuse, as ever.
    await auth.refresh(user["refresh_token"], status=401)


async def test_user_lookup_by_username_or_id(auth: AuthApi) -> None:
    alice = await auth.signup()
    bob = await auth.signup()
    uid, name = alice["user"]["user_id"], alice["user"]["username"]
    for key in (uid, name, name.upper()):
        _, body = await auth.call(
            "GET", f"/auth/v1/users/{key}", token=bob["access_token"], status=200
        )
        assert body == {"user_id": uid, "username": name}
    status, err = await auth.call(
        "GET", f"/auth/v1/users/{unique_name()}", token=bob["access_token"]
    )
    assert (status, err["error"]["code"]) == (404, "user_not_found")
    status, err = await auth.call("GET", f"/auth/v1/users/{name}")
    assert (status, err["error"]["code"]) == (401, "unauthenticated")


async def test_many_user_ids_are_looked_up_at_once(auth: AuthApi) -> None:
    """``POST /auth/v1/lookup``: the users of those ids that exist, in the order
    asked, each as the one-user look-up gives it, and the ids no user has; bad bodies
    are 422 ``validation_failed``; anonymous, 401."""
    users = [await auth.signup() for _ in range(3)]
    token = users[0]["access_token"]
    nobody = secrets.token_hex(16)
    ids = [users[2]["user"]["user_id"], nobody, users[1]["user"]["user_id"]]
    _, body = await auth.call("POST", "/auth/v1/lookup", {"user_ids": ids}, token=token)
    one = [
        (await auth.call("GET", f"/auth/v1/users/{u}", token=token, status=200))[1]
        for u in (ids[0], ids[2])
    ]
    assert body == {"users": one, "missing": [nobody]}
    for bad in (
        {"user_ids": []},
        {"user_ids": [nobody, nobody]},
        {"user_ids": [users[1]["user"]["username"]]},  # ids only, not usernames
        {"user_ids": [nobody.upper()]},
        {"user_ids": [secrets.token_hex(16) for _ in range(1001)]},
        {"user_ids": nobody},
        {"user_ids": [nobody], "more": 1},
        {},
    ):
        status, err = await auth.call("POST", "/auth/v1/lookup", bad, token=token)
        assert (status, err["error"]["code"]) == (422, "validation_failed"), bad
    status, err = await auth.call("POST", "/auth/v1/lookup", {"user_ids": [nobody]})
    assert (status, err["error"]["code"]) == (401, "unauthenticated")


async def test_a_removed_device_cannot_log_in_and_its_sessions_end(auth: AuthApi) -> None:
    """The key directory removed device 2 (its revocation key is set, as
    services/keys does): a login as device 2 is refused with ``device_removed`` before
    any second factor is asked, and its sessions leave the owner's list (ended:
    nothing else could end them)."""
    user = await auth.signup()
    name, uid = user["user"]["username"], user["user"]["user_id"]
    one = await auth.login_device(name, 1)
    two = await auth.login_device(name, 2)
    _, listing = await auth.call("GET", "/auth/v1/sessions", token=one["access_token"])
    by_sid = {s["session_id"]: s["device_id"] for s in listing["sessions"]}
    assert by_sid == {user["session_id"]: None, one["session_id"]: 1, two["session_id"]: 2}
    prefix = auth.service.settings.redis_prefix
    await auth.redis.set(device_revocation_key(prefix, uid, 2), "1", ex=3600)
    status, err = await auth.call(
        "POST", "/auth/v1/login", {"username": name, "password": PASSWORD, "device_id": 2}
    )
    assert (status, err["error"]["code"]) == (403, "device_removed"), err
    assert err["error"]["details"] == {"device_id": 2}
    _, listing = await auth.call("GET", "/auth/v1/sessions", token=one["access_token"])
    assert {s["session_id"] for s in listing["sessions"]} == {user["session_id"], one["session_id"]}
    session = await auth.service.store.sessions.find_one({"_id": two["session_id"]})
    assert session is not None and session["revoked_reason"] == "device_removed"
    assert (await auth.refresh(two["refresh_token"], status=401))["error"][
        "code"
    ] == "token_revoked"
    # Device 1 logs in as before.
    assert (await auth.login_device(name, 1))["session_id"]
