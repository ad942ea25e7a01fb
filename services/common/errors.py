"""One error model for HTTP and WebSocket: a stable code and a human message.

Clients branch on ``code``; the message is for people. Internal detail goes
to the logs, never to the client.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    # Generic request errors.
    BAD_REQUEST = "bad_request"
    INVALID_JSON = "invalid_json"
    VALIDATION_FAILED = "validation_failed"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    CONFLICT = "conflict"
    RATE_LIMITED = "rate_limited"
    INTERNAL = "internal_error"
    UNAVAILABLE = "service_unavailable"
    # Authentication and authorisation.
    UNAUTHENTICATED = "unauthenticated"
    INVALID_TOKEN = "invalid_token"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_REVOKED = "token_revoked"
    FORBIDDEN = "forbidden"
    INVALID_CREDENTIALS = "invalid_credentials"
    ACCOUNT_BLOCKED = "account_blocked"
    ACCOUNT_LOCKED = "account_locked"
    USERNAME_TAKEN = "username_taken"
    EMAIL_TAKEN = "email_taken"
    WEAK_PASSWORD = "weak_password"
    INVALID_USERNAME = "invalid_username"
    INVALID_CODE = "invalid_code"
    CHALLENGE_EXPIRED = "challenge_expired"
    SECOND_FACTOR_REQUIRED = "second_factor_required"
    REFRESH_TOKEN_REUSED = "refresh_token_reused"
    SESSION_NOT_FOUND = "session_not_found"
    USER_NOT_FOUND = "user_not_found"
    # Keys.
    INVALID_SIGNATURE = "invalid_signature"
    INVALID_KEY = "invalid_key"
    BATCH_TOO_LARGE = "batch_too_large"
    DUPLICATE_PREKEY = "duplicate_prekey"
    IDENTITY_NOT_FOUND = "identity_not_found"
    DEVICE_NOT_FOUND = "device_not_found"
    PREKEYS_EXHAUSTED = "prekeys_exhausted"
    TOO_MANY_PREKEYS = "too_many_prekeys"
    TOO_MANY_DEVICES = "too_many_devices"
    # Messaging (WebSocket).
    AUTH_REQUIRED = "auth_required"
    AUTH_TIMEOUT = "auth_timeout"
    UNKNOWN_OP = "unknown_op"
    FRAME_TOO_LARGE = "frame_too_large"
    RECIPIENT_NOT_FOUND = "recipient_not_found"
    SLOW_CONSUMER = "slow_consumer"
    SERVER_SHUTTING_DOWN = "server_shutting_down"


_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.INVALID_JSON: 400,
    ErrorCode.VALIDATION_FAILED: 422,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.CONFLICT: 409,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.INVALID_TOKEN: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.TOKEN_REVOKED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.INVALID_CREDENTIALS: 401,
    ErrorCode.ACCOUNT_BLOCKED: 403,
    ErrorCode.ACCOUNT_LOCKED: 429,
    ErrorCode.USERNAME_TAKEN: 409,
    ErrorCode.EMAIL_TAKEN: 409,
    ErrorCode.WEAK_PASSWORD: 422,
    ErrorCode.INVALID_USERNAME: 422,
    ErrorCode.INVALID_CODE: 401,
    ErrorCode.CHALLENGE_EXPIRED: 401,
    ErrorCode.SECOND_FACTOR_REQUIRED: 401,
    ErrorCode.REFRESH_TOKEN_REUSED: 401,
    ErrorCode.SESSION_NOT_FOUND: 404,
    ErrorCode.USER_NOT_FOUND: 404,
    ErrorCode.INVALID_SIGNATURE: 422,
    ErrorCode.INVALID_KEY: 422,
    ErrorCode.BATCH_TOO_LARGE: 413,
    ErrorCode.DUPLICATE_PREKEY: 409,
    ErrorCode.IDENTITY_NOT_FOUND: 404,
    ErrorCode.DEVICE_NOT_FOUND: 404,
    ErrorCode.PREKEYS_EXHAUSTED: 409,
    ErrorCode.TOO_MANY_PREKEYS: 409,
    ErrorCode.TOO_MANY_DEVICES: 409,
    ErrorCode.RECIPIENT_NOT_FOUND: 404,
}

_MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.INTERNAL: "Something went wrong on our side.",
    ErrorCode.UNAVAILABLE: "The service is temporarily unavailable.",
    ErrorCode.NOT_FOUND: "No such resource.",
    ErrorCode.METHOD_NOT_ALLOWED: "Method not allowed on this resource.",
    ErrorCode.INVALID_JSON: "The body is not valid JSON.",
    ErrorCode.PAYLOAD_TOO_LARGE: "The request is too large.",
    ErrorCode.RATE_LIMITED: "Too many requests; slow down.",
    ErrorCode.UNAUTHENTICATED: "Authentication required.",
    ErrorCode.INVALID_TOKEN: "The access token is not valid.",
    ErrorCode.FORBIDDEN: "You may not do this.",
}


def http_status(code: ErrorCode) -> int:
    return _STATUS.get(code, 400)


class ApiError(Exception):
    """An error the client may see: raised anywhere, rendered by the app's middleware."""

    def __init__(
        self,
        code: ErrorCode,
        message: str | None = None,
        *,
        status: int | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.code = code
        self.message = message or _MESSAGES.get(code) or code.value.replace("_", " ").capitalize()
        self.status = status or http_status(code)
        self.details = details
        self.headers = headers or {}
        super().__init__(f"{code}: {self.message}")

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code.value, "message": self.message}
        if self.details is not None:
            err["details"] = self.details
        if request_id:
            err["request_id"] = request_id
        return {"error": err}

    def frame(self, answers: str | None = None) -> dict[str, Any]:
        """The WebSocket ``error`` frame for this error."""
        frame: dict[str, Any] = {"op": "error", "code": self.code.value, "message": self.message}
        if answers is not None:
            frame["id"] = answers
        if self.details is not None:
            frame["details"] = self.details
        return frame
