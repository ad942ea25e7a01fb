"""The gateway's routes: the WebSocket at /ws, plus health and metrics under /gateway."""

from __future__ import annotations

from collections.abc import Awaitable

from aiohttp import web

from services.common.errors import ErrorCode
from services.common.openapi import Api
from services.common.state import Handler
from services.gateway.connection import Connection
from services.gateway.state import HUB

api = Api(
    "Parley gateway",
    "0.1.0",
    "WebSocket gateway pods: the socket (`/ws`, also `/gateway/ws`), whose frames are "
    "described in [docs/protocol.md](docs/protocol.md), and the pod's HTTP endpoints.",
)


@api.get(
    "/ws",
    summary="Open the WebSocket (also at /ws): then send `auth`, see docs/protocol.md",
    description="An HTTP/1.1 upgrade to a WebSocket (RFC 6455). Every frame afterwards is one "
    "JSON object of the protocol in [docs/protocol.md](docs/protocol.md); errors on the socket "
    "are `error` frames and close codes, not HTTP statuses. A request that is not a WebSocket "
    "upgrade is answered 400 `bad_request`; a pod that is draining answers 503 "
    "`service_unavailable`.",
    status=101,
    errors=[ErrorCode.BAD_REQUEST, ErrorCode.UNAVAILABLE],
    tags=["websocket"],
)
async def websocket(request: web.Request) -> web.StreamResponse:
    """The handshake, inside the middlewares; the socket's life is ``socket_life``'s."""
    hub = request.app[HUB]
    if hub.draining:
        raise web.HTTPServiceUnavailable()
    ws = web.WebSocketResponse(
        # Pings and pongs come to the socket's frame loop: the pod's heartbeat
        # (services/gateway/heartbeat.py) instead of aiohttp's timers per socket.
        heartbeat=None,
        autoping=False,
        # aiohttp closes (1009) past 4x the limit; up to it we answer frame_too_large.
        max_msg_size=hub.limits.max_message_bytes,
        compress=False,
    )
    await ws.prepare(request)
    # The 101's headers are on the wire and nothing reads them again (the middlewares
    # look at a prepared response's status only): with the security headers ~1.4 KB
    # an idle socket need not keep (docs/BENCHMARKS.md, "Idle connections").
    ws.headers.clear()
    hub.connects.inc()
    return ws


def socket_life(request: web.Request, handshake: Handler) -> Awaitable[web.StreamResponse]:
    """A socket opened through ``websocket``, served outside the middlewares
    (services/common/app.py, ``serve_sockets``). Not a coroutine function: the
    socket's one frame is ``Connection.live``'s."""
    return Connection.live(request, handshake, request.app[HUB])
