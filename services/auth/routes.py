"""HTTP routes of the auth service: thin, they call the feature modules and answer.

The route decorator (services.common.openapi) checks the token and role of
``auth=True`` routes before the body and hands the handler ``claims=``.

Every route is registered on ``api`` (services/auth/api.py; documented in /auth/openapi.json and
/auth/docs); the JWKS is also served at the root, ``/.well-known/jwks.json``,
where the load balancer sends it.
"""

from __future__ import annotations

from aiohttp import web

from services.auth import accounts, admin, sessions, twofactor
from services.auth.api import api
from services.auth.models import (
    MAX_LOOKUP_USERS,
    Accepted,
    AdminSessionList,
    AdminUser,
    AdminUserList,
    AdminUserPatch,
    AuditList,
    BlockRequest,
    ChallengeRef,
    ChangePasswordRequest,
    CodeRequest,
    Jwks,
    LoginRequest,
    LoginResponse,
    MeResponse,
    PasswordRequest,
    PasswordResetConfirm,
    PasswordResetRequest,
    Preferences,
    PreferencesPatch,
    RecoveryCodes,
    RefreshRequest,
    Revoked,
    SecondFactorRequest,
    SessionList,
    SignupRequest,
    TokenResponse,
    TotpSetup,
    TwoFactorStatus,
    UserPublic,
    UsersFound,
    UsersLookup,
)
from services.auth.state import AUTH_SERVICE, AuthService, Caller
from services.common.auth import Claims
from services.common.errors import ErrorCode as E

LIMITED = (E.RATE_LIMITED,)


def svc(request: web.Request) -> AuthService:
    return request.app[AUTH_SERVICE]


def caller(request: web.Request) -> Caller:
    return Caller.of(request, svc(request).config.trust_forwarded_for)


# -- keys ------------------------------------------------------------------------


async def jwks(request: web.Request) -> web.Response:
    body = Jwks.model_validate(await svc(request).keyring.jwks())
    resp = web.json_response(body.model_dump())
    # Short: verifiers also re-fetch on an unknown kid; rotation pre-publishes keys.
    resp.headers["Cache-Control"] = "public, max-age=60"
    return resp


@api.get(
    "/v1/jwks",
    summary="The token signing keys (also at /.well-known/jwks.json)",
    response=Jwks,
    tags=["tokens"],
)
async def jwks_route(request: web.Request) -> web.StreamResponse:
    return await jwks(request)


# -- accounts ----------------------------------------------------------------------


@api.post(
    "/v1/signup",
    summary="Create an account (and sign in)",
    body=SignupRequest,
    response=TokenResponse,
    status=201,
    tags=["accounts"],
    errors=[E.INVALID_USERNAME, E.USERNAME_TAKEN, E.EMAIL_TAKEN, E.WEAK_PASSWORD, *LIMITED],
)
async def signup(request: web.Request, body: SignupRequest) -> TokenResponse:
    return await accounts.signup(svc(request), body, caller(request))


@api.post(
    "/v1/login",
    summary="Log in with username and password",
    body=LoginRequest,
    response=LoginResponse,
    tags=["accounts"],
    errors=[E.INVALID_CREDENTIALS, E.ACCOUNT_BLOCKED, E.ACCOUNT_LOCKED, E.DEVICE_REMOVED, *LIMITED],
)
async def login(request: web.Request, body: LoginRequest) -> LoginResponse:
    return LoginResponse(await accounts.login(svc(request), body, caller(request)))


@api.post(
    "/v1/login/2fa",
    summary="Answer a login challenge with a second factor",
    body=SecondFactorRequest,
    response=TokenResponse,
    tags=["accounts"],
    errors=[
        E.INVALID_CODE,
        E.CHALLENGE_EXPIRED,
        E.ACCOUNT_LOCKED,
        E.BAD_REQUEST,
        E.DEVICE_REMOVED,
        *LIMITED,
    ],
)
async def login_2fa(request: web.Request, body: SecondFactorRequest) -> TokenResponse:
    return await twofactor.complete_login(svc(request), body, caller(request))


@api.post(
    "/v1/login/2fa/email",
    summary="E-mail a code for a login challenge",
    body=ChallengeRef,
    response=Accepted,
    status=202,
    tags=["accounts"],
    errors=[E.CHALLENGE_EXPIRED, E.BAD_REQUEST, E.UNAVAILABLE, *LIMITED],
)
async def login_2fa_email(request: web.Request, body: ChallengeRef) -> Accepted:
    return await twofactor.send_login_code(svc(request), body.challenge_id, caller(request))


@api.post(
    "/v1/token/refresh",
    summary="Rotate a refresh token for new tokens",
    body=RefreshRequest,
    response=TokenResponse,
    tags=["tokens"],
    errors=[E.INVALID_TOKEN, E.REFRESH_TOKEN_REUSED, E.TOKEN_REVOKED, E.ACCOUNT_BLOCKED, *LIMITED],
)
async def refresh(request: web.Request, body: RefreshRequest) -> TokenResponse:
    return await sessions.refresh(svc(request), body.refresh_token, caller(request))


@api.post(
    "/v1/logout",
    summary="End the current session",
    status=204,
    auth=True,
    tags=["sessions"],
    errors=[E.TOKEN_REVOKED],
)
async def logout(request: web.Request, claims: Claims) -> None:
    await sessions.logout(svc(request), claims)


@api.post(
    "/v1/password",
    summary="Change the password (ends the other sessions)",
    body=ChangePasswordRequest,
    status=204,
    auth=True,
    tags=["accounts"],
    errors=[E.INVALID_CREDENTIALS, E.WEAK_PASSWORD, E.ACCOUNT_LOCKED, *LIMITED],
)
async def change_password(
    request: web.Request, claims: Claims, body: ChangePasswordRequest
) -> None:
    await accounts.change_password(svc(request), claims, body, caller(request))


@api.post(
    "/v1/password/reset",
    summary="E-mail a password reset token (always accepted)",
    body=PasswordResetRequest,
    response=Accepted,
    status=202,
    tags=["accounts"],
    errors=[*LIMITED],
)
async def password_reset(request: web.Request, body: PasswordResetRequest) -> Accepted:
    return await accounts.request_reset(svc(request), body, caller(request))


@api.post(
    "/v1/password/reset/confirm",
    summary="Set a new password with a reset token",
    body=PasswordResetConfirm,
    status=204,
    tags=["accounts"],
    errors=[E.INVALID_TOKEN, E.WEAK_PASSWORD, *LIMITED],
)
async def password_reset_confirm(request: web.Request, body: PasswordResetConfirm) -> None:
    await accounts.confirm_reset(svc(request), body, caller(request))


@api.get(
    "/v1/me", summary="The caller's account", response=MeResponse, auth=True, tags=["accounts"]
)
async def me(request: web.Request, claims: Claims) -> MeResponse:
    return await accounts.me(svc(request), claims)


@api.get(
    "/v1/me/preferences",
    summary="The caller's preferences (mention e-mails, presence)",
    response=Preferences,
    auth=True,
    tags=["accounts"],
)
async def get_preferences(request: web.Request, claims: Claims) -> Preferences:
    return await accounts.preferences(svc(request), claims)


@api.patch(
    "/v1/me/preferences",
    summary="Change the caller's preferences; `mention_emails: false` unsubscribes from"
    " mention e-mails, `show_presence: false` hides when you are online",
    body=PreferencesPatch,
    response=Preferences,
    auth=True,
    tags=["accounts"],
)
async def patch_preferences(
    request: web.Request, claims: Claims, body: PreferencesPatch
) -> Preferences:
    return await accounts.set_preferences(svc(request), claims, body)


@api.post(
    "/v1/lookup",
    summary=f"Which of these user ids exist, and their usernames (at most {MAX_LOOKUP_USERS})",
    body=UsersLookup,
    response=UsersFound,
    auth=True,
    tags=["accounts"],
)
async def users_lookup(request: web.Request, claims: Claims, body: UsersLookup) -> UsersFound:
    return await accounts.lookup_many(svc(request), body.user_ids)


@api.get(
    "/v1/users/{user}",
    summary="Public facts about a user, by username or id",
    response=UserPublic,
    auth=True,
    tags=["accounts"],
    errors=[E.USER_NOT_FOUND],
)
async def user_lookup(request: web.Request, claims: Claims) -> UserPublic:
    return await accounts.lookup(svc(request), request.match_info["user"])


# -- sessions ---------------------------------------------------------------------


@api.get(
    "/v1/sessions",
    summary="The caller's live sessions",
    response=SessionList,
    auth=True,
    tags=["sessions"],
)
async def list_sessions(request: web.Request, claims: Claims) -> SessionList:
    return await sessions.list_own(svc(request), claims)


@api.delete(
    "/v1/sessions/{sid}",
    summary="End one of the caller's sessions",
    status=204,
    auth=True,
    tags=["sessions"],
    errors=[E.SESSION_NOT_FOUND],
)
async def revoke_session(request: web.Request, claims: Claims) -> None:
    await sessions.revoke_own(svc(request), claims, request.match_info["sid"][:64])


@api.delete(
    "/v1/sessions",
    summary="End every session of the caller but this one",
    response=Revoked,
    auth=True,
    tags=["sessions"],
)
async def revoke_other_sessions(request: web.Request, claims: Claims) -> Revoked:
    sids = await sessions.revoke_all(svc(request), claims.sub, "revoked_by_user", keep=claims.sid)
    return Revoked(revoked=len(sids))


# -- two-factor ----------------------------------------------------------------------


@api.get(
    "/v1/2fa",
    summary="Which second factors are on",
    response=TwoFactorStatus,
    auth=True,
    tags=["two-factor"],
)
async def twofa_status(request: web.Request, claims: Claims) -> TwoFactorStatus:
    s = svc(request)
    return await twofactor.status(s, await s.own_user(claims))


@api.post(
    "/v1/2fa/totp/setup",
    summary="Start TOTP enrolment (asks for the password): a secret and provisioning URI",
    body=PasswordRequest,
    response=TotpSetup,
    auth=True,
    tags=["two-factor"],
    errors=[E.INVALID_CREDENTIALS, E.ACCOUNT_LOCKED, E.CONFLICT, *LIMITED],
)
async def totp_setup(request: web.Request, claims: Claims, body: PasswordRequest) -> TotpSetup:
    return await twofactor.totp_setup(svc(request), claims, body.password, caller(request))


@api.post(
    "/v1/2fa/totp/confirm",
    summary="Finish TOTP enrolment with a first code",
    body=CodeRequest,
    response=RecoveryCodes,
    auth=True,
    tags=["two-factor"],
    errors=[E.INVALID_CODE, E.CONFLICT, E.CHALLENGE_EXPIRED, E.ACCOUNT_LOCKED],
)
async def totp_confirm(request: web.Request, claims: Claims, body: CodeRequest) -> RecoveryCodes:
    return await twofactor.totp_confirm(svc(request), claims, body.code, caller(request))


@api.post(
    "/v1/2fa/totp/disable",
    summary="Turn TOTP off (asks for the password)",
    body=PasswordRequest,
    status=204,
    auth=True,
    tags=["two-factor"],
    errors=[E.INVALID_CREDENTIALS, E.ACCOUNT_LOCKED, *LIMITED],
)
async def totp_disable(request: web.Request, claims: Claims, body: PasswordRequest) -> None:
    await twofactor.totp_disable(svc(request), claims, body.password, caller(request))


@api.post(
    "/v1/2fa/email/setup",
    summary="Start e-mail codes (asks for the password): a code is mailed",
    body=PasswordRequest,
    response=Accepted,
    status=202,
    auth=True,
    tags=["two-factor"],
    errors=[E.INVALID_CREDENTIALS, E.ACCOUNT_LOCKED, E.CONFLICT, E.UNAVAILABLE, *LIMITED],
)
async def email_setup(request: web.Request, claims: Claims, body: PasswordRequest) -> Accepted:
    return await twofactor.email_setup(svc(request), claims, body.password, caller(request))


@api.post(
    "/v1/2fa/email/confirm",
    summary="Finish e-mail codes with the mailed code",
    body=CodeRequest,
    response=RecoveryCodes,
    auth=True,
    tags=["two-factor"],
    errors=[E.INVALID_CODE, E.CHALLENGE_EXPIRED, E.ACCOUNT_LOCKED, E.CONFLICT],
)
async def email_confirm(request: web.Request, claims: Claims, body: CodeRequest) -> RecoveryCodes:
    return await twofactor.email_confirm(svc(request), claims, body.code, caller(request))


@api.post(
    "/v1/2fa/email/disable",
    summary="Turn e-mail codes off (asks for the password)",
    body=PasswordRequest,
    status=204,
    auth=True,
    tags=["two-factor"],
    errors=[E.INVALID_CREDENTIALS, E.ACCOUNT_LOCKED, *LIMITED],
)
async def email_disable(request: web.Request, claims: Claims, body: PasswordRequest) -> None:
    await twofactor.email_disable(svc(request), claims, body.password, caller(request))


@api.post(
    "/v1/2fa/recovery-codes",
    summary="New recovery codes (the old ones stop working)",
    body=PasswordRequest,
    response=RecoveryCodes,
    auth=True,
    tags=["two-factor"],
    errors=[E.INVALID_CREDENTIALS, E.CONFLICT, E.ACCOUNT_LOCKED, *LIMITED],
)
async def recovery_codes(
    request: web.Request, claims: Claims, body: PasswordRequest
) -> RecoveryCodes:
    s = svc(request)
    return await twofactor.regenerate_recovery_codes(s, claims, body.password, caller(request))


# -- admin ----------------------------------------------------------------------------

_ADMIN = {"auth": True, "role": "admin", "tags": ["admin"]}


@api.get(
    "/v1/admin/users",
    summary="List or search users (by username or e-mail prefix)",
    response=AdminUserList,
    errors=[E.FORBIDDEN],
    query={
        "q": "username or e-mail prefix",
        "cursor": "next_cursor of the previous page",
        "limit": admin.PAGE_SIZE_DOC,
    },
    params=admin.LIST_PARAMS,
    **_ADMIN,
)
async def admin_list(request: web.Request, claims: Claims) -> AdminUserList:
    q = request.query
    return await admin.list_users(
        svc(request),
        claims,
        caller(request),
        q.get("q"),
        q.get("cursor"),
        admin.page_size(q.get("limit")),
    )


@api.get(
    "/v1/admin/users/{user_id}",
    summary="View a user",
    response=AdminUser,
    errors=[E.FORBIDDEN, E.USER_NOT_FOUND],
    **_ADMIN,
)
async def admin_view(request: web.Request, claims: Claims) -> AdminUser:
    return await admin.view_user(
        svc(request), claims, caller(request), request.match_info["user_id"]
    )


@api.patch(
    "/v1/admin/users/{user_id}",
    summary="Edit a user's username, e-mail or roles (a role change ends their sessions; "
    "a new username or address is mailed to the old address)",
    body=AdminUserPatch,
    response=AdminUser,
    errors=[
        E.FORBIDDEN,
        E.USER_NOT_FOUND,
        E.USERNAME_TAKEN,
        E.EMAIL_TAKEN,
        E.INVALID_USERNAME,
        E.CONFLICT,
    ],
    **_ADMIN,
)
async def admin_edit(request: web.Request, claims: Claims, body: AdminUserPatch) -> AdminUser:
    uid = request.match_info["user_id"]
    return await admin.edit_user(svc(request), claims, caller(request), uid, body)


@api.post(
    "/v1/admin/users/{user_id}/block",
    summary="Block a user: every session ends and sockets close at once",
    body=BlockRequest,
    response=AdminUser,
    errors=[E.FORBIDDEN, E.USER_NOT_FOUND, E.CONFLICT],
    **_ADMIN,
)
async def admin_block(request: web.Request, claims: Claims, body: BlockRequest) -> AdminUser:
    uid = request.match_info["user_id"]
    return await admin.block_user(svc(request), claims, caller(request), uid, body)


@api.post(
    "/v1/admin/users/{user_id}/unblock",
    summary="Unblock a user",
    response=AdminUser,
    errors=[E.FORBIDDEN, E.USER_NOT_FOUND],
    **_ADMIN,
)
async def admin_unblock(request: web.Request, claims: Claims) -> AdminUser:
    uid = request.match_info["user_id"]
    return await admin.unblock_user(svc(request), claims, caller(request), uid)


@api.get(
    "/v1/admin/audit",
    summary="The audit log of every service, newest first (filters combine)",
    response=AuditList,
    errors=[E.FORBIDDEN],
    query={
        "target_id": "only entries about this target (a user id, a room id, ...)",
        "actor_id": "only entries by this actor",
        "action": "only actions starting with this (`room.` or `user.block`)",
        "target_type": "only entries about this kind of target (`user`, `room`, `message`)",
        "service": "only entries written by this service (`auth`, `rooms`)",
        "before": "only entries of a millisecond before this (ISO 8601); `next_before` of "
        "the previous page",
        "cursor": "`next_cursor` of the previous page (wins over `before`)",
        "limit": admin.PAGE_SIZE_DOC,
    },
    params=admin.AUDIT_PARAMS,
    **_ADMIN,
)
async def admin_audit(request: web.Request, claims: Claims) -> AuditList:
    q = request.query
    return await admin.audit_log(
        svc(request),
        claims,
        caller(request),
        admin.audit_filters(q),
        admin.page_size(q.get("limit")),
    )


@api.get(
    "/v1/admin/users/{user_id}/sessions",
    summary="A user's live sessions (OpenID clients' included)",
    response=AdminSessionList,
    errors=[E.FORBIDDEN, E.USER_NOT_FOUND],
    **_ADMIN,
)
async def admin_user_sessions(request: web.Request, claims: Claims) -> AdminSessionList:
    uid = request.match_info["user_id"]
    return await admin.user_sessions(svc(request), claims, caller(request), uid)


@api.delete(
    "/v1/admin/users/{user_id}/sessions/{sid}",
    summary="End one session of a user (one ended already: 204, every service told again)",
    status=204,
    errors=[E.FORBIDDEN, E.USER_NOT_FOUND, E.SESSION_NOT_FOUND],
    **_ADMIN,
)
async def admin_revoke_session(request: web.Request, claims: Claims) -> None:
    m = request.match_info
    await admin.revoke_user_session(svc(request), claims, caller(request), m["user_id"], m["sid"])
