"""One error model for HTTP and WebSocket: a stable code and a human message.

Clients branch on ``code``; the message is for people. Internal detail goes
to the logs, never to the client.
"""

from __future__ import annotations

from typing import Any

import msgspec
from parley_contract.errors import ErrorCode
from parley_contract.frames import DeviceList, Error, FieldError, FrameError

__all__ = ["ApiError", "DevicesChanged", "ErrorCode", "http_status"]


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
    ErrorCode.DEVICE_REMOVED: 403,
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
    ErrorCode.DEVICES_CHANGED: 409,
    ErrorCode.DEVICE_REQUIRED: 400,
    ErrorCode.SEQ_NOT_ISSUED: 409,
    ErrorCode.REAUTH_REQUIRED: 401,
    ErrorCode.TOO_MANY_CONNECTIONS: 429,
    ErrorCode.INBOX_FULL: 429,
    ErrorCode.TOO_MANY_PENDING: 429,
    ErrorCode.ROOM_NOT_FOUND: 404,
    ErrorCode.ROOM_CLOSED: 409,
    ErrorCode.ROOM_FULL: 409,
    ErrorCode.NOT_A_MEMBER: 403,
    ErrorCode.ALREADY_MEMBER: 409,
    ErrorCode.INVITATION_NOT_FOUND: 404,
    ErrorCode.CANNOT_TARGET_SELF: 422,
    ErrorCode.CANNOT_REMOVE_OWNER: 403,
    ErrorCode.OWNER_MUST_TRANSFER: 409,
    ErrorCode.BANNED: 403,
    ErrorCode.INVALID_TEXT: 422,
    ErrorCode.MESSAGE_NOT_FOUND: 404,
    ErrorCode.MESSAGE_REMOVED: 409,
    ErrorCode.INVALID_FRANKING_TAG: 422,
    ErrorCode.FRANKING_MISMATCH: 422,
    ErrorCode.NOT_RECIPIENT: 403,
    ErrorCode.REPORT_NOT_FOUND: 404,
    ErrorCode.REPORT_RESOLVED: 409,
    ErrorCode.NOT_SENDER: 403,
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

    def frame(self, answers: str | None = None) -> Error:
        """The WebSocket ``error`` frame for this error."""
        details = None
        if self.details is not None:
            details = [FieldError(field=str(d["field"]), problem=str(d["problem"]))
                       for d in self.details]  # fmt: skip
        return Error(code=self.code.value, message=self.message, id=answers, details=details)

    @classmethod
    def from_frame_error(cls, exc: FrameError) -> ApiError:
        details = None
        if exc.details is not None:
            details = [{"field": d.field, "problem": d.problem} for d in exc.details]
        return cls(exc.code, exc.message, details=details)


class DevicesChanged(ApiError):
    """A send's copies (1:1), or the member devices a room message's sender key was
    given to (``room_send.device_digest``), are not the current devices: nothing was
    produced; ``lists`` are the current ones."""

    def __init__(self, lists: list[DeviceList]) -> None:
        super().__init__(
            ErrorCode.DEVICES_CHANGED,
            "The device lists changed: encrypt for the current devices and send again.",
        )
        self.lists = lists

    def frame(self, answers: str | None = None) -> Error:
        return msgspec.structs.replace(super().frame(answers), devices=self.lists)
