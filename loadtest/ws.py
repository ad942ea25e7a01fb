"""The fan-out load generator's WebSocket client: each text frame handed to a callback.

A room of 1,000 members is 1,000 sockets read by one Python process, and at
saturation that process reads ~200,000 frames a second on the same two cores
as the servers it measures (docs/BENCHMARKS.md, "Room fan-out"). Two readers,
the same interface:

- ``aiohttp``: ``ClientSession.ws_connect`` and a task per socket iterating
  over its messages (what every benchmark used before 2026-12-05): a
  coroutine step and a future per frame;
- ``picows``: picows's Cython client, which calls the listener once per frame
  from the protocol's ``data_received``: no task, no coroutine, no future per
  frame.

The servers see the same bytes from either (masked client frames, text, no
compression); only the load generator's own CPU per frame differs, and with
it how much of the machine is left to the servers under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from typing import Protocol

import aiohttp
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

READERS = ("picows", "aiohttp")

OnText = Callable[[str], None]


class TextSocket(Protocol):
    async def send(self, text: str) -> None: ...

    async def close(self) -> None: ...


async def open_socket(
    reader: str, session: aiohttp.ClientSession, url: str, on_text: OnText
) -> TextSocket:
    """Connect to ``url``; every text frame from then on goes to ``on_text``, in order."""
    if reader == "picows":
        return await _PicowsSocket.open(url, on_text)
    if reader == "aiohttp":
        return await _AiohttpSocket.open(session, url, on_text)
    raise ValueError(f"unknown reader {reader!r}: one of {', '.join(READERS)}")


class _AiohttpSocket:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, on_text: OnText) -> None:
        self.ws, self.on_text = ws, on_text
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls, session: aiohttp.ClientSession, url: str, on_text: OnText
    ) -> _AiohttpSocket:
        return cls(await session.ws_connect(url, max_msg_size=0, compress=0), on_text)

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.on_text(msg.data)
            else:
                print(f"socket: {msg.type} {msg.data!r}", file=sys.stderr)
        if self.ws.close_code not in (None, 1000):
            print(f"socket closed: {self.ws.close_code} {self.ws.exception()!r}", file=sys.stderr)

    async def send(self, text: str) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(text)

    async def close(self) -> None:
        await self.ws.close()
        self.task.cancel()


class _Listener(WSListener):  # type: ignore[misc]
    def __init__(self, on_text: OnText) -> None:
        super().__init__()
        self.on_text = on_text
        self.parts: list[bytes] = []  # a fragmented message's frames so far

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT and frame.fin:
            self.on_text(frame.get_payload_as_utf8_text())
        elif kind in (WSMsgType.TEXT, WSMsgType.CONTINUATION):
            self.parts.append(frame.get_payload_as_bytes())
            if frame.fin:
                self.on_text(b"".join(self.parts).decode())
                self.parts = []
        elif kind == WSMsgType.CLOSE:
            code = frame.get_close_code()
            if code not in (None, 1000):
                print(f"socket closed by the server: {code}", file=sys.stderr)
            transport.send_close(code)
            transport.disconnect()


class _PicowsSocket:
    def __init__(self, transport: WSTransport) -> None:
        self.transport = transport

    @classmethod
    async def open(cls, url: str, on_text: OnText) -> _PicowsSocket:
        # The servers ping (heartbeats): picows answers pongs itself.
        transport, _ = await ws_connect(lambda: _Listener(on_text), url, enable_auto_pong=True,
                                        websocket_handshake_timeout=30)  # fmt: skip
        return cls(transport)

    async def send(self, text: str) -> None:
        if not self.transport.is_disconnected:
            self.transport.send(WSMsgType.TEXT, text.encode())

    async def close(self) -> None:
        if not self.transport.is_disconnected:
            self.transport.send_close()
            self.transport.disconnect()
        await self.transport.wait_disconnected()
