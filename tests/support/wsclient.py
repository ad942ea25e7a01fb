"""A small protocol-level WebSocket client for tests (the SDK has the real one)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson


class WsClient:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession) -> None:
        self.ws = ws
        self.session = session
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, token: str | None = None) -> WsClient:
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(url, max_msg_size=0, autoping=True)
        except BaseException:
            await session.close()
            raise
        client = cls(ws, session)
        if token is not None:
            try:
                await client.send({"op": "auth", "token": token})
                ready = await client.expect("ready")
            except BaseException:
                await client.close()
                raise
            assert ready["protocol"] == 3
            client.ready = ready
        return client

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await self.frames.put(orjson.loads(msg.data))
        self.close_code = self.ws.close_code
        self.closed.set()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_str(orjson.dumps(frame).decode())

    async def send_raw(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.frames.get(), timeout)

    async def expect(self, op: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        """The next frame with this op (and fields); other frames are kept aside."""
        return await self.expect_any((op,), timeout, **match)

    async def expect_any(
        self, ops: tuple[str, ...], timeout: float = 10.0, **match: Any
    ) -> dict[str, Any]:
        """The next frame with one of these ops (and fields); others are kept aside."""
        aside: list[dict[str, Any]] = []
        try:
            while True:
                frame = await self.next(timeout)
                if frame.get("op") in ops and all(frame.get(k) == v for k, v in match.items()):
                    return frame
                aside.append(frame)
        finally:
            for f in aside:
                self.frames.put_nowait(f)

    async def send_stored(self, to: str, messages: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """Send ``to`` one message per (client id, body), then wait for each one's
        ``stored`` receipt; returns the receipts."""
        for client_id, body in messages:
            await self.send(send_frame(client_id, to, body))
        return [await self.expect("stored", id=client_id) for client_id, _ in messages]

    def drain(self) -> list[dict[str, Any]]:
        out = []
        while not self.frames.empty():
            out.append(self.frames.get_nowait())
        return out

    async def wait_closed(self, timeout: float = 10.0) -> int | None:
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.close_code

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()
        self._reader.cancel()


def send_frame(
    client_id: str,
    to: str,
    body: str,
    *,
    devices: tuple[int, ...] = (1,),
    commitment: str | None = None,
    own: tuple[tuple[str, int], ...] = (),
) -> dict[str, Any]:
    """A protocol-v2 ``send`` frame: the same body as a copy for each of ``to``'s
    ``devices`` (and for the sender's other devices ``own``: (user, device))."""
    copies: list[dict[str, Any]] = [{"user": to, "device": d, "body": body} for d in devices] + [
        {"user": u, "device": d, "body": body} for u, d in own
    ]
    if commitment is not None:
        for copy in copies:
            copy["commitment"] = commitment
    return {"op": "send", "id": client_id, "to": to, "copies": copies}
