"""Request and response bodies of the delivery service's HTTP API (they also document it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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


class AckIn(BaseModel):
    """Strict, like every request body: ``true`` is not a number, an unknown field is an error."""

    model_config = ConfigDict(extra="forbid", strict=True)

    seq: int = Field(
        ge=0, le=2**63 - 1,
        description="Acknowledge every item with a sequence number up to this one.",
    )  # fmt: skip


class AckOut(BaseModel):
    acked: int
