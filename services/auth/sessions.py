"""Sessions: one per login, each a family of rotating refresh tokens.

A refresh token works once: using it returns a new access token and a new
refresh token. Presenting one that was already used means that two parties
hold the family (a stolen token, or a client bug), so the whole session is
revoked and both must log in again (RFC 9700 section 4.14.2). Revocation is
written to MongoDB (the truth), to the Redis keys every service checks, and
published on the revocation channel so that gateways close sockets at once.

Nothing is stored per refresh token. The session keeps a random key (sealed,
never sent) and its current generation; the token of generation ``g`` is
``(sid, g, HMAC(key, sid | g))`` (:func:`services.auth.tokens.refresh_token`).
A token whose MAC checks out is of this family: of the current generation, it
is used (the generation moves on atomically); of an earlier one, it was used
before (a reuse, detected for as long as the session exists); of a later one,
it was never issued. A session's refresh state is one document whatever its
number of refreshes (it was one stored token per refresh, kept 30 days).
Tokens issued before (random, hashed in ``refresh_tokens``) are read the old
way until they expire; the first use moves their session to derived tokens.
"""

from __future__ import annotations

import calendar
import contextlib
import hmac
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NoReturn

from services.auth.models import SessionInfo, SessionList, TokenResponse, UserBrief
from services.auth.state import AuthService, Caller
from services.auth.tokens import (
    digest,
    new_id,
    new_refresh_key,
    new_token,
    parse_refresh_token,
    refresh_mac,
    refresh_token,
)
from services.common.auth import Claims
from services.common.errors import ApiError, ErrorCode

log = logging.getLogger(__name__)


async def start(
    svc: AuthService,
    user: Mapping[str, Any],
    amr: Sequence[str],
    caller: Caller,
    device: str | None = None,
    device_id: int | None = None,
) -> TokenResponse:
    """Open a session for a user who has fully authenticated; the first tokens."""
    await refuse_removed(svc, user["_id"], device_id)
    session = await open_session(svc, user, amr, caller, device, device_id=device_id)
    return await _issue(svc, user, session, list(amr), device_id)


def password_stamp(user: Mapping[str, Any]) -> int | None:
    """Which password a sign-in was checked against: when it was set (ms; None: the
    account's first). A session, a second-factor challenge and the provider's sign-in
    keep it, and are refused once the account's stamp differs: a sign-in that began
    with the old password while a reset or change was hashing the new one read the
    old hash, passed, and opened a session after the reset had ended every session
    it found."""
    at = user.get("password_changed_at")
    if at is None:
        return None
    # Whole milliseconds, exactly (MongoDB keeps no more), without float rounding.
    return int(calendar.timegm(at.utctimetuple()) * 1000 + at.microsecond // 1000)


def security_stamp(user: Mapping[str, Any]) -> int:
    """The account's security stamp: raised (``$inc``) whenever its sessions are ended
    together (a password change or reset, a role change, a block, "end my other
    sessions", an admin ending one of its sessions; :func:`revoke_all`). Whatever
    was begun under an older stamp and could still become a session is refused: a
    second-factor challenge, an authorization code, the provider's sign-in cookie, a
    sign-in whose session goes in meanwhile (:func:`open_session`). Absent (an
    account from before it existed) it is 0, as are records that do not carry it."""
    return int(user.get("security_stamp") or 0)


def _changed_meanwhile(
    signed_in: Mapping[str, Any], fresh: Mapping[str, Any] | None
) -> tuple[str, str] | None:
    """Why the account read again (``fresh``) no longer admits a session opened for
    ``signed_in`` (the revocation reason, the message); None if it does."""
    if fresh is None or fresh["blocked"]:
        return "blocked", "This account was blocked meanwhile."
    if password_stamp(fresh) != password_stamp(signed_in):
        return "password_changed", "The password changed meanwhile: sign in with the new one."
    if security_stamp(fresh) != security_stamp(signed_in) or list(fresh["roles"]) != list(
        signed_in["roles"]
    ):
        return "account_changed", "The account's sessions were ended meanwhile: sign in again."
    return None


async def refuse_removed(svc: AuthService, user_id: str, device_id: int | None) -> None:
    """``device_removed`` for a device the key directory removed from the account: a
    session of it would get tokens every service refuses."""
    if device_id and await svc.store.device_revoked(user_id, device_id):
        raise ApiError(
            ErrorCode.DEVICE_REMOVED,
            "This device was removed from the account: link it again as a new device.",
            details={"device_id": device_id},
        )


async def open_session(
    svc: AuthService,
    user: Mapping[str, Any],
    amr: Sequence[str],
    caller: Caller,
    device: str | None = None,
    client_id: str | None = None,
    scope: str | None = None,
    device_id: int | None = None,
) -> dict[str, Any]:
    """Record a new session (a refresh-token family); the session (its refresh token:
    :func:`new_refresh_token`).

    ``client_id`` marks a session opened by an OpenID Connect client: its
    refresh tokens are only good at the provider's token endpoint, for that client.
    """
    now = svc.now()
    sid = new_id()
    expires = now + timedelta(seconds=svc.settings.refresh_token_ttl_s)
    doc: dict[str, Any] = {
        "_id": sid,
        "user_id": user["_id"],
        "created_at": now,
        "last_used_at": now,
        "expires_at": expires,
        "revoked_at": None,
        "amr": list(amr),
        "device": device,
        "device_id": device_id,
        "user_agent": caller.user_agent,
        "ip": caller.ip,
        # The refresh state, whatever the number of refreshes: the key the tokens are
        # derived from (sealed, never sent) and the generation of the live one.
        "refresh_key": _seal_key(svc, sid, new_refresh_key()),
        "refresh_gen": 0,
        "refresh_used_at": None,
    }
    if client_id is not None:
        doc.update(client_id=client_id, scope=scope)
    await svc.store.insert_session(doc)
    # Read again once the session is in: a reset, change, block, role change or
    # "end my other sessions" that wrote before this read is seen here (its password
    # stamp, security stamp, block or roles); one that writes after it ends this
    # session too (its revoke_all comes after its write). ``user`` is the account as
    # the sign-in checked it: a caller that read it again (a code's exchange) compares
    # what the sign-in kept first (oidc.server.CodeGrant.authenticate_user).
    fresh = await svc.store.user_by_id(user["_id"])
    changed = _changed_meanwhile(user, fresh)
    if changed is not None:
        reason, message = changed
        await svc.store.revoke_session(sid, svc.now(), reason, user_id=user["_id"])
        raise ApiError(ErrorCode.INVALID_CREDENTIALS, message)
    await _keep_to_the_cap(svc, str(user["_id"]), sid)
    return doc


async def _keep_to_the_cap(svc: AuthService, user_id: str, sid: str) -> None:
    """At most ``max_sessions`` live sessions an account: past it, the least recently
    used ones end (``session_limit``). Uncapped, a script signing in (or someone with
    the password, from many addresses) grew the account's session list, which every
    listing reads whole, without bound."""
    live = await svc.store.live_sessions(user_id, svc.now())
    over = len(live) - svc.config.max_sessions
    if over <= 0:
        return
    oldest = sorted((d for d in live if d["_id"] != sid), key=lambda d: d["last_used_at"])
    for doc in oldest[:over]:
        await revoke(svc, user_id, str(doc["_id"]), "session_limit")


def _key_context(sid: str) -> str:
    return f"refresh:{sid}"


def _seal_key(svc: AuthService, sid: str, key: bytes) -> dict[str, Any]:
    """A session's refresh key as stored: sealed like TOTP seeds (services.auth.secretbox),
    bound to the session, so that a read of the database alone mints no token."""
    return svc.box.seal(key, _key_context(sid))


def _session_key(svc: AuthService, session: Mapping[str, Any]) -> bytes | None:
    """The session's refresh key; None for a session still on stored tokens."""
    sealed = session.get("refresh_key")
    if not sealed or session.get("refresh_gen") is None:
        return None
    return svc.box.open(sealed, _key_context(str(session["_id"])))


def _stored(svc: AuthService) -> bool:
    return svc.config.refresh_tokens == "stored"


async def new_refresh_token(svc: AuthService, session: Mapping[str, Any]) -> str:
    """The refresh token of the session's current generation (``session``: as
    :func:`open_session` or :func:`rotate` returned it). Nothing is stored: it is
    derived from the session's key. With ``PARLEY_REFRESH_TOKENS=stored`` (a rolling
    upgrade from a version that reads only stored tokens: docs/auth.md) a random
    token, stored hashed, as before."""
    if _stored(svc):
        token, now = new_token(), svc.now()
        await svc.store.insert_refresh_token(
            {
                "_id": digest(token),
                "sid": str(session["_id"]),
                "user_id": session["user_id"],
                "issued_at": now,
                "expires_at": now + timedelta(seconds=svc.settings.refresh_token_ttl_s),
                "used_at": None,
            }
        )
        return token
    key = _session_key(svc, session)
    if key is None:
        raise ValueError("this session has no refresh key")
    return refresh_token(key, str(session["_id"]), int(session["refresh_gen"]))


async def _issue(
    svc: AuthService,
    user: Mapping[str, Any],
    session: Mapping[str, Any],
    amr: list[str],
    device_id: int | None = None,
) -> TokenResponse:
    now = svc.now()
    sid = str(session["_id"])
    refresh = await new_refresh_token(svc, session)
    ttl = svc.settings.refresh_token_ttl_s
    access = await svc.tokens.issue(user["_id"], sid, user["roles"], amr, now, device_id)
    return TokenResponse(
        access_token=access,
        expires_in=svc.settings.access_token_ttl_s,
        refresh_token=refresh,
        refresh_expires_in=ttl,
        session_id=sid,
        user=UserBrief(user_id=user["_id"], username=user["username"], roles=user["roles"]),
    )


async def refresh(svc: AuthService, token: str, caller: Caller) -> TokenResponse:
    user, session = await rotate(svc, token, caller, client_id=None)
    try:
        did = session.get("device_id")
        if did and await svc.store.device_revoked(user["_id"], int(did)):
            raise ApiError(ErrorCode.TOKEN_REVOKED, "This device was removed from the account.")
        return await _issue(
            svc, user, session, list(session.get("amr", [])), int(did) if did else None
        )
    except ApiError:
        raise
    except Exception:
        # MongoDB or Redis failed after the token was used up and before new ones were
        # issued: the client gets a 5xx and retries, and that retry was taken for a
        # stolen token's reuse (the session ended, the user signed out).
        await give_back(svc, token, session)
        raise


async def give_back(svc: AuthService, token: str, session: Mapping[str, Any]) -> None:
    """Undo :func:`rotate`'s use of ``token`` (``session``: what it returned, or at least
    its ``_id`` and ``token_used_at``): the request failed for a reason that is not the
    token's, and its retry must work."""
    if session.get("token_used_at") is not None:
        await _release(svc, token, session.get("_id"), session["token_used_at"])


async def _release(svc: AuthService, token: str, sid: Any, used_at: datetime) -> None:
    """The generation back to the presented token's, if it is still the one this use
    (at ``used_at``) set; a legacy token unused again, and its session back on stored
    tokens, if nothing came after this use."""
    with contextlib.suppress(Exception):  # else the retry is taken for a reuse, as before
        parsed = parse_refresh_token(token)
        if parsed is not None:
            await svc.store.release_refresh_generation(parsed[0], parsed[1], used_at)
            return
        if sid is not None:
            await svc.store.drop_refresh_key(str(sid), used_at)
        await svc.store.release_refresh_token(digest(token), used_at)


async def _reused(svc: AuthService, user_id: str, sid: str) -> NoReturn:
    log.warning(
        "refresh token reused: revoking the session", extra={"sid": sid, "user_id": user_id}
    )
    await revoke(svc, user_id, sid, "refresh_token_reused")
    raise ApiError(
        ErrorCode.REFRESH_TOKEN_REUSED,
        "This refresh token was already used; the session has been ended.",
    )


def _invalid(message: str = "The refresh token is not valid.") -> ApiError:
    return ApiError(ErrorCode.INVALID_TOKEN, message)


async def _family(svc: AuthService, sid: str, generation: int, mac: bytes) -> dict[str, Any] | None:
    """The session a token names if its MAC is the session's, for a generation issued
    (the current one or an earlier one); else None. A forged or unknown token learns
    nothing and changes nothing."""
    session = await svc.store.session(sid)
    if session is None:
        return None
    key = _session_key(svc, session)
    if key is None or not hmac.compare_digest(mac, refresh_mac(key, sid, generation)):
        return None
    if generation > int(session["refresh_gen"]):
        return None  # never issued (a generation given back after a server error)
    return session


async def token_session(
    svc: AuthService, token: str
) -> tuple[str, str, dict[str, Any] | None] | None:
    """(user id, sid, session or None) of any refresh token of a family, used or not;
    None if it is no token of ours (RFC 7009 revocation: services.auth.oidc.server)."""
    parsed = parse_refresh_token(token)
    if parsed is None:
        doc = await svc.store.refresh_token(digest(token))
        if doc is None:
            return None
        return str(doc["user_id"]), str(doc["sid"]), await svc.store.session(doc["sid"])
    session = await _family(svc, *parsed)
    if session is None:
        return None
    return str(session["user_id"]), parsed[0], session


async def rotate(
    svc: AuthService, token: str, caller: Caller, client_id: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Use a refresh token once: (user, session), the session on its next generation
    (:func:`new_refresh_token` gives its token) and slid.

    The caller issues the new tokens. A token used before revokes its whole
    session (``refresh_token_reused``). A token of an OpenID client's session
    works only for that client (``client_id``), and a Parley token only
    without one.
    """
    await svc.limiter.hit("refresh_ip", caller.ip_key)
    now = svc.now()
    parsed = parse_refresh_token(token)
    if parsed is None:
        return await _rotate_legacy(svc, token, now, client_id)
    sid, generation, mac = parsed
    session = await _family(svc, sid, generation, mac)
    if session is None:
        raise _invalid()
    if generation < int(session["refresh_gen"]):
        await _reused(svc, str(session["user_id"]), sid)
    if session["expires_at"] <= now:
        raise _invalid("The refresh token has expired.")
    after = await svc.store.advance_refresh_generation(sid, generation, now)
    if after is None:  # another use of the same token came first
        await _reused(svc, str(session["user_id"]), sid)
    return await _admit(svc, token, after, now, client_id)


async def _rotate_legacy(
    svc: AuthService, token: str, now: datetime, client_id: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A stored refresh token (hashed in ``refresh_tokens``: issued before tokens were
    derived, or with ``PARLEY_REFRESH_TOKENS=stored``), read the old way: used once, a
    reuse revokes the session. Issuing derived tokens, its session goes on with them:
    a key and generation 0 if it has none, else its next generation (so a derived
    token of it issued before this one is a reuse from now on)."""
    token_hash = digest(token)
    doc = await svc.store.consume_refresh_token(token_hash, now)
    if doc is None:
        old = await svc.store.refresh_token(token_hash)
        if old is None:
            raise _invalid()
        await _reused(svc, str(old["user_id"]), str(old["sid"]))
    if doc["expires_at"] <= now:
        raise _invalid("The refresh token has expired.")
    sid = str(doc["sid"])
    try:
        session = await svc.store.session(sid)
        if session is None:
            raise ApiError(ErrorCode.TOKEN_REVOKED, "This session was ended.")
        if _stored(svc):
            adopted: dict[str, Any] | None = session
        elif session.get("refresh_gen") is None:
            adopted = await svc.store.adopt_refresh_key(
                sid, _seal_key(svc, sid, new_refresh_key()), now
            )
        else:
            # On derived tokens already, and a stored one was issued after (a process
            # with PARLEY_REFRESH_TOKENS=stored, during a rolling upgrade): the next
            # generation.
            adopted = await svc.store.advance_refresh_generation(
                sid, int(session["refresh_gen"]), now
            )
        if adopted is None:
            raise _invalid()  # another use of the session came at the same moment
    except ApiError:
        raise
    except Exception:
        await _release(svc, token, sid, now)  # a server error: the retry must not be a reuse
        raise
    return await _admit(svc, token, adopted, now, client_id)


async def _admit(
    svc: AuthService,
    token: str,
    session: dict[str, Any],
    now: datetime,
    client_id: str | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """After ``token`` was used (at ``now``; ``session`` as that use left it): is its
    session still good, for this client and user? Then slide it."""
    try:
        if session["revoked_at"] is not None or session["expires_at"] <= now:
            raise ApiError(ErrorCode.TOKEN_REVOKED, "This session was ended.")
        if session.get("client_id") != client_id:
            # Not this client's token (used up: it was presented where it does not belong).
            raise _invalid()
        user = await svc.store.user_by_id(session["user_id"])
        if user is None:
            raise ApiError(ErrorCode.TOKEN_REVOKED, "This session was ended.")
        if user["blocked"]:
            raise ApiError(ErrorCode.ACCOUNT_BLOCKED, "This account is blocked.")
        expires = now + timedelta(seconds=svc.settings.refresh_token_ttl_s)
        await svc.store.touch_session(session["_id"], now, expires)
    except ApiError:
        raise
    except Exception:
        await _release(svc, token, session["_id"], now)  # a server error: not a reuse
        raise
    # When this use took the token (the caller gives it back if issuing fails).
    return user, {**session, "last_used_at": now, "expires_at": expires, "token_used_at": now}


async def revoke(svc: AuthService, user_id: str, sid: str, reason: str) -> bool:
    """End one session (if live) and tell every service; True if it was live."""
    was = await svc.store.revoke_session(sid, svc.now(), reason, user_id=user_id)
    # Published even if it was already revoked in MongoDB: a retry after a
    # Redis hiccup must still reach the gateways.
    await svc.store.publish_session_revoked(user_id, sid, svc.revocation_ttl_s)
    return was is not None


async def revoke_all(
    svc: AuthService, user_id: str, reason: str, keep: str | None = None
) -> list[str]:
    """End every session of a user (but ``keep``) and tell every service; the sids.

    The account's security stamp goes up first: what was begun before and could
    still open a session (an unexchanged authorization code, the provider's sign-in
    cookie, a second-factor challenge, a sign-in whose session is not in yet) is
    refused from now on (:func:`security_stamp`)."""
    await svc.store.raise_security_stamp(user_id)
    now = svc.now()
    sids = await svc.store.revoke_user_sessions(user_id, now, reason, keep=keep)
    # With those revoked earlier whose tokens may still work: if the publish of a first
    # try failed after its update, a retry found nothing live and told no service.
    since = now - timedelta(seconds=svc.revocation_ttl_s)
    recent = await svc.store.revoked_since(user_id, since, keep)
    await svc.store.publish_sessions_revoked(
        user_id, sorted(set(sids) | set(recent)), svc.revocation_ttl_s
    )
    return sids


async def logout(svc: AuthService, claims: Claims) -> None:
    await revoke(svc, claims.sub, claims.sid, "logout")


async def revoke_own(svc: AuthService, claims: Claims, sid: str) -> None:
    """A user ends one of their sessions; someone else's sid is simply not found. Ending
    one already ended succeeds and tells every service again (a retry after a failed
    publish: else its tokens kept working until they expired)."""
    session = await svc.store.session(sid) if len(sid) <= 64 else None
    if session is None or session.get("user_id") != claims.sub:
        raise ApiError(ErrorCode.SESSION_NOT_FOUND, "No such session.")
    # As an admin's: whatever could open another session at once (the provider's
    # sign-in cookie a thief's browser holds, a code not exchanged yet) ends with it,
    # if it is live (admin.revoke_user_session).
    if session.get("revoked_at") is None:
        await svc.store.raise_security_stamp(claims.sub)
    await revoke(svc, claims.sub, sid, "revoked_by_user")


async def list_own(svc: AuthService, claims: Claims) -> SessionList:
    """The caller's live sessions. A session of a device the key directory removed is
    ended here (its tokens are refused everywhere already; nothing else could end it:
    the device's own token is refused, and the key directory does not call this
    service), so the list shows only sessions that can still be used."""
    now = svc.now()
    docs = await svc.store.live_sessions(claims.sub, now)
    removed = await svc.store.devices_revoked(
        claims.sub, {int(d["device_id"]) for d in docs if d.get("device_id")}
    )
    live = []
    for d in docs:
        if d.get("device_id") and int(d["device_id"]) in removed:
            await svc.store.revoke_session(d["_id"], now, "device_removed", claims.sub)
        else:
            live.append(d)
    return SessionList(
        sessions=[
            SessionInfo(
                session_id=d["_id"],
                created_at=d["created_at"],
                last_used_at=d["last_used_at"],
                expires_at=d["expires_at"],
                device=d.get("device"),
                device_id=int(d["device_id"]) if d.get("device_id") else None,
                user_agent=d.get("user_agent"),
                ip=d.get("ip"),
                current=d["_id"] == claims.sid,
            )
            for d in live
        ]
    )
