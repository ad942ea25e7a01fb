"""WebSocket protocol v1: the frames a client may send, validated (docs/protocol.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from services.common.errors import ApiError, ErrorCode
from services.common.http import validation_details

PROTOCOL_VERSION = 1

B64Url = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]*$")]
ClientId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]
UserId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuthFrame(_Frame):
    op: Literal["auth"]
    token: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    id: ClientId | None = None


class SendFrame(_Frame):
    op: Literal["send"]
    id: ClientId
    to: UserId
    body: Annotated[B64Url, StringConstraints(min_length=1)]
    commitment: Annotated[B64Url, StringConstraints(max_length=128)] | None = None


class AckFrame(_Frame):
    op: Literal["ack"]
    seq: int = Field(ge=0)
    id: ClientId | None = None


class SyncFrame(_Frame):
    op: Literal["sync"]
    after: int = Field(default=0, ge=0)
    limit: int = Field(default=100, ge=1, le=1000)
    id: ClientId | None = None


class PingFrame(_Frame):
    op: Literal["ping"]
    id: ClientId | None = None


FRAMES: dict[str, type[_Frame]] = {
    "auth": AuthFrame,
    "send": SendFrame,
    "ack": AckFrame,
    "sync": SyncFrame,
    "ping": PingFrame,
}


def parse_frame(data: Any) -> _Frame:
    """Validate a decoded frame; raise ApiError with a stable code."""
    if not isinstance(data, dict):
        raise ApiError(ErrorCode.BAD_REQUEST, "A frame is one JSON object.")
    op = data.get("op")
    model = FRAMES.get(op) if isinstance(op, str) else None
    if model is None:
        raise ApiError(ErrorCode.UNKNOWN_OP, f"Unknown op; expected one of {sorted(FRAMES)}.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(
            ErrorCode.VALIDATION_FAILED, "The frame is not valid.", details=validation_details(exc)
        ) from None


def frame_id(data: Any) -> str | None:
    """The client's ``id`` of a frame, if it has a usable one (for error replies)."""
    if isinstance(data, dict):
        value = data.get("id")
        if isinstance(value, str) and 0 < len(value) <= 64:
            return value
    return None


# WebSocket close codes (4000-4999 are the application's).
CLOSE_AUTH_FAILED = 4001
CLOSE_AUTH_TIMEOUT = 4002
CLOSE_REVOKED = 4003
CLOSE_SLOW_CONSUMER = 4008
CLOSE_FLOOD = 4009
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN = 1013
