"""Frames written back to back in one write reach an aiohttp client as separate messages."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web

from services.gateway.wire import text_frames

PAYLOADS = [b"", b"{}", b"x" * 125, b"y" * 126, b"z" * 65535, b"w" * 65536, b'{"op":"pong"}']


async def test_back_to_back_frames_are_read_as_separate_messages(make_client: Any) -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        assert request.transport is not None
        request.transport.write(text_frames(PAYLOADS))
        await ws.send_str("last")  # and aiohttp's own frames still follow in order
        await ws.receive()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    client = await make_client(app)
    async with client.session.ws_connect(client.make_url("/ws")) as ws:
        got = [await ws.receive(timeout=5) for _ in range(len(PAYLOADS) + 1)]
    assert [m.type for m in got] == [aiohttp.WSMsgType.TEXT] * (len(PAYLOADS) + 1)
    assert [m.data for m in got] == [p.decode() for p in PAYLOADS] + ["last"]
