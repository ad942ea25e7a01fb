"""Accounts: sign-up, password login, password change and reset, profile look-ups.

What an anonymous caller can learn about accounts is limited to what the
sign-up form must say (this username / this e-mail address is taken), and
that form is rate-limited per IP. Login answers the same error, in the same
time (an argon2 verification either way), whether the username exists or
not; password reset always answers "accepted" and does its work afterwards.
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any

from services.auth import lockout, sessions, twofactor
from services.auth.models import (
    Accepted,
    ChallengeResponse,
    ChangePasswordRequest,
    LoginRequest,
    MeResponse,
    PasswordResetConfirm,
    PasswordResetRequest,
    Preferences,
    PreferencesPatch,
    SignupRequest,
    TokenResponse,
    UserPublic,
    UsersFound,
)
from services.auth.notices import Notice, notify
from services.auth.passwords import check_policy
from services.auth.state import AuthService, Caller
from services.auth.store import DuplicateError
from services.auth.tokens import digest, new_id, new_token
from services.common.auth import Claims
from services.common.errors import ApiError, ErrorCode

log = logging.getLogger(__name__)

# A reset whose confirmation failed part-way can be finished by the retry of the same
# request for at least this long after its token was used, even past its expiry.
RESET_FINISH_S = 600

# ASCII only, on purpose: no homoglyphs (a Cyrillic "a"), no invisible or
# bidi-control characters, no normalisation surprises. Case-insensitive:
# stored lower-cased.
USERNAME_RE = re.compile(r"^[a-z][a-z0-9_.-]{1,30}[a-z0-9]$")
# A user id is 32 hex digits; a username never looks like one.
USER_ID_RE = re.compile(r"^[0-9a-f]{32}$")
RESERVED = frozenset(
    {
        "admin", "administrator", "root", "system", "parley", "support", "help",
        "security", "abuse", "postmaster", "noreply", "no-reply", "moderator",
        "staff", "official", "everyone", "here", "channel", "me", "null", "undefined",
        # The last segment of GET /auth/v1/users/{name}: the load balancers keep paths
        # ending in these for operators (deploy/terraform/modules/alb), so such a user
        # could not be looked up on AWS.
        "metrics", "readyz", "healthz",
    }
)  # fmt: skip
EMAIL_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


def canonical_username(raw: str) -> str:
    """The stored form of a username, or INVALID_USERNAME with the rule."""
    name = raw.lower()
    if (
        not USERNAME_RE.fullmatch(name)
        or ".." in name
        or USER_ID_RE.fullmatch(name)
        or name in RESERVED
    ):
        raise ApiError(
            ErrorCode.INVALID_USERNAME,
            "A username has 3-32 characters: ASCII letters, digits, '.', '_' or '-', "
            "starting with a letter and ending with a letter or digit.",
        )
    return name


def canonical_email(raw: str) -> tuple[str, str]:
    """(as given, lower-cased for uniqueness), or VALIDATION_FAILED."""
    email = raw.strip()
    # "=?": an RFC 2047 encoded word, which mail libraries decode in a header into
    # another address than the one stored (and unique) here.
    if len(email) > 254 or not EMAIL_RE.fullmatch(email) or "=?" in email:
        raise ApiError(
            ErrorCode.VALIDATION_FAILED,
            "The request is not valid.",
            details=[{"field": "email", "problem": "not an e-mail address"}],
        )
    return email, email.lower()


def new_user_doc(
    username: str, email: str, password_hash: str, roles: list[str], now: Any
) -> dict[str, Any]:
    return {
        "_id": new_id(),
        "username": username,
        "email": email,
        "email_lc": email.lower(),
        "password_hash": password_hash,
        "roles": roles,
        "blocked": False,
        "blocked_at": None,
        "blocked_reason": None,
        "created_at": now,
        "updated_at": now,
        "password_changed_at": now,
        "totp_enabled": False,
        "totp_secret": None,
        "totp_pending": None,
        "totp_last_step": 0,
        "email_2fa": False,
    }


async def create_user(
    svc: AuthService, username: str, email: str, password: str, roles: list[str]
) -> dict[str, Any]:
    """Validate and insert an account (sign-up and the CLI both come here)."""
    name = canonical_username(username)
    email, email_lc = canonical_email(email)
    check_policy(password, svc.config, username=name, email=email)
    await raise_if_taken(svc, name, email_lc)
    doc = new_user_doc(name, email, await svc.passwords.hash(password), roles, svc.now())
    try:
        await svc.store.insert_user(doc)
    except DuplicateError:
        # Lost a race with another sign-up: say which field.
        await raise_if_taken(svc, name, email_lc)
        raise ApiError(ErrorCode.CONFLICT, "This account already exists.") from None
    log.info("account created", extra={"user_id": doc["_id"]})
    return doc


async def raise_if_taken(
    svc: AuthService, username: str | None, email_lc: str | None, exclude: str | None = None
) -> None:
    if username is not None:
        other = await svc.store.user_by_username(username)
        if other is not None and other["_id"] != exclude:
            raise ApiError(ErrorCode.USERNAME_TAKEN, "This username is taken.")
    if email_lc is not None:
        other = await svc.store.user_by_email(email_lc)
        if other is not None and other["_id"] != exclude:
            raise ApiError(ErrorCode.EMAIL_TAKEN, "This e-mail address is already registered.")


async def signup(svc: AuthService, body: SignupRequest, caller: Caller) -> TokenResponse:
    await svc.limiter.hit("signup_ip", caller.ip_key)
    user = await create_user(svc, body.username, body.email, body.password, ["user"])
    await lockout.signed_in(svc, user["_id"], caller.ip)
    return await sessions.start(svc, user, ["pwd"], caller, device_id=body.device_id)


async def check_login(
    svc: AuthService, username: str, password: str, caller: Caller
) -> dict[str, Any]:
    """The first factor: the account whose password this is, under the login limits.

    Shared by ``/v1/login`` and the OpenID provider's sign-in page.
    """
    await svc.limiter.hit("login_ip", caller.ip_key)
    ident = username.strip().lower()
    user = await svc.store.user_by_username(ident) if USERNAME_RE.fullmatch(ident) else None
    # Counted before argon2 runs, per (account, address) and account-wide.
    await lockout.verify_password(svc, ident, user, password, caller.ip)
    assert user is not None
    if user["blocked"]:
        # Only someone who knows the password learns this.
        raise ApiError(ErrorCode.ACCOUNT_BLOCKED, "This account is blocked.")
    if svc.passwords.needs_rehash(user["password_hash"]):
        new_hash = await svc.passwords.hash(password)
        await svc.store.update_user(user["_id"], {"password_hash": new_hash})
    if not twofactor.methods(user):
        # Fully signed in (a second factor, when on, marks the address once answered).
        await lockout.signed_in(svc, user["_id"], caller.ip)
    return user


async def login(
    svc: AuthService, body: LoginRequest, caller: Caller
) -> TokenResponse | ChallengeResponse:
    user = await check_login(svc, body.username, body.password, caller)
    # Before a second factor is asked for: it would be answered for nothing.
    await sessions.refuse_removed(svc, user["_id"], body.device_id)
    if twofactor.methods(user):
        return await twofactor.begin_login(svc, user, caller, body.device, body.device_id)
    return await sessions.start(svc, user, ["pwd"], caller, body.device, body.device_id)


async def change_password(
    svc: AuthService, claims: Claims, body: ChangePasswordRequest, caller: Caller
) -> None:
    user = await svc.own_user(claims)
    # A request limit per account before argon2, then the login lockout.
    await lockout.verify_password_again(svc, user, body.current_password, caller.ip, claims.sid)
    check_policy(body.new_password, svc.config, username=user["username"], email=user["email"])
    new_hash = await svc.passwords.hash(body.new_password)
    # Everyone else holding this account's sessions is signed out: before the password
    # is written, so that a failure here (a 503) leaves the old password, and the
    # client's retry of the same request does it all again. The other way round, the
    # retry was refused (the current password had changed) and the revocation never
    # reached the services, or never happened at all.
    await sessions.revoke_all(svc, user["_id"], "password_changed", keep=claims.sid)
    now = svc.now()
    await svc.store.update_user(
        user["_id"], {"password_hash": new_hash, "password_changed_at": now, "updated_at": now}
    )
    await svc.store.drop_password_resets(user["_id"], now)
    # And again after: a sign-in with the old password that went in meanwhile
    # (sessions.open_session). Should this one fail, the retry names the new password
    # as the current one (docs/auth.md).
    await sessions.revoke_all(svc, user["_id"], "password_changed", keep=claims.sid)
    await notify(svc, user, caller, Notice.PASSWORD_CHANGED)


async def request_reset(svc: AuthService, body: PasswordResetRequest, caller: Caller) -> Accepted:
    await svc.limiter.hit("reset_ip", caller.ip_key)
    _, email_lc = canonical_email(body.email)
    await svc.limiter.hit("reset_account", email_lc)
    svc.spawn(_send_reset(svc, email_lc), "password_reset_mail")
    return Accepted(message="If an account uses this address, a reset message is on its way.")


async def _send_reset(svc: AuthService, email_lc: str) -> None:
    user = await svc.store.user_by_email(email_lc)
    if user is None or user["blocked"]:
        return
    token = new_token()
    now = svc.now()
    ttl = svc.config.password_reset_ttl_s
    await svc.store.insert_password_reset(
        {
            "_id": digest(token),
            "user_id": user["_id"],
            # The address it is mailed to: it works only while the account keeps it.
            "email_lc": user["email_lc"],
            "created_at": now,
            "expires_at": now + timedelta(seconds=ttl),
            "used_at": None,
        }
    )
    await svc.mailer.password_reset(
        user["email"], user["username"], token, ttl // 60, two_factor=bool(twofactor.methods(user))
    )


async def confirm_reset(svc: AuthService, body: PasswordResetConfirm, caller: Caller) -> None:
    await svc.limiter.hit("reset_ip", caller.ip_key)
    now = svc.now()
    bad = ApiError(ErrorCode.INVALID_TOKEN, "The reset token is not valid or has expired.")
    token_hash = digest(body.token)
    pending = await svc.store.password_reset(token_hash)
    if pending is None or pending["expires_at"] <= now:
        raise bad
    user = await svc.store.user_by_id(pending["user_id"])
    if (
        user is None
        or user["blocked"]
        # Mailed to an address the account no longer has (an admin changed it since).
        # A reset stored before the address was kept has none: an address change
        # drops every pending reset, so such a one was mailed to the address it has.
        or pending.get("email_lc", user["email_lc"]) != user["email_lc"]
    ):
        raise bad
    check_policy(body.new_password, svc.config, username=user["username"], email=user["email"])
    if pending["used_at"] is None:
        # The slow step first: a failure before the token is used up leaves it as it was.
        new_hash = await svc.passwords.hash(body.new_password)
    else:
        # The retry of a reset that failed part way (below): only of the same request.
        # The token is used up, and any other password it set would be the holder's
        # choice after the owner's (a link left in a mailbox or history, and the
        # owner's own password change since).
        new_hash = str(pending.get("new_hash") or "")
        if not await svc.passwords.verify(new_hash or None, body.new_password):
            raise bad
    # Every session ends before the token is used up, as in change_password: a failure
    # here (a 503) leaves the token for the retry, which was refused before
    # (``invalid_token``) with the sessions a thief held still live.
    await sessions.revoke_all(svc, user["_id"], "password_reset")
    if pending["used_at"] is None:
        # Used up, but ``finishing`` (for RESET_FINISH_S, its new password's hash kept)
        # until the last step below: a failure after this (a 503) leaves the token to
        # the retry of the same request, which does it all again. Before, that retry
        # was refused (``invalid_token``) and the password was changed with the second
        # factors still on, and no notice mailed: an owner who reset because their
        # factor was lost stayed locked out.
        claimed = await svc.store.consume_password_reset(
            token_hash, now, now + timedelta(seconds=RESET_FINISH_S),
            two_factor=bool(twofactor.methods(user)), new_hash=new_hash,
        )  # fmt: skip
        if claimed is None:
            raise bad  # used by a concurrent request
    else:
        claimed = pending  # the retry of a reset that failed part-way
    await svc.store.update_user(
        user["_id"], {"password_hash": new_hash, "password_changed_at": now, "updated_at": now}
    )
    # A reset is the owner's way back in when a second factor is lost, or was
    # added by someone else: it turns every factor off, and says so (docs/auth.md).
    # Whether there was one is kept with the reset: a retry finds them off already.
    two_factor = bool(claimed.get("two_factor")) or bool(twofactor.methods(user))
    if two_factor:
        await twofactor.turn_off_all(svc, user["_id"])
    await svc.store.drop_password_resets(user["_id"], now, keep=token_hash)
    await lockout.forget(svc, user["username"], caller.ip)
    # And a sign-in with the old password that went in meanwhile.
    await sessions.revoke_all(svc, user["_id"], "password_reset")
    extra = ""
    if two_factor:
        extra = (
            "Two-step sign-in was turned off (authenticator app, e-mail codes and recovery "
            "codes): turn it on again in your account settings."
        )
    await notify(svc, user, caller, Notice.PASSWORD_RESET, extra)
    await svc.store.finish_password_reset(token_hash)


async def me(svc: AuthService, claims: Claims) -> MeResponse:
    user = await svc.own_user(claims)
    return MeResponse(
        user_id=user["_id"],
        username=user["username"],
        email=user["email"],
        roles=user["roles"],
        created_at=user["created_at"],
        two_factor=await twofactor.status(svc, user),
    )


def preferences_of(user: dict[str, Any]) -> Preferences:
    """A user's preferences; a preference never set has its default (mention e-mails on,
    presence shown)."""
    # Truthiness, not `is False`: the embedded MongoDB stores a $set boolean as 0/1.
    return Preferences(
        mention_emails=bool(user.get("mention_emails", True)),
        show_presence=bool(user.get("show_presence", True)),
    )


async def preferences(svc: AuthService, claims: Claims) -> Preferences:
    return preferences_of(await svc.own_user(claims))


async def set_preferences(svc: AuthService, claims: Claims, body: PreferencesPatch) -> Preferences:
    """Change the preferences the body names; the others stay as they are. The notifier
    reads ``mention_emails`` from the user document (docs/notifier.md), the rooms
    service ``show_presence`` (docs/rooms.md)."""
    user = await svc.own_user(claims)
    changes = body.model_dump(exclude_none=True)
    if changes:
        user = await svc.store.update_user(user["_id"], changes) or user
    return preferences_of(user)


async def lookup_many(svc: AuthService, user_ids: list[str]) -> UsersFound:
    """:func:`lookup` of many user ids at once, one query (the gateways check a room's
    new recipients this way: docs/gateway.md)."""
    found = {doc["_id"]: doc["username"] for doc in await svc.store.users_by_ids(user_ids)}
    return UsersFound(
        users=[UserPublic(user_id=u, username=found[u]) for u in user_ids if u in found],
        missing=[u for u in user_ids if u not in found],
    )


async def lookup(svc: AuthService, username_or_id: str) -> UserPublic:
    """Public facts about a user, by id or username (other services resolve recipients)."""
    key = username_or_id.strip().lower()
    user = None
    if USER_ID_RE.fullmatch(key):
        user = await svc.store.user_by_id(key)
    elif USERNAME_RE.fullmatch(key):
        user = await svc.store.user_by_username(key)
    if user is None:
        raise ApiError(ErrorCode.USER_NOT_FOUND, "No such user.")
    return UserPublic(user_id=user["_id"], username=user["username"])
