"""Request and response bodies of the delivery service's HTTP API (they also document it)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.common.http import ACK_TOKEN_MAX, ACKS_PER_CALL


class InboxItem(BaseModel):
    op: str = Field(description="`message` or `key_changed`")
    seq: int
    server_id: str
    kind: str
    conversation: str | None = None
    body: str | None = Field(default=None, description="Ciphertext, base64url")
    commitment: str | None = None
    sent_at: int | None = None
    user_id: str | None = None
    device_id: int | None = None
    identity: dict[str, str] | None = None
    from_: str | None = Field(default=None, alias="from")


class InboxPage(BaseModel):
    messages: list[InboxItem]
    more: bool


class RoomLogMessage(BaseModel):
    """The ``room_message`` frame (docs/protocol.md, "Rooms")."""

    op: Literal["room_message"] = "room_message"
    room: str
    seq: int = Field(description="Its number in the room's log (1, 2, 3, ...)")
    server_id: str
    from_: str = Field(alias="from")
    from_device: int
    body: str = Field(description="Sender-key ciphertext, base64url")
    sent_at: int
    commitment: str | None = None
    mentions: list[str] | None = None
    franking_tag: str | None = Field(
        default=None, description="The reporting tag of the message as delivered to the room"
    )


class RoomLogPage(BaseModel):
    room: str
    messages: list[RoomLogMessage] = Field(description="Oldest first; removed messages left out")
    next: int = Field(description="Pass as `after` for the next page (the last number looked at)")
    more: bool


ROOM_LOGS_MAX = 100


class RoomLogAsk(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    room: str = Field(pattern="^[0-9a-f]{24}$", description="A private room's id")
    after: int = Field(
        default=0, ge=0, le=2**63 - 1, description="Return messages with a larger number"
    )


class RoomLogsIn(BaseModel):
    """Strict, like every request body."""

    model_config = ConfigDict(extra="forbid", strict=True)

    rooms: list[RoomLogAsk] = Field(
        min_length=1, max_length=ROOM_LOGS_MAX,
        description=f"1 to {ROOM_LOGS_MAX} rooms, each with the number to read after (a room "
        "asked for twice is answered twice)",
    )  # fmt: skip
    since: int = Field(
        default=0, ge=0, le=2**63 - 1,
        description="Only messages stored at or after this time (Unix ms): a device linked "
        "later reads from its link",
    )  # fmt: skip
    limit: int = Field(
        default=50, ge=1, le=1000,
        description="Messages per room at most (capped by the server's page size)",
    )  # fmt: skip


class RoomLogs(BaseModel):
    pages: list[RoomLogPage] = Field(
        description="A page of each room you may read, in the order asked; `more`: read on "
        "with `GET /delivery/v1/rooms/{room_id}/log`"
    )
    refused: list[str] = Field(
        description="The rooms asked for that you cannot read: no such room, not a member "
        "(invited only, left, removed), or a public room"
    )


class AckIn(BaseModel):
    """Strict, like every request body: ``true`` is not a number, an unknown field is an error."""

    model_config = ConfigDict(extra="forbid", strict=True)

    seq: int = Field(
        ge=0, le=2**63 - 1,
        description="Acknowledge every item with a sequence number up to this one.",
    )  # fmt: skip


class AckOut(BaseModel):
    acked: int


class TokenAck(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    token: str = Field(
        min_length=1, max_length=ACK_TOKEN_MAX,
        description="The access token of the device whose inbox this acknowledges.",
    )  # fmt: skip
    seq: int = Field(
        ge=0, le=2**63 - 1,
        description="Acknowledge every item with a sequence number up to this one.",
    )  # fmt: skip


class AcksIn(BaseModel):
    """Many devices' acks in one call: a gateway's sockets, taken together."""

    model_config = ConfigDict(extra="forbid", strict=True)

    acks: list[TokenAck] = Field(min_length=1, max_length=ACKS_PER_CALL)


class AckError(BaseModel):
    code: str
    message: str


class AckResult(BaseModel):
    """One ack's outcome: ``acked`` as `POST /v1/inbox/ack` answers, or the ``error``
    it would have answered (an invalid or revoked token, ``seq_not_issued``)."""

    acked: int | None = None
    error: AckError | None = None


class AcksOut(BaseModel):
    results: list[AckResult] = Field(description="One per ack, in the order they came.")


# -- moderation (docs/moderation-messages.md) -------------------------------------------

_B64 = r"^[A-Za-z0-9_-]*$"

REPORT_PLAINTEXT_MAX = 1024 * 1024
"""A report's plaintext at most (base64url characters), whatever the frame limit: the
report route refuses one longer than ``PARLEY_WS_MAX_FRAME_BYTES`` (no frame carried
it), and a request body is at most ``PARLEY_MAX_BODY_BYTES`` anyway."""


class ReportIn(BaseModel):
    """A recipient's report: what its ``message`` frame carried, and the plaintext and
    franking key its decryption gave (base64url without padding)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    server_id: str = Field(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$")
    sender: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    sender_device: int = Field(ge=1, le=2**31 - 1)
    sent_at: int = Field(ge=0, le=2**63 - 1)
    conversation: str | None = Field(default=None, max_length=200)
    commitment: str = Field(min_length=1, max_length=128, pattern=_B64)
    franking_tag: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.-]+$")
    franking_key: str = Field(min_length=1, max_length=128, pattern=_B64)
    # What a frame carried (PARLEY_WS_MAX_FRAME_BYTES, 64 KiB by default): its base64url
    # is shorter than the frame's ciphertext, so a plaintext longer than the frame limit
    # was never sent (Moderation.report checks the configured limit). Until 2026-12-08
    # the cap was 48 * 1024 characters (36 KiB): a message of 36-47 KB was delivered and
    # could never be reported. The model keeps a bound however the limit is configured.
    plaintext: str = Field(min_length=1, max_length=REPORT_PLAINTEXT_MAX, pattern=_B64)


class ReportOut(BaseModel):
    id: str
    state: str
    duplicate: bool = Field(description="This reporter had reported this message already.")


class Resolution(BaseModel):
    note: str
    by: str
    at: int


class Report(BaseModel):
    """A report as admins see it: the verified plaintext (``text``) included."""

    id: str
    state: str = Field(description="`open`, `actioned` or `dismissed`")
    server_id: str
    conversation: str | None
    room: str | None
    sender: str
    sender_device: int
    sent_at: int
    reporter: str
    reporter_device: int | None
    text: str
    created_at: int
    resolution: Resolution | None


class ReportsPage(BaseModel):
    reports: list[Report]
    next: str | None = Field(description="Pass as `after` for the next page; null at the end.")


class ResolveIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    state: Literal["actioned", "dismissed"]
    note: str = Field(default="", max_length=2000)


CONVERSATION_PATTERN = r"^(dm:[A-Za-z0-9_-]+:[A-Za-z0-9_-]+|room:[0-9a-f]{24})$"


class RemoveIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    reason: str = Field(default="", max_length=500, description="For the record (never sent).")
    sender: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="The message's sender, when no report of it was filed",
    )
    conversation: str | None = Field(
        default=None,
        max_length=200,
        pattern=r"^(dm:[A-Za-z0-9_-]+:[A-Za-z0-9_-]+|room:[0-9a-f]{24})$",
        description="Its conversation (`dm:<a>:<b>` or `room:<id>`), when no report was filed",
    )


class Removed(BaseModel):
    server_id: str
    by: str
    at: int
    inboxes: int = Field(description="Device inboxes a tombstone was sent to.")


class ModerationKey(BaseModel):
    kid: str
    alg: str
    public_key: str = Field(description="Raw Ed25519 public key, base64url")
    current: bool


class ModerationKeys(BaseModel):
    keys: list[ModerationKey]
