"""The admin users API: list and search, view, edit, block, unblock; the audit log.

Only callers whose access token carries the ``admin`` role get here (the
route decorator checks ``role="admin"``). Every admin action, reads included,
is written to the shared audit log (services.common.audit) with who, what, when, from where; a
role change or a block ends the target's sessions so that no token keeps the
old rights.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime
from typing import Any

from services.auth import sessions, twofactor
from services.auth.accounts import canonical_email, canonical_username, raise_if_taken
from services.auth.models import (
    AdminSession,
    AdminSessionList,
    AdminUser,
    AdminUserList,
    AdminUserPatch,
    AuditEntry,
    AuditList,
    BlockRequest,
)
from services.auth.notices import Notice, notify
from services.auth.state import AuthService, Caller
from services.auth.store import DuplicateError
from services.common.audit import (
    ACTION_RE,
    CURSOR_RE,
    Actor,
    Entry,
    Filters,
    entry_ms,
    ms_before,
    ms_time,
    page_by_millisecond,
)
from services.common.auth import MAX_USER_ID, Claims
from services.common.errors import ApiError, ErrorCode
from services.common.http import int_schema, parse_int

log = logging.getLogger(__name__)

MAX_PAGE = 100
DEFAULT_PAGE = 50
# What the list and audit routes say of their ``limit`` (OpenAPI).
PAGE_SIZE_DOC = f"page size, 1-{MAX_PAGE} ({DEFAULT_PAGE})"
MAX_QUERY = 100
MAX_CURSOR = 64
# The admin routes' query parameters, as documented and as checked (422 validation_failed).
LIST_PARAMS: dict[str, dict[str, Any]] = {
    "q": {"type": "string", "maxLength": MAX_QUERY},
    "cursor": {"type": "string", "maxLength": MAX_CURSOR},
    "limit": int_schema(1, MAX_PAGE),
}
AUDIT_PARAMS: dict[str, dict[str, Any]] = {
    "target_id": {"type": "string", "maxLength": MAX_USER_ID},
    "actor_id": {"type": "string", "maxLength": MAX_USER_ID},
    "action": {"type": "string", "maxLength": 64, "pattern": "^" + ACTION_RE.pattern + "$"},
    "target_type": {"type": "string", "maxLength": 32},
    "service": {"type": "string", "maxLength": 32},
    "before": {"type": "string", "format": "date-time"},
    "cursor": {"type": "string", "pattern": "^" + CURSOR_RE.pattern + "$"},
    "limit": int_schema(1, MAX_PAGE),
}


async def audit(
    svc: AuthService,
    actor: Claims | Actor | str,
    action: str,
    caller: Caller | None,
    target_id: str | None = None,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    **details: Any,
) -> None:
    """One entry in the shared audit log (services.common.audit): an admin (``Claims``,
    or an ``Actor`` recorded earlier) or a tool (``"cli"``, as an operator) did
    ``action`` to ``target_id``."""
    if isinstance(actor, Claims):
        user = await svc.store.user_by_id(actor.sub)
        who = Actor(actor.sub, "admin", user["username"] if user else None)
    elif isinstance(actor, Actor):
        who = actor
    else:
        who = Actor(actor, "operator")
    if before is not None:
        details.update(before=before, after=after)
    if target_id is None and isinstance(details.get("client_id"), str):
        target_id = details["client_id"]
    target_type = action.split(".", 1)[0] if target_id else None
    await svc.audit.record(
        Entry(
            actor=who, action=action, target_type=target_type,
            target_id=target_id, details=details, before=before, after=after,
            ip=caller.ip if caller else None, request_id=caller.request_id if caller else None,
        ),
        now_ms=int(svc.now().timestamp() * 1000),
    )  # fmt: skip


async def _view(svc: AuthService, user: Mapping[str, Any]) -> AdminUser:
    live = await svc.store.live_sessions(user["_id"], svc.now())
    return AdminUser(
        user_id=user["_id"],
        username=user["username"],
        email=user["email"],
        roles=user["roles"],
        blocked=user["blocked"],
        blocked_reason=user.get("blocked_reason"),
        blocked_at=user.get("blocked_at"),
        created_at=user["created_at"],
        updated_at=user["updated_at"],
        two_factor=await twofactor.status(svc, user),
        live_sessions=len(live),
    )


async def _target(svc: AuthService, user_id: str) -> dict[str, Any]:
    user = await svc.store.user_by_id(user_id)
    if user is None:
        raise ApiError(ErrorCode.USER_NOT_FOUND, "No such user.")
    return user


def page_size(raw: str | None, default: int = DEFAULT_PAGE) -> int:
    return default if raw is None else parse_int(raw, "limit", 1, MAX_PAGE)


async def list_users(
    svc: AuthService,
    claims: Claims,
    caller: Caller,
    query: str | None,
    cursor: str | None,
    limit: int,
) -> AdminUserList:
    if query is not None and len(query) > MAX_QUERY:
        raise ApiError(ErrorCode.VALIDATION_FAILED, "The search is too long (100 at most).")
    if cursor is not None and len(cursor) > MAX_CURSOR:
        raise ApiError(ErrorCode.VALIDATION_FAILED, "Not a cursor from this API.")
    docs = await svc.store.list_users(query or None, cursor or None, limit + 1)
    more = len(docs) > limit
    docs = docs[:limit]
    await audit(svc, claims, "user.list", caller, query=query, cursor=cursor)
    return AdminUserList(
        users=[await _view(svc, d) for d in docs],
        next_cursor=docs[-1]["username"] if more and docs else None,
    )


async def view_user(svc: AuthService, claims: Claims, caller: Caller, user_id: str) -> AdminUser:
    user = await _target(svc, user_id)
    await audit(svc, claims, "user.view", caller, user_id)
    return await _view(svc, user)


async def edit_user(
    svc: AuthService, claims: Claims, caller: Caller, user_id: str, body: AdminUserPatch
) -> AdminUser:
    """Change a user's username, e-mail address or roles.

    A role change ends the user's sessions twice: before the roles are written and
    after. Before: if ending them fails (a 503), nothing has changed and the retry
    does it all again; before this, the roles were written first, the retry found
    them equal and answered 200, and the old tokens kept their admin rights until
    they expired. After: a sign-in that went in between (with the old roles) ends
    too (``sessions.open_session``). A PATCH that changes nothing is audited like
    any other call; a username or address change is mailed to the old address
    (notices.py).

    What follows the write (the audit entry, the notice, the second ending) is
    recorded with it (``pending_admin_edit``, with who made it, from where and when):
    should it fail (a 503), the next PATCH of this user, the retry included, finishes
    it first (:func:`_finish_edit`), audited as the admin who made it. Before, the retry
    found nothing to change and was audited as a change of nothing, the old address
    was never told, and the sessions were not ended again.

    One edit pending at a time: the write goes in only if none is pending and the
    changed fields are still as read. Else the pending one is finished (unless its own
    request is finishing it: 409) and the change read and tried once more (409 if that
    too lost the race). Before, a second admin's write replaced the first's record,
    whose end then removed the second's: that edit was never audited nor mailed."""
    for _ in range(2):
        user = await _target(svc, user_id)
        finished = False
        if user.get(PENDING_EDIT):
            by = (user[PENDING_EDIT].get("by") or {}).get("id")
            user = await _finish_left_over(svc, caller, user)
            finished = by in (None, claims.sub)  # its own retry: the entry is this call's
        changes: dict[str, Any] = {}
        if body.username is not None:
            name = canonical_username(body.username)
            if name != user["username"]:
                await raise_if_taken(svc, name, None, exclude=user_id)
                changes["username"] = name
        if body.email is not None:
            email, email_lc = canonical_email(body.email)
            if email != user["email"]:
                await raise_if_taken(svc, None, email_lc, exclude=user_id)
                changes.update(email=email, email_lc=email_lc)
        roles_changed = False
        if body.roles is not None:
            roles = sorted({"user", *body.roles}, key=["user", "admin"].index)
            if roles != user["roles"]:
                if user_id == claims.sub and "admin" not in roles:
                    raise ApiError(ErrorCode.CONFLICT, "You cannot remove your own admin role.")
                changes["roles"] = roles
                roles_changed = True
        if not changes:
            if not finished:
                await audit(svc, claims, "user.update", caller, user_id, before={}, after={})
            return await _view(svc, user)
        if roles_changed:
            # Tokens carry roles: end the sessions so that new tokens carry the new ones.
            await sessions.revoke_all(svc, user_id, "roles_changed")
        now = svc.now()
        now_ms = int(now.timestamp() * 1000)
        edit_id, lease = secrets.token_urlsafe(12), now_ms + FINISH_LEASE_MS
        pending = {
            "id": edit_id,
            "by": {"id": claims.sub, "role": "admin"},
            "ip": caller.ip,
            "request_id": caller.request_id,
            "at_ms": now_ms,
            "lease_until_ms": lease,  # this request finishes it
            "before": {k: user.get(k) for k in changes if k != "email_lc"},
            "after": {k: v for k, v in changes.items() if k != "email_lc"},
            "was": {k: user.get(k) for k in changes},  # the account as the old address knew it
            "roles_changed": roles_changed,
        }
        expect = {k: user.get(k) for k in changes}
        try:
            updated = await svc.store.write_admin_edit(
                user_id, {**changes, "updated_at": now, PENDING_EDIT: pending}, expect
            )
        except DuplicateError:
            raise ApiError(ErrorCode.CONFLICT, "This username or e-mail is taken.") from None
        if updated is not None:
            try:
                done = await _finish_edit(svc, updated)
            except BaseException:
                # Left for the next PATCH (the retry) to take at once, not after the lease.
                with contextlib.suppress(Exception):
                    await svc.store.release_admin_edit(user_id, edit_id, lease)
                raise
            return await _view(svc, done)
        # Another admin's change went in since the read (or is pending): read again.
    raise ApiError(ErrorCode.CONFLICT, BUSY)


# On the user document: an admin's edit written whose other steps are not all done.
PENDING_EDIT = "pending_admin_edit"
# How long the request that wrote an edit has to finish it before another may.
FINISH_LEASE_MS = 30_000
# A left-over edit older than this is only audited and mailed: ending sessions,
# dropping resets and raising the stamp then would end what the user began since
# (a reset, a sign-in after the change), and what it guarded against has expired.
STALE_AFTER_MS = 10 * 60_000
BUSY = "Another administrator's change to this user is being finished: try again."


async def _finish_left_over(
    svc: AuthService, caller: Caller, user: dict[str, Any]
) -> dict[str, Any]:
    """Finish the edit pending on ``user`` (written by an earlier request); the user after.
    409 if the request that wrote it is still finishing it."""
    edit_id = str(user[PENDING_EDIT].get("id") or "")
    if not edit_id:  # not a record this code wrote (no id): nothing can finish it
        log.warning("admin edit record without an id dropped", extra={"user_id": user["_id"]})
        await svc.store.drop_admin_edit_without_id(user["_id"])
        return await _target(svc, user["_id"])
    now_ms = int(svc.now().timestamp() * 1000)
    lease = now_ms + FINISH_LEASE_MS
    claimed = await svc.store.claim_admin_edit(user["_id"], edit_id, now_ms, lease)
    if claimed is not None:
        try:
            return await _finish_edit(svc, claimed)
        except BaseException:
            with contextlib.suppress(Exception):
                await svc.store.release_admin_edit(user["_id"], edit_id, lease)
            raise
    again = await _target(svc, user["_id"])
    left = again.get(PENDING_EDIT)
    if left and left.get("id") == edit_id:
        raise ApiError(ErrorCode.CONFLICT, BUSY)
    return again  # finished meanwhile (or another since: the conditional write sees it)


async def _finish_edit(svc: AuthService, updated: dict[str, Any]) -> dict[str, Any]:
    """Do what follows an admin's edit (``updated[PENDING_EDIT]``, written with it), as
    the admin who made it, each step safe to do twice, then drop the record if it is
    still this one; the user after. A record older than ``STALE_AFTER_MS`` is only
    audited and mailed."""
    user_id = updated["_id"]
    pending = updated[PENDING_EDIT]
    by = pending.get("by") or {}
    at_ms = pending.get("at_ms")
    now_ms = int(svc.now().timestamp() * 1000)
    fresh = at_ms is not None and now_ms - at_ms <= STALE_AFTER_MS
    # What was mailed to the old address lives as long as its codes may (up to an hour,
    # past STALE_AFTER_MS: review), however old the record.
    mailed_ms = 1000 * max(svc.config.challenge_ttl_s, svc.config.email_code_ttl_s)
    codes_live = at_ms is None or now_ms - at_ms <= max(STALE_AFTER_MS, mailed_ms)
    if codes_live and "email_lc" in pending["was"]:
        # What was mailed to the old address no longer opens anything: a pending
        # reset link (confirm_reset also checks the address a reset was sent to, for
        # one mailed while this change was written) and a pending e-mail-code
        # enrolment.
        await svc.store.drop_password_resets(user_id, svc.now())
        await svc.store.eph_delete(twofactor.EMAIL_SETUP, user_id)
        # And a sign-in's e-mailed code (its challenge carries the security stamp).
        await svc.store.raise_security_stamp(user_id)
    admin = await svc.store.user_by_id(by["id"]) if by.get("id") else None
    actor = Actor(
        by.get("id") or "unknown", by.get("role") or "admin", admin["username"] if admin else None
    )
    made = Caller(ip=pending.get("ip") or "unknown", request_id=pending.get("request_id"))
    when = {} if at_ms is None else {"edited_at": ms_time(at_ms).isoformat()}
    await audit(
        svc, actor, "user.update", made, user_id,
        before=pending["before"], after=pending["after"], **when,
    )  # fmt: skip
    await _notify_sign_in_change(svc, {**updated, **pending["was"]}, updated, made)
    if fresh and pending["roles_changed"]:
        # A sign-in that went in while the roles were written (its token has the old ones).
        await sessions.revoke_all(svc, user_id, "roles_changed")
    done = await svc.store.end_admin_edit(user_id, str(pending.get("id") or ""))
    return done if done is not None else await _target(svc, user_id)


async def _notify_sign_in_change(
    svc: AuthService, user: Mapping[str, Any], updated: Mapping[str, Any], caller: Caller
) -> None:
    """Mail the owner, at the address the account had, that an admin changed its
    username or address (notices.py: every change to how the account signs in). The
    new address is not named: the old mailbox may be why it was changed."""
    said = []
    if updated["username"] != user["username"]:
        said.append(f"Its username is now {updated['username']}: sign in with it.")
    if updated.get("email_lc") != user.get("email_lc"):
        said.append(
            "Its e-mail address was changed: password resets, sign-in codes and these "
            "notices now go to the new address, not to this one."
        )
    if said:
        await notify(svc, user, caller, Notice.CHANGED_BY_ADMIN, " ".join(said), by_admin=True)


async def block_user(
    svc: AuthService, claims: Claims, caller: Caller, user_id: str, body: BlockRequest
) -> AdminUser:
    if user_id == claims.sub:
        raise ApiError(ErrorCode.CONFLICT, "You cannot block yourself.")
    await _target(svc, user_id)
    now = svc.now()
    updated = await svc.store.update_user(
        user_id,
        {"blocked": True, "blocked_at": now, "blocked_reason": body.reason, "updated_at": now},
        raise_stamp=True,  # what was begun before opens no session (sessions.security_stamp)
    )
    if updated is None:
        raise ApiError(ErrorCode.USER_NOT_FOUND, "No such user.")
    sids = await svc.store.revoke_user_sessions(user_id, now, "blocked")
    await svc.store.publish_user_blocked(user_id, sids, svc.revocation_ttl_s)
    await audit(
        svc, claims, "user.block", caller, user_id, reason=body.reason, sessions_revoked=len(sids)
    )
    log.info("user blocked", extra={"user_id": user_id, "by": claims.sub})
    return await _view(svc, updated)


async def unblock_user(svc: AuthService, claims: Claims, caller: Caller, user_id: str) -> AdminUser:
    await _target(svc, user_id)
    now = svc.now()
    updated = await svc.store.update_user(
        user_id,
        {"blocked": False, "blocked_at": None, "blocked_reason": None, "updated_at": now},
    )
    if updated is None:
        raise ApiError(ErrorCode.USER_NOT_FOUND, "No such user.")
    await svc.store.clear_user_blocked(user_id)
    await audit(svc, claims, "user.unblock", caller, user_id)
    return await _view(svc, updated)


def parse_before(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ApiError(
            ErrorCode.VALIDATION_FAILED,
            "before is an ISO 8601 timestamp.",
            details=[{"field": "before", "problem": "not an ISO 8601 timestamp"}],
        ) from None
    if value.tzinfo is None:
        raise ApiError(ErrorCode.VALIDATION_FAILED, "before needs a time zone.")
    return value


async def audit_log(
    svc: AuthService,
    claims: Claims,
    caller: Caller,
    filters: Filters,
    limit: int,
) -> AuditList:
    """A page of the shared audit log, newest first (every service's entries). A page
    followed by more ends where a millisecond ends (audit.page_by_millisecond), so that
    both ``next_cursor`` and ``next_before`` go on without skipping an entry."""
    docs, more = await page_by_millisecond(svc.audit, filters, limit)
    # What was read is in details: the entry is about the log, not about a target.
    await audit(
        svc, claims, "audit.read", caller, None,
        filters={k: v for k, v in asdict(filters).items() if v is not None},
    )  # fmt: skip
    return AuditList(
        entries=[
            AuditEntry(
                id=d["_id"],
                at=d["at"],
                actor_id=d["actor_id"],
                actor=d.get("actor") or d["actor_id"],
                action=d["action"],
                target_id=d.get("target_id"),
                details=d.get("details") or {},
                request_id=d.get("request_id"),
                ip=d.get("ip"),
                service=d.get("service") or "auth",
                actor_role=d.get("actor_role"),
                target_type=d.get("target_type"),
                before=d.get("before"),
                after=d.get("after"),
            )
            for d in docs
        ],
        next_before=ms_time(entry_ms(docs[-1])) if more and docs else None,
        next_cursor=str(docs[-1]["_id"]) if more and docs else None,
    )


def audit_filters(query: Mapping[str, str]) -> Filters:
    """The audit route's filters, checked (422 ``validation_failed`` naming the field)."""

    def bad(name: str, problem: str) -> ApiError:
        return ApiError(
            ErrorCode.VALIDATION_FAILED, f"{name}: {problem}.",
            details=[{"field": name, "problem": problem}],
        )  # fmt: skip

    for name in ("target_id", "actor_id", "target_type", "service", "action"):
        value = query.get(name)
        if value is not None and len(value) > AUDIT_PARAMS[name]["maxLength"]:
            raise bad(name, "too long")
    action = query.get("action")
    if action is not None and not ACTION_RE.fullmatch(action):
        raise bad("action", "not an action or a prefix of one (`room.`)")
    cursor = query.get("cursor")
    if cursor is not None and not CURSOR_RE.fullmatch(cursor):
        raise bad("cursor", "not a cursor from this API")
    before = parse_before(query.get("before"))
    return Filters(
        actor_id=query.get("actor_id") or None,
        action_prefix=action or None,
        target_type=query.get("target_type") or None,
        target_id=query.get("target_id") or None,
        service=query.get("service") or None,
        before_ms=None if before is None else ms_before(before),
        cursor=cursor,
    )


async def user_sessions(
    svc: AuthService, claims: Claims, caller: Caller, user_id: str
) -> AdminSessionList:
    await _target(svc, user_id)
    docs = await svc.store.live_sessions(user_id, svc.now())
    await audit(svc, claims, "user.sessions", caller, user_id)
    return AdminSessionList(
        sessions=[
            AdminSession(
                session_id=d["_id"],
                created_at=d["created_at"],
                last_used_at=d["last_used_at"],
                expires_at=d["expires_at"],
                device=d.get("device"),
                user_agent=d.get("user_agent"),
                ip=d.get("ip"),
                client_id=d.get("client_id"),
            )
            for d in docs
        ]
    )


async def revoke_user_session(
    svc: AuthService, claims: Claims, caller: Caller, user_id: str, sid: str
) -> None:
    """End one session of a user. Ending one already ended answers 204 again (until it is
    reclaimed, an access token's life and a minute after it ended: then 404) and tells
    every service again, as the user's own ``DELETE /v1/sessions/{sid}`` does: a first
    try that wrote the revocation and then failed to publish it (a 503) left its access
    tokens working, and its retry, finding the session ended, answered 404 and told no
    service."""
    await _target(svc, user_id)
    session = await svc.store.session(sid) if len(sid) <= 64 else None
    if session is None or session.get("user_id") != user_id:
        raise ApiError(ErrorCode.SESSION_NOT_FOUND, "No such session of this user.")
    # The provider's sign-in cookie, unexchanged codes and sign-ins in flight of this
    # user end with it: else whoever held the session could open another at once
    # (sessions.security_stamp). Only when it is live: ending one already ended (the
    # retry of a first try whose publish failed, which raised the stamp) signed the
    # user out of the provider and threw away their sign-ins in flight for nothing.
    if session.get("revoked_at") is None:
        await svc.store.raise_security_stamp(user_id)
    # Published whether it was live or not (sessions.revoke).
    was_live = await sessions.revoke(svc, user_id, sid, "revoked_by_admin")
    await audit(
        svc, claims, "user.revoke_session", caller, user_id, session_id=sid, was_live=was_live
    )
