"""Request and response bodies of the auth API (pydantic: they validate and document).

Request models are strict (no coercion: ``"5"`` is not an int, ``5`` is not a
string) and forbid unknown fields, so that a typo is an error, not a no-op.
Lengths are bounded here; the username and password *rules* are checked by
the handlers, which answer their own error codes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

Role = Literal["user", "admin"]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SignupRequest(Request):
    username: str = Field(min_length=1, max_length=64, description="3-32 of a-z 0-9 . _ -")
    email: str = Field(min_length=3, max_length=254)
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
    email: str = Field(min_length=3, max_length=254)


class PasswordResetConfirm(Request):
    token: str = Field(min_length=1, max_length=200)
    new_password: str = Field(min_length=1, max_length=1024)


class CodeRequest(Request):
    code: str = Field(min_length=1, max_length=32)


class PasswordRequest(Request):
    password: str = Field(min_length=1, max_length=1024)


class AdminUserPatch(Request):
    username: str | None = Field(default=None, min_length=1, max_length=64)
    email: str | None = Field(default=None, min_length=3, max_length=254)
    roles: list[Role] | None = Field(default=None, min_length=1, max_length=2)


class BlockRequest(Request):
    reason: str | None = Field(default=None, max_length=500)


# -- responses ---------------------------------------------------------------


class UserPublic(BaseModel):
    user_id: str
    username: str


class UserBrief(UserPublic):
    roles: list[str]


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int
    refresh_token: str
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


class SessionInfo(BaseModel):
    session_id: str
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    device: str | None
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
    id: str
    at: datetime
    actor_id: str
    actor: str
    action: str
    target_id: str | None
    details: dict[str, Any]
    request_id: str | None
    ip: str | None


class AuditList(BaseModel):
    entries: list[AuditEntry]
    next_before: datetime | None


class Jwks(BaseModel):
    keys: list[dict[str, Any]]
