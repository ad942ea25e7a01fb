"""The gateway's routes: the WebSocket at /ws, plus health and metrics under /gateway."""

from __future__ import annotations

import time

from aiohttp import web

from services.common.openapi import Api
from services.common.state import SETTINGS
from services.gateway.connection import Connection
from services.gateway.state import HUB

api = Api(
    "Parley gateway",
    "0.1.0",
    "WebSocket gateway pods. The socket itself is at `/ws` and is described in "
    "docs/protocol.md; this document covers the pod's HTTP endpoints.",
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
    hub.connects.inc()
    opened = time.monotonic()
    conn = Connection(ws, hub)
    await conn.serve()
    hub.count_disconnect(ws.close_code, time.monotonic() - opened)
    return ws
