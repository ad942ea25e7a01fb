"""Two-factor authentication: TOTP (RFC 6238), one-time codes by e-mail, recovery codes.

A login whose password is right, for an account with a second factor, gets a
*challenge* (a random id, valid ``challenge_ttl_s``, kept in Redis) instead of
tokens. The client answers it at ``/v1/login/2fa`` with a TOTP code, an
e-mailed code or a recovery code. Guessing is bounded three ways: attempts
per challenge (then it is gone), failures per (account, address) and per
account from addresses it never fully signed in from (then a lockout:
services.auth.lockout), and code entries per IP.

TOTP codes are accepted one step either side of now (clock drift) and each
time step only once per account (no replay within the window). E-mailed codes
are 6 digits, single-use, valid ``email_code_ttl_s``. Recovery codes are ten
characters (~50 bits), single-use; only their SHA-256 is stored.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pyotp

from services.auth import lockout, sessions
from services.auth.mail import MailError
from services.auth.models import (
    Accepted,
    ChallengeResponse,
    RecoveryCodes,
    SecondFactorRequest,
    TokenResponse,
    TotpSetup,
    TwoFactorStatus,
)
from services.auth.notices import Notice, notify
from services.auth.state import AuthService, Caller
from services.auth.tokens import (
    digest,
    new_numeric_code,
    new_recovery_code,
    new_token,
    normalize_recovery_code,
    same,
)
from services.common.auth import Claims
from services.common.errors import ApiError, ErrorCode

log = logging.getLogger(__name__)

CHALLENGE = "challenge"
EMAIL_SETUP = "email-setup"
# ASCII digits only: ``\d`` matched any Unicode digit ("١٢٣٤٥٦", full-width, mathematical),
# and such a code reached ``hmac.compare_digest`` as a non-ASCII str, which raises
# TypeError: a 500, after the attempt had taken its lockout places.
SIX_DIGITS = re.compile(r"[0-9]{6}")
SECOND_FACTOR_AMR = ["pwd", "otp", "mfa"]

User = Mapping[str, Any]


def methods(user: User) -> list[str]:
    out = []
    if user.get("totp_enabled"):
        out.append("totp")
    if user.get("email_2fa"):
        out.append("email")
    if out:
        out.append("recovery")
    return out


async def status(svc: AuthService, user: User) -> TwoFactorStatus:
    return TwoFactorStatus(
        totp=bool(user.get("totp_enabled")),
        email=bool(user.get("email_2fa")),
        recovery_codes_left=await svc.store.count_recovery_codes(user["_id"]),
    )


def _invalid_code(left: int | None = None) -> ApiError:
    details = {"attempts_left": left} if left is not None else None
    return ApiError(ErrorCode.INVALID_CODE, "The code is not right.", details=details)


def _expired(enrolment: bool = False) -> ApiError:
    if enrolment:
        return ApiError(ErrorCode.CHALLENGE_EXPIRED, "This code has expired; ask for a new one.")
    return ApiError(ErrorCode.CHALLENGE_EXPIRED, "This sign-in attempt has expired; log in again.")


# -- TOTP -------------------------------------------------------------------


def totp_step(secret: str, code: str, now_ts: float) -> int | None:
    """The time step whose code this is (now, or one step either side), else None."""
    code = code.strip().replace(" ", "")
    if not SIX_DIGITS.fullmatch(code):
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now_ts)
    for step in (current, current - 1, current + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def _open_totp(svc: AuthService, user: User, field: str) -> str:
    sealed = user.get(field)
    if not sealed:
        raise ApiError(ErrorCode.CONFLICT, "TOTP is not set up.")
    return svc.box.open(sealed, f"totp:{user['_id']}").decode()


async def _check_totp(svc: AuthService, user: User, code: str) -> bool:
    step = totp_step(_open_totp(svc, user, "totp_secret"), code, svc.now().timestamp())
    if step is None:
        return False
    # Each time step once: a code seen on the wire cannot be replayed.
    return await svc.store.advance_totp_step(user["_id"], step)


async def totp_setup(svc: AuthService, claims: Claims, password: str, caller: Caller) -> TotpSetup:
    # The password again: a stolen access token alone cannot add an authenticator.
    user = await _reauthenticate(svc, claims, password, caller)
    if user.get("totp_enabled"):
        raise ApiError(ErrorCode.CONFLICT, "TOTP is already on; turn it off first.")
    secret = pyotp.random_base32(32)
    await svc.store.update_user(
        user["_id"], {"totp_pending": svc.box.seal(secret.encode(), f"totp:{user['_id']}")}
    )
    uri = pyotp.TOTP(secret).provisioning_uri(
        name=user["username"], issuer_name=svc.config.totp_issuer
    )
    return TotpSetup(secret=secret, provisioning_uri=uri)


async def totp_confirm(
    svc: AuthService, claims: Claims, code: str, caller: Caller
) -> RecoveryCodes:
    user = await svc.own_user(claims)
    if user.get("totp_enabled"):
        raise ApiError(ErrorCode.CONFLICT, "TOTP is already on.")
    secret = _open_totp(svc, user, "totp_pending")
    attempt = await lockout.reserve_code(svc, user["_id"], caller.ip)
    step = totp_step(secret, code, svc.now().timestamp())
    if step is None:
        raise _invalid_code()  # the attempt keeps its places: a failure
    await attempt.give_back(svc)
    # One write, on condition that this secret is still the pending one: of two
    # confirms at once (a double submit), one turns TOTP on, makes the recovery codes
    # and mails the notice; the other is 409 and changes nothing. Before, both did,
    # each answering its own codes (twenty live, or the first answer's dead).
    before = await svc.store.enable_totp(user["_id"], user["totp_pending"], step)
    if before is None:
        # Another confirm won, or a new setup replaced this secret meanwhile (another
        # tab), or the write failed (the embedded server answers an error as no match):
        # 409 only when TOTP is on indeed; else this setup is over, TOTP still off.
        now = await svc.store.user_by_id(user["_id"])
        if now is not None and now.get("totp_enabled"):
            raise ApiError(ErrorCode.CONFLICT, "TOTP is already on.")
        raise ApiError(
            ErrorCode.CHALLENGE_EXPIRED, "This setup was replaced or has ended; set up again."
        )
    log.info("totp enabled", extra={"user_id": user["_id"]})
    codes = await _first_recovery_codes(svc, before)
    await notify(svc, user, caller, Notice.TOTP_ON)
    return codes


async def totp_disable(svc: AuthService, claims: Claims, password: str, caller: Caller) -> None:
    user = await _reauthenticate(svc, claims, password, caller)
    await svc.store.update_user(
        user["_id"], {"totp_enabled": False, "totp_secret": None}, unset=["totp_pending"]
    )
    await _drop_codes_if_no_factor(svc, user["_id"])
    if user.get("totp_enabled"):
        await notify(svc, user, caller, Notice.TOTP_OFF)


# -- e-mail codes ------------------------------------------------------------


async def email_setup(svc: AuthService, claims: Claims, password: str, caller: Caller) -> Accepted:
    user = await svc.own_user(claims)
    # No code can be mailed: refused before the password costs argon2 (counted below,
    # once a code is sent, so that a wrong password uses up no send).
    await lockout.check_code_send(svc, user["_id"], caller.ip)
    await lockout.verify_password_again(svc, user, password, caller.ip, claims.sid)
    if user.get("email_2fa"):
        raise ApiError(ErrorCode.CONFLICT, "E-mail codes are already on.")
    await lockout.count_code_send(svc, user["_id"], caller.ip)
    code = new_numeric_code()
    ttl = svc.config.email_code_ttl_s
    await svc.store.eph_put(
        EMAIL_SETUP, user["_id"], {"code": digest(user["_id"], code), "attempts": "0"}, ttl
    )
    await _mail(svc.mailer.setup_code(user["email"], user["username"], code, ttl // 60))
    return Accepted(message="A code is on its way to your e-mail address.")


async def email_confirm(
    svc: AuthService, claims: Claims, code: str, caller: Caller
) -> RecoveryCodes:
    user = await svc.own_user(claims)
    pending = await svc.store.eph_get(EMAIL_SETUP, user["_id"])
    if pending is None:
        raise _expired(enrolment=True)
    attempt = await lockout.reserve_code(svc, user["_id"], caller.ip)
    attempts = await svc.store.eph_incr(EMAIL_SETUP, user["_id"], "attempts")
    if attempts is None or attempts > svc.config.challenge_max_attempts:
        await svc.store.eph_delete(EMAIL_SETUP, user["_id"])
        await attempt.give_back(svc)
        raise _expired(enrolment=True)
    if not same(pending["code"], digest(user["_id"], code.strip())):
        raise _invalid_code(svc.config.challenge_max_attempts - attempts)
    await attempt.give_back(svc)
    # The pending code is used once: of two confirms at once, the one that deletes it
    # turns e-mail codes on; the other is 409 (it was 401 challenge_expired).
    if not await svc.store.eph_delete(EMAIL_SETUP, user["_id"]):
        now = await svc.store.user_by_id(user["_id"])
        if now is not None and now.get("email_2fa"):
            raise ApiError(ErrorCode.CONFLICT, "E-mail codes are already on.")
        raise _expired(enrolment=True)
    before = await svc.store.enable_email_codes(user["_id"])
    if before is None:
        raise _expired(enrolment=True)
    log.info("email 2fa enabled", extra={"user_id": user["_id"]})
    codes = await _first_recovery_codes(svc, before)
    await notify(svc, user, caller, Notice.EMAIL_ON)
    return codes


async def email_disable(svc: AuthService, claims: Claims, password: str, caller: Caller) -> None:
    user = await _reauthenticate(svc, claims, password, caller)
    await svc.store.update_user(user["_id"], {"email_2fa": False})
    await _drop_codes_if_no_factor(svc, user["_id"])
    if user.get("email_2fa"):
        await notify(svc, user, caller, Notice.EMAIL_OFF)


async def _mail(send: Any) -> None:
    try:
        await send
    except MailError:
        raise ApiError(ErrorCode.UNAVAILABLE, "The e-mail could not be sent; retry.") from None


# -- recovery codes ------------------------------------------------------------


async def _new_recovery_codes(svc: AuthService, user_id: str) -> RecoveryCodes:
    now = svc.now()
    codes = [new_recovery_code() for _ in range(svc.config.recovery_code_count)]
    docs = [
        {
            "_id": digest(user_id, normalize_recovery_code(c)),
            "user_id": user_id,
            "created_at": now,
            "used_at": None,
        }
        for c in codes
    ]
    await svc.store.replace_recovery_codes(user_id, docs)
    return RecoveryCodes(recovery_codes=codes)


async def _first_recovery_codes(svc: AuthService, before: User) -> RecoveryCodes:
    """Codes on turning on a first factor; none (already shown) for a second one.

    ``before``: the account as the write that turned the factor on found it, not as
    read earlier: a TOTP and an e-mail-code confirm at once both read "no factor" and
    both made codes, each deleting the other's."""
    if methods(before):
        return RecoveryCodes(recovery_codes=[])
    return await _new_recovery_codes(svc, before["_id"])


async def regenerate_recovery_codes(
    svc: AuthService, claims: Claims, password: str, caller: Caller
) -> RecoveryCodes:
    user = await _reauthenticate(svc, claims, password, caller)
    if not methods(user):
        raise ApiError(ErrorCode.CONFLICT, "Turn on a second factor first.")
    codes = await _new_recovery_codes(svc, user["_id"])
    await notify(svc, user, caller, Notice.RECOVERY_CODES)
    return codes


async def turn_off_all(svc: AuthService, user_id: str) -> None:
    """Every second factor off, pending enrolments and recovery codes gone (a password reset)."""
    await svc.store.update_user(
        user_id,
        {"totp_enabled": False, "totp_secret": None, "email_2fa": False},
        unset=["totp_pending"],
    )
    await svc.store.eph_delete(EMAIL_SETUP, user_id)
    await svc.store.delete_recovery_codes(user_id)
    log.info("second factors turned off", extra={"user_id": user_id})


async def _drop_codes_if_no_factor(svc: AuthService, user_id: str) -> None:
    user = await svc.store.user_by_id(user_id)
    if user is not None and not methods(user):
        await svc.store.delete_recovery_codes(user_id)


# -- the login challenge ------------------------------------------------------


async def begin_login(
    svc: AuthService, user: User, caller: Caller, device: str | None, device_id: int | None
) -> ChallengeResponse:
    challenge_id = new_token()
    allowed = methods(user)
    await svc.store.eph_put(
        CHALLENGE,
        digest(challenge_id),
        {
            "user_id": user["_id"],
            "methods": ",".join(allowed),
            "attempts": "0",
            "email_sends": "0",
            "device": device or "",
            "device_id": str(device_id or ""),
            "pw": str(sessions.password_stamp(user)),
            "ss": str(sessions.security_stamp(user)),
        },
        svc.config.challenge_ttl_s,
    )
    sent = False
    if "email" in allowed and "totp" not in allowed:
        # E-mail is the only factor: send the code at once (if the mail server
        # is down, the client still gets the challenge and can ask again).
        try:
            await _send_login_code(svc, challenge_id, user, caller.ip)
            sent = True
        except ApiError as exc:
            log.warning("login code not sent", extra={"code": exc.code.value})
    return ChallengeResponse(
        challenge_id=challenge_id,
        methods=allowed,  # type: ignore[arg-type]
        expires_in=svc.config.challenge_ttl_s,
        email_code_sent=sent,
    )


async def send_login_code(svc: AuthService, challenge_id: str, caller: Caller) -> Accepted:
    await svc.limiter.hit("code_ip", caller.ip_key)
    challenge = await svc.store.eph_get(CHALLENGE, digest(challenge_id))
    if challenge is None:
        raise _expired()
    if "email" not in challenge["methods"].split(","):
        raise ApiError(ErrorCode.BAD_REQUEST, "E-mail codes are not on for this account.")
    user = await svc.store.user_by_id(challenge["user_id"])
    if user is None or _stale(challenge, user, "email"):
        # As an answer to it would be (check_challenge): before, a challenge opened with
        # a password changed since (or before every session was ended) kept mailing
        # codes, and spending the account's sends, for its five minutes.
        await svc.store.eph_delete(CHALLENGE, digest(challenge_id))
        raise _expired()
    await _send_login_code(svc, challenge_id, user, caller.ip)
    return Accepted(message="A code is on its way to your e-mail address.")


async def _send_login_code(svc: AuthService, challenge_id: str, user: User, ip: str) -> None:
    key = digest(challenge_id)
    sends = await svc.store.eph_incr(CHALLENGE, key, "email_sends")
    if sends is None:
        raise _expired()
    if sends > svc.config.email_code_sends_per_challenge:
        raise ApiError(ErrorCode.RATE_LIMITED, "Too many codes sent; log in again later.")
    # Per (account, address), and per account from addresses it never fully signed in
    # from: someone with only the password uses up their own addresses' sends, not
    # the owner's (services.auth.lockout).
    await lockout.count_code_send(svc, user["_id"], ip)
    code = new_numeric_code()
    ttl = svc.config.email_code_ttl_s
    expires = svc.now().timestamp() + ttl
    fields = {"email_code": digest(challenge_id, code), "email_code_exp": str(expires)}
    if not await svc.store.eph_update(CHALLENGE, key, fields):
        raise _expired()
    minutes = max(min(ttl, svc.config.challenge_ttl_s) // 60, 1)
    await _mail(svc.mailer.login_code(user["email"], user["username"], code, minutes))


async def complete_login(
    svc: AuthService, body: SecondFactorRequest, caller: Caller
) -> TokenResponse:
    user, device, device_id, spent = await _answer_challenge(svc, body, caller)
    try:
        return await sessions.start(svc, user, SECOND_FACTOR_AMR, caller, device, device_id)
    except ApiError:
        # Refused after the code was checked (the device removed, or the account
        # changed, in the moment between): a recovery code is not spent on a refusal.
        if spent is not None:
            await svc.store.release_recovery_code(spent[0], user["_id"], spent[1])
        raise


async def check_challenge(
    svc: AuthService, body: SecondFactorRequest, caller: Caller
) -> tuple[User, str | None, int | None]:
    """The second factor: the account (and device label and id) whose challenge this answers.

    Single use. Shared by ``/v1/login/2fa`` and the OpenID provider's sign-in page.
    """
    user, device, device_id, _ = await _answer_challenge(svc, body, caller)
    return user, device, device_id


Spent = tuple[str, datetime] | None
"""The recovery code an answer used (its hash, when), to give back if no session opens."""


async def _answer_challenge(
    svc: AuthService, body: SecondFactorRequest, caller: Caller
) -> tuple[User, str | None, int | None, Spent]:
    await svc.limiter.hit("code_ip", caller.ip_key)
    key = digest(body.challenge_id)
    challenge = await svc.store.eph_get(CHALLENGE, key)
    if challenge is None:
        raise _expired()
    user_id = challenge["user_id"]
    if body.method not in challenge["methods"].split(","):
        raise ApiError(ErrorCode.BAD_REQUEST, "This second factor is not on for this account.")
    # Counted before the code is checked: of parallel guesses, at most the limit are
    # tried. Per (account, address) and, from an address the owner never fully signed
    # in from, per account: whoever has only the password locks out their own
    # addresses, not the owner's (services.auth.lockout).
    attempt = await lockout.reserve_code(svc, user_id, caller.ip)
    attempts = await svc.store.eph_incr(CHALLENGE, key, "attempts")
    if attempts is None or attempts > svc.config.challenge_max_attempts:
        await svc.store.eph_delete(CHALLENGE, key)
        await attempt.give_back(svc)
        raise _expired()
    user = await svc.store.user_by_id(user_id)
    if user is None or _stale(challenge, user, body.method):
        await svc.store.eph_delete(CHALLENGE, key)
        await attempt.give_back(svc)
        raise _expired()
    did = str(challenge.get("device_id") or "")
    device_id = int(did) if did.isdigit() else None
    try:
        # Before the code is checked: a TOTP step and a recovery code were used up, and
        # then the session was refused (403 device_removed). The challenge is over (its
        # device stays removed); the attempt counts nowhere.
        await sessions.refuse_removed(svc, user_id, device_id)
    except ApiError:
        await svc.store.eph_delete(CHALLENGE, key)
        await attempt.give_back(svc)
        raise
    ok, spent = await _code_ok(svc, user, body, challenge)
    if not ok:
        svc.metrics.login_failures.labels("code").inc()
        raise _invalid_code(svc.config.challenge_max_attempts - attempts)
    # The right code: this address's run of failures ends.
    await attempt.succeeded(svc)
    if not await svc.store.eph_delete(CHALLENGE, key):
        if spent is not None:
            await svc.store.release_recovery_code(spent[0], user_id, spent[1])
        raise _expired()  # a concurrent request completed it first
    await lockout.signed_in(svc, user_id, caller.ip)
    return user, challenge.get("device") or None, device_id, spent


def _stale(challenge: Mapping[str, str], user: User, method: str) -> bool:
    """Whether the challenge no longer stands for ``user`` (read again) and ``method``."""
    return (
        bool(user["blocked"])
        # Opened with a password that has changed since (sessions.password_stamp).
        or challenge.get("pw", "None") != str(sessions.password_stamp(user))
        # Opened before the account's sessions were ended (sessions.security_stamp;
        # a challenge from before the stamp existed has none: 0).
        or challenge.get("ss", "0") != str(sessions.security_stamp(user))
        # The factor it answers was turned off since (TOTP off: the code cannot be
        # checked; e-mail codes off: the code mailed before must not count).
        or method not in methods(user)
    )


async def _code_ok(
    svc: AuthService, user: User, body: SecondFactorRequest, challenge: Mapping[str, str]
) -> tuple[bool, Spent]:
    """Whether the code is right; and the recovery code it used, if one."""
    if body.method == "totp":
        return await _check_totp(svc, user, body.code), None
    if body.method == "email":
        stored = challenge.get("email_code", "")
        expires = float(challenge.get("email_code_exp") or 0)
        candidate = digest(body.challenge_id, body.code.strip())
        ok = bool(stored) and svc.now().timestamp() < expires and same(stored, candidate)
        return ok, None
    code_hash, now = digest(user["_id"], normalize_recovery_code(body.code)), svc.now()
    if not await svc.store.consume_recovery_code(code_hash, user["_id"], now):
        return False, None
    log.info("recovery code used", extra={"user_id": user["_id"]})
    return True, (code_hash, now)


# -- helpers -------------------------------------------------------------------


async def _reauthenticate(svc: AuthService, claims: Claims, password: str, caller: Caller) -> User:
    """Sensitive changes ask for the password again (a request limit per account, then
    the login lockout: ``lockout.verify_password_again``)."""
    user = await svc.own_user(claims)
    await lockout.verify_password_again(svc, user, password, caller.ip, claims.sid)
    return user
