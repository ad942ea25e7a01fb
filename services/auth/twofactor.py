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
SIX_DIGITS = re.compile(r"^\d{6}$")
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
    await svc.store.update_user(
        user["_id"],
        {"totp_enabled": True, "totp_secret": user["totp_pending"], "totp_last_step": step},
        unset=["totp_pending"],
    )
    log.info("totp enabled", extra={"user_id": user["_id"]})
    codes = await _first_recovery_codes(svc, user)
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
    await svc.limiter.check("email_code_sends", user["_id"])
    await lockout.verify_password_again(svc, user, password, caller.ip, claims.sid)
    if user.get("email_2fa"):
        raise ApiError(ErrorCode.CONFLICT, "E-mail codes are already on.")
    await svc.limiter.hit("email_code_sends", user["_id"])
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
    if not await svc.store.eph_delete(EMAIL_SETUP, user["_id"]):
        raise _expired(enrolment=True)
    await svc.store.update_user(user["_id"], {"email_2fa": True})
    log.info("email 2fa enabled", extra={"user_id": user["_id"]})
    codes = await _first_recovery_codes(svc, user)
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


async def _first_recovery_codes(svc: AuthService, user: User) -> RecoveryCodes:
    """Codes on turning on a first factor; none (already shown) for a second one."""
    if methods(user):
        return RecoveryCodes(recovery_codes=[])
    return await _new_recovery_codes(svc, user["_id"])


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
            await _send_login_code(svc, challenge_id, user)
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
    if user is None or user["blocked"]:
        raise _expired()
    await _send_login_code(svc, challenge_id, user)
    return Accepted(message="A code is on its way to your e-mail address.")


async def _send_login_code(svc: AuthService, challenge_id: str, user: User) -> None:
    key = digest(challenge_id)
    sends = await svc.store.eph_incr(CHALLENGE, key, "email_sends")
    if sends is None:
        raise _expired()
    if sends > svc.config.email_code_sends_per_challenge:
        raise ApiError(ErrorCode.RATE_LIMITED, "Too many codes sent; log in again later.")
    await svc.limiter.hit("email_code_sends", user["_id"])
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
    user, device, device_id = await check_challenge(svc, body, caller)
    return await sessions.start(svc, user, SECOND_FACTOR_AMR, caller, device, device_id)


async def check_challenge(
    svc: AuthService, body: SecondFactorRequest, caller: Caller
) -> tuple[User, str | None, int | None]:
    """The second factor: the account (and device label and id) whose challenge this answers.

    Single use. Shared by ``/v1/login/2fa`` and the OpenID provider's sign-in page.
    """
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
    if (
        user is None
        or user["blocked"]
        # Opened with a password that has changed since (sessions.password_stamp).
        or challenge.get("pw", "None") != str(sessions.password_stamp(user))
        # Opened before the account's sessions were ended (sessions.security_stamp;
        # a challenge from before the stamp existed has none: 0).
        or challenge.get("ss", "0") != str(sessions.security_stamp(user))
        # The factor it answers was turned off since (TOTP off: the code cannot be
        # checked; e-mail codes off: the code mailed before must not count).
        or body.method not in methods(user)
    ):
        await svc.store.eph_delete(CHALLENGE, key)
        await attempt.give_back(svc)
        raise _expired()
    if not await _code_ok(svc, user, body, challenge):
        svc.metrics.login_failures.labels("code").inc()
        raise _invalid_code(svc.config.challenge_max_attempts - attempts)
    # The right code: this address's run of failures ends.
    await attempt.succeeded(svc)
    if not await svc.store.eph_delete(CHALLENGE, key):
        raise _expired()  # a concurrent request completed it first
    await lockout.signed_in(svc, user_id, caller.ip)
    did = str(challenge.get("device_id") or "")
    return user, challenge.get("device") or None, int(did) if did.isdigit() else None


async def _code_ok(
    svc: AuthService, user: User, body: SecondFactorRequest, challenge: Mapping[str, str]
) -> bool:
    if body.method == "totp":
        return await _check_totp(svc, user, body.code)
    if body.method == "email":
        stored = challenge.get("email_code", "")
        expires = float(challenge.get("email_code_exp") or 0)
        candidate = digest(body.challenge_id, body.code.strip())
        return bool(stored) and svc.now().timestamp() < expires and same(stored, candidate)
    code_hash = digest(user["_id"], normalize_recovery_code(body.code))
    ok = await svc.store.consume_recovery_code(code_hash, user["_id"], svc.now())
    if ok:
        log.info("recovery code used", extra={"user_id": user["_id"]})
    return ok


# -- helpers -------------------------------------------------------------------


async def _reauthenticate(svc: AuthService, claims: Claims, password: str, caller: Caller) -> User:
    """Sensitive changes ask for the password again (a request limit per account, then
    the login lockout: ``lockout.verify_password_again``)."""
    user = await svc.own_user(claims)
    await lockout.verify_password_again(svc, user, password, caller.ip, claims.sid)
    return user
