"""Request and response bodies of the auth API (pydantic: they validate and document).

Request models are strict (no coercion: ``"5"`` is not an int, ``5`` is not a
string) and forbid unknown fields, so that a typo is an error, not a no-op.
Lengths are bounded here; the username and password *rules* are checked by
the handlers, which answer their own error codes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel
from pydantic.config import JsonDict

from services.common.openapi import EACH_ONCE

Role = Literal["user", "admin"]

# The rules of services/auth/accounts.py, as the documents show them (the handlers
# check them and answer invalid_username / validation_failed): a username is 3-32
# ASCII letters, digits, '.', '_' or '-', starting with a letter, ending with a
# letter or digit, without "..". Reserved names and 32 hex digits are refused too.
USERNAME_SCHEMA: JsonDict = {"pattern": r"^[A-Za-z](\.?[A-Za-z0-9_-])*\.?[A-Za-z0-9]$"}
USERNAME_FIELD: JsonDict = {**USERNAME_SCHEMA, "minLength": 3, "maxLength": 32}
EMAIL_SCHEMA: JsonDict = {
    "pattern": r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$"
}
# services/auth/oidc/clients.py check_redirect_uri: https, http on a loopback host, or a
# native app's private-use scheme; no fragment. (A subset of what it accepts.)
_URI_TAIL = r"(/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?(\?[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?"
REDIRECT_URI_SCHEMA: JsonDict = {
    "pattern": r"^(https://[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(:[0-9]{1,4})?"
    + _URI_TAIL
    + r"|http://(localhost|127\.0\.0\.1|\[::1\])(:[0-9]{1,4})?"
    + _URI_TAIL
    + r"|[a-z][a-z0-9+-]*(\.[a-z0-9+-]+)+:/[A-Za-z0-9._~-]*)$"
}
RedirectUri = Annotated[str, Field(max_length=2000, json_schema_extra=REDIRECT_URI_SCHEMA)]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SignupRequest(Request):
    username: str = Field(
        min_length=1, max_length=64, description="3-32 of a-z 0-9 . _ -",
        json_schema_extra=USERNAME_FIELD,
    )  # fmt: skip
    email: str = Field(min_length=3, max_length=254, json_schema_extra=EMAIL_SCHEMA)
    password: str = Field(min_length=1, max_length=1024)
    device_id: int | None = Field(
        default=None, ge=1, le=2**31 - 1,
        description="This install's device id (docs/devices.md): the session's tokens carry it "
        "as `did`, which messaging needs",
    )  # fmt: skip


class LoginRequest(Request):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)
    device: str | None = Field(default=None, max_length=100, description="A label for the session")
    device_id: int | None = Field(
        default=None, ge=1, le=2**31 - 1,
        description="This install's device id (docs/devices.md): the session's tokens carry it "
        "as `did`, which messaging needs",
    )  # fmt: skip


class SecondFactorRequest(Request):
    challenge_id: str = Field(min_length=1, max_length=100)
    method: Literal["totp", "email", "recovery"]
    code: str = Field(min_length=1, max_length=32)


class ChallengeRef(Request):
    challenge_id: str = Field(min_length=1, max_length=100)


class RefreshRequest(Request):
    refresh_token: str = Field(min_length=1, max_length=200)


class ChangePasswordRequest(Request):
    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=1, max_length=1024)


class PasswordResetRequest(Request):
    email: str = Field(min_length=3, max_length=254, json_schema_extra=EMAIL_SCHEMA)


class PasswordResetConfirm(Request):
    token: str = Field(min_length=1, max_length=200)
    new_password: str = Field(min_length=1, max_length=1024)


class CodeRequest(Request):
    code: str = Field(min_length=1, max_length=32)


class PasswordRequest(Request):
    password: str = Field(min_length=1, max_length=1024)


class AdminUserPatch(Request):
    username: str | None = Field(
        default=None, min_length=1, max_length=64,
        json_schema_extra=USERNAME_FIELD,
    )  # fmt: skip
    email: str | None = Field(
        default=None, min_length=3, max_length=254, json_schema_extra=EMAIL_SCHEMA
    )
    roles: list[Role] | None = Field(default=None, min_length=1, max_length=2)


class PreferencesPatch(Request):
    mention_emails: bool | None = Field(
        default=None,
        description="E-mail a digest of @mentions while no device of yours is connected"
        " (false: unsubscribe)",
    )
    show_presence: bool | None = Field(
        default=None,
        description="Show the members of your rooms when a device of yours is connected"
        " (false: you always look offline)",
    )


class BlockRequest(Request):
    reason: str | None = Field(default=None, max_length=500)


# -- responses ---------------------------------------------------------------


class UserPublic(BaseModel):
    user_id: str
    username: str


MAX_LOOKUP_USERS = 1000
"""User ids one ``POST /auth/v1/lookup`` may name."""


class UsersLookup(Request):
    user_ids: Annotated[list[Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]], EACH_ONCE] = Field(
        min_length=1,
        max_length=MAX_LOOKUP_USERS,
        json_schema_extra={"uniqueItems": True},
        description=f"1 to {MAX_LOOKUP_USERS} user ids (32 lower-case hex digits), each once",
    )


class UsersFound(BaseModel):
    users: list[UserPublic] = Field(description="The users that exist, in the order asked.")
    missing: list[str] = Field(description="The ids asked for that no user has.")


class UserBrief(UserPublic):
    roles: list[str]


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int
    refresh_token: str = Field(
        description="Opaque to clients; single use: presented once to /v1/token/refresh "
        "for the next tokens (a second presentation ends the session)"
    )
    refresh_expires_in: int
    session_id: str
    user: UserBrief


class ChallengeResponse(BaseModel):
    second_factor_required: Literal[True] = True
    challenge_id: str
    methods: list[Literal["totp", "email", "recovery"]]
    expires_in: int
    email_code_sent: bool = False


class LoginResponse(RootModel[TokenResponse | ChallengeResponse]):
    """Tokens, or (with two-factor on) a challenge to answer at /v1/login/2fa."""


class TwoFactorStatus(BaseModel):
    totp: bool
    email: bool
    recovery_codes_left: int


class MeResponse(BaseModel):
    user_id: str
    username: str
    email: str
    roles: list[str]
    created_at: datetime
    two_factor: TwoFactorStatus


class Preferences(BaseModel):
    mention_emails: bool = Field(
        description="A digest of @mentions is e-mailed while no device is connected"
        " (docs/notifier.md)"
    )
    show_presence: bool = Field(
        description="Members of your rooms see you online while a device of yours is"
        ' connected (docs/rooms.md, "Presence")'
    )


class SessionInfo(BaseModel):
    session_id: str
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    device: str | None
    device_id: int | None = None
    user_agent: str | None
    ip: str | None
    current: bool


class SessionList(BaseModel):
    sessions: list[SessionInfo]


class Revoked(BaseModel):
    revoked: int


class TotpSetup(BaseModel):
    secret: str
    provisioning_uri: str
    algorithm: Literal["SHA1"] = "SHA1"
    digits: int = 6
    period: int = 30


class RecoveryCodes(BaseModel):
    recovery_codes: list[str]


class Accepted(BaseModel):
    status: Literal["accepted"] = "accepted"
    message: str


class AdminUser(BaseModel):
    user_id: str
    username: str
    email: str
    roles: list[str]
    blocked: bool
    blocked_reason: str | None
    blocked_at: datetime | None
    created_at: datetime
    updated_at: datetime
    two_factor: TwoFactorStatus
    live_sessions: int


class AdminUserList(BaseModel):
    users: list[AdminUser]
    next_cursor: str | None


class AuditEntry(BaseModel):
    """One entry of the shared audit log (services.common.audit), from any service."""

    id: str
    at: datetime
    actor_id: str
    actor: str = Field(description="The actor's username where known, else the actor id")
    action: str = Field(description="`<target>.<verb>`, e.g. `user.block`, `room.close`")
    target_id: str | None
    details: dict[str, Any] = Field(
        description="What else the action names; `before` and `after` are repeated here"
    )
    request_id: str | None
    ip: str | None
    service: str = Field(default="auth", description="The service that wrote the entry")
    actor_role: str | None = Field(
        default=None, description="`admin`, `owner` or `moderator` of a room, `operator` (CLI)"
    )
    target_type: str | None = Field(default=None, description="`user`, `room`, `message`, ...")
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


class AuditList(BaseModel):
    entries: list[AuditEntry]
    next_before: datetime | None = Field(
        description="Older entries: pass as `before` (kept for old clients; a page followed "
        "by more ends where a millisecond ends, so neither this nor `next_cursor` skips "
        "an entry)"
    )
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; none at the end"
    )


class Jwks(BaseModel):
    keys: list[dict[str, Any]]


# -- OpenID Connect clients (admin API) ----------------------------------------

Scope = Literal["openid", "profile", "email", "roles", "parley.api"]
ClientType = Literal["confidential", "public"]
AuthMethod = Literal["client_secret_basic", "client_secret_post", "none"]
GrantType = Literal["authorization_code", "refresh_token"]
BOTH_GRANTS: tuple[GrantType, ...] = ("authorization_code", "refresh_token")


# services/auth/oidc/clients.py ``_auth_method``: a public client has no secret, a
# confidential one has one.
_AUTH_METHOD_BY_TYPE: JsonDict = {
    "allOf": [
        {
            "if": {"properties": {"type": {"const": "public"}}},
            "then": {"properties": {"token_endpoint_auth_method": {"enum": ["none", None]}}},
        },
        {
            "if": {"properties": {"type": {"const": "confidential"}}},
            "then": {
                "properties": {
                    "token_endpoint_auth_method": {
                        "enum": ["client_secret_basic", "client_secret_post", None]
                    }
                }
            },
        },
    ]
}


class ClientCreate(Request):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_AUTH_METHOD_BY_TYPE)

    name: str = Field(min_length=1, max_length=100)
    type: ClientType
    redirect_uris: list[RedirectUri] = Field(
        min_length=1, max_length=10, description="Exact match",
        json_schema_extra={"uniqueItems": True},
    )  # fmt: skip
    post_logout_redirect_uris: list[RedirectUri] = Field(
        default_factory=list, max_length=10, json_schema_extra={"uniqueItems": True}
    )
    scopes: list[Scope] = Field(min_length=1, max_length=5, description="What it may ask for")
    token_endpoint_auth_method: AuthMethod | None = Field(
        default=None,
        description="client_secret_basic (default) or client_secret_post for confidential "
        "clients; none for public ones",
    )
    grant_types: list[GrantType] = Field(
        default_factory=lambda: list(BOTH_GRANTS),
        min_length=1,
        max_length=2,
    )
    skip_consent: bool = Field(
        default=False, description="First-party: the user is not asked to consent"
    )


class ClientPatch(Request):
    name: str | None = Field(default=None, min_length=1, max_length=100)
    redirect_uris: list[RedirectUri] | None = Field(
        default=None, min_length=1, max_length=10, json_schema_extra={"uniqueItems": True}
    )
    post_logout_redirect_uris: list[RedirectUri] | None = Field(
        default=None, max_length=10, json_schema_extra={"uniqueItems": True}
    )
    scopes: list[Scope] | None = Field(default=None, min_length=1, max_length=5)
    grant_types: list[GrantType] | None = Field(default=None, min_length=1, max_length=2)
    skip_consent: bool | None = None
    disabled: bool | None = None


class OAuthClient(BaseModel):
    client_id: str
    name: str
    type: ClientType
    redirect_uris: list[str]
    post_logout_redirect_uris: list[str]
    scopes: list[str]
    token_endpoint_auth_method: AuthMethod
    grant_types: list[str]
    skip_consent: bool
    disabled: bool
    built_in: bool
    created_at: datetime
    updated_at: datetime
    client_secret: str | None = Field(
        default=None, description="Only when created or rotated: shown once, stored hashed"
    )


class OAuthClientList(BaseModel):
    clients: list[OAuthClient]


class AdminSession(BaseModel):
    session_id: str
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    device: str | None
    user_agent: str | None
    ip: str | None
    client_id: str | None


class AdminSessionList(BaseModel):
    sessions: list[AdminSession]


class OidcDiscovery(BaseModel):
    """OpenID Provider Metadata (OpenID Connect Discovery 1.0, section 3)."""

    model_config = ConfigDict(extra="allow")
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    userinfo_endpoint: str
    jwks_uri: str
    response_types_supported: list[str]
    subject_types_supported: list[str]
    id_token_signing_alg_values_supported: list[str]


class TokenSet(BaseModel):
    """The token endpoint's answer (RFC 6749 section 5.1; OpenID Connect Core 3.1.3.3)."""

    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int
    scope: str
    refresh_token: str | None = None
    id_token: str | None = None


class OAuthErrorBody(BaseModel):
    """An OAuth 2.0 error (RFC 6749 section 5.2): ``error`` is the stable code."""

    error: str
    error_description: str | None = None


class UserInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    sub: str
