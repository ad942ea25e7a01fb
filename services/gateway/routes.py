"""The gateway's routes: the WebSocket at /ws, plus health and metrics under /gateway."""

from __future__ import annotations

import time

from aiohttp import web

from services.common.errors import ErrorCode
from services.common.http import client_ip
from services.common.openapi import Api
from services.common.state import SETTINGS
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
    app = request.app
    settings = app[SETTINGS]
    hub = app[HUB]
    if hub.draining:
        raise web.HTTPServiceUnavailable()
    ws = web.WebSocketResponse(
        heartbeat=settings.ws_heartbeat_s,
        # aiohttp closes (1009) past 4x the limit; up to it we answer frame_too_large.
        max_msg_size=4 * settings.ws_max_frame_bytes,
        compress=False,
    )
    await ws.prepare(request)
    # The 101's headers are on the wire and nothing reads them again (the middlewares
    # look at a prepared response's status only): with the security headers ~1.4 KB
    # an idle socket need not keep (docs/BENCHMARKS.md, "Idle connections").
    ws.headers.clear()
    hub.connects.inc()
    opened = time.monotonic()
    # With its transport, frames that wait together go out in one write (wire.py).
    conn = Connection(ws, hub, request.transport)
    # The pods sit behind the load balancer, whose X-Forwarded-For hop is the client.
    await conn.serve(client_ip(request, trust_forwarded_for=True))
    hub.count_disconnect(ws.close_code, time.monotonic() - opened)
    return ws
