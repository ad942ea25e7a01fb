"""HTTP routes of the delivery service: a user's inbox (gateways call these with the token)."""

from __future__ import annotations

from aiohttp import web
from parley_contract import frames as f
from pydantic import BaseModel, Field

from services.common.app import SETTINGS
from services.common.auth import authenticate
from services.common.errors import ApiError, ErrorCode
from services.common.openapi import Api
from services.delivery.handlers import INBOX, Inbox

api = Api(
    "Parley delivery",
    "0.1.0",
    "A user's inbox of encrypted envelopes: page through what waits, acknowledge it. "
    "Clients normally use these through the WebSocket (`sync`, `ack`).",
)


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
    seq: int = Field(
        ge=0, description="Acknowledge every item with a sequence number up to this one."
    )


class AckOut(BaseModel):
    acked: int


def _int_param(request: web.Request, name: str, default: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 0 <= int(raw) <= hi:
        raise ApiError(ErrorCode.VALIDATION_FAILED, f"`{name}` must be an integer in 0..{hi}.")
    return int(raw)


@api.get(
    "/v1/inbox",
    summary="Page through the caller's waiting items, in sequence order",
    response=InboxPage,
    auth=True,
    query={"after": "return items with a larger seq (default 0)", "limit": "page size"},
    errors=[ErrorCode.VALIDATION_FAILED],
    tags=["inbox"],
)
async def inbox_page(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    settings = request.app[SETTINGS]
    after = _int_param(request, "after", 0, 2**62)
    limit = _int_param(request, "limit", 100, settings.sync_page_max) or 1
    inbox: Inbox = request.app[INBOX]
    page = await inbox.page(claims.sub, after, limit)
    # The contract's InboxPage, encoded once (the gateway decodes it as is).
    return web.Response(body=f.encode(page), content_type="application/json")


@api.post(
    "/v1/inbox/ack",
    summary="Acknowledge (and delete) every item up to a sequence number",
    body=AckIn,
    response=AckOut,
    auth=True,
    tags=["inbox"],
)
async def inbox_ack(request: web.Request, body: AckIn) -> dict[str, int]:
    claims = await authenticate(request)
    inbox: Inbox = request.app[INBOX]
    return {"acked": await inbox.ack(claims.sub, body.seq)}
