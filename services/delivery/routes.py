"""HTTP routes of the delivery service: a user's inbox (gateways call these with the token).

The route decorator (services.common.openapi) checks the token and hands the
handler ``claims=``: a user reads and acknowledges only their own inbox.
"""

from __future__ import annotations

from aiohttp import web
from parley_contract import frames as f
from parley_contract.envelopes import inbox_id

from services.common.auth import Claims
from services.common.errors import ApiError, ErrorCode
from services.common.http import int_schema, query_int
from services.common.openapi import Api
from services.common.state import SETTINGS
from services.delivery.models import AckIn, AckOut, InboxPage
from services.delivery.state import INBOX

api = Api(
    "Parley delivery",
    "0.1.0",
    "A user's inbox of encrypted envelopes: page through what waits, acknowledge it. "
    "Clients normally use these through the WebSocket (`sync`, `ack`; docs/protocol.md).",
)


SEQ_MAX = 2**63 - 1
PAGE_MAX = 1000


@api.get(
    "/v1/inbox",
    summary="Page through the caller's waiting items, in sequence order",
    response=InboxPage,
    auth=True,
    query={
        "after": "return items with a larger seq (default 0)",
        "limit": "page size (default 100), capped by the server's page size (PARLEY_SYNC_PAGE_MAX)",
    },
    params={"after": int_schema(0, SEQ_MAX), "limit": int_schema(1, PAGE_MAX)},
    errors=[ErrorCode.DEVICE_REQUIRED],
    tags=["inbox"],
)
async def inbox_page(request: web.Request, claims: Claims) -> web.Response:
    settings = request.app[SETTINGS]
    after = query_int(request, "after", 0, 0, SEQ_MAX)
    limit = min(query_int(request, "limit", 100, 1, PAGE_MAX), settings.sync_page_max)
    page = await request.app[INBOX].page(_inbox(claims), after, limit)
    # The contract's InboxPage, encoded once (the gateway decodes it as is).
    return web.Response(body=f.encode(page), content_type="application/json")


@api.post(
    "/v1/inbox/ack",
    summary="Acknowledge (and delete) every item up to a sequence number",
    body=AckIn,
    response=AckOut,
    auth=True,
    errors=[ErrorCode.SEQ_NOT_ISSUED, ErrorCode.DEVICE_REQUIRED],
    tags=["inbox"],
)
async def inbox_ack(request: web.Request, claims: Claims, body: AckIn) -> dict[str, int]:
    return {"acked": await request.app[INBOX].ack(_inbox(claims), body.seq)}


def _inbox(claims: Claims) -> str:
    """The caller's device inbox: the token's user and device (docs/devices.md)."""
    if claims.did is None:
        raise ApiError(
            ErrorCode.DEVICE_REQUIRED,
            "This session is not bound to a device: log in with a device id to use messaging.",
        )
    return inbox_id(claims.sub, claims.did)
