"""One client's WebSocket: authenticate, then serve frames until it closes.

Outbound frames go through a bounded queue drained by one writer task: a
client that does not read fast enough is disconnected (it resyncs from its
inbox on reconnect) instead of making the pod grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Any

import orjson
from aiohttp import WSMsgType, web
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from services.common.auth import TokenVerifier, check_not_revoked
from services.common.errors import ApiError, ErrorCode
from services.common.logging import new_request_id, request_id_var
from services.common.routing import envelope, new_server_id
from services.gateway.directory import Directory
from services.gateway.hub import Hub
from services.gateway.protocol import (
    CLOSE_AUTH_FAILED,
    CLOSE_AUTH_TIMEOUT,
    CLOSE_FLOOD,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TRY_AGAIN,
    PROTOCOL_VERSION,
    AckFrame,
    AuthFrame,
    PingFrame,
    SendFrame,
    SyncFrame,
    frame_id,
    parse_frame,
)

log = logging.getLogger(__name__)

MAX_IN_FLIGHT_SENDS = 256


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Connection:
    def __init__(
        self, ws: web.WebSocketResponse, hub: Hub, verifier: TokenVerifier, directory: Directory
    ) -> None:
        self.ws = ws
        self.hub = hub
        self.store = hub.store
        self.settings = hub.settings
        self.verifier = verifier
        self.directory = directory
        self.conn_id = secrets.token_hex(8)
        self.user_id: str | None = None
        self.sid: str | None = None
        self.token: str | None = None
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(self.settings.ws_outbound_queue)
        self.bucket = TokenBucket(self.settings.ws_sends_per_s, self.settings.ws_send_burst)
        self.violations = 0
        self.in_flight = asyncio.Semaphore(MAX_IN_FLIGHT_SENDS)
        self._pending: set[asyncio.Task[None]] = set()
        self._writer: asyncio.Task[None] | None = None
        self._ack_target = 0
        self._ack_posted = 0
        self._ack_id: str | None = None
        self._ack_task: asyncio.Task[None] | None = None
        self._closing = False

    # Outbound ---------------------------------------------------------------
    def push(self, frame: dict[str, Any]) -> None:
        if self._closing:
            return
        try:
            self.queue.put_nowait(orjson.dumps(frame))
        except asyncio.QueueFull:
            log.warning("slow consumer disconnected", extra={"user_id": self.user_id})
            self.hub.errors.labels(ErrorCode.SLOW_CONSUMER.value).inc()
            self._closing = True
            task = asyncio.create_task(
                self.close(CLOSE_SLOW_CONSUMER, ErrorCode.SLOW_CONSUMER.value, flush=False)
            )
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            return
        self.hub.frames_out.labels(str(frame.get("op"))).inc()

    def error(self, err: ApiError, answers: str | None = None) -> None:
        self.hub.errors.labels(err.code.value).inc()
        self.push(err.frame(answers))

    async def writer(self) -> None:
        while True:
            data = await self.queue.get()
            if data is None:
                return
            try:
                await self.ws.send_frame(data, WSMsgType.TEXT)
            except (ConnectionResetError, RuntimeError):
                return

    async def close(self, code: int, reason: str, flush: bool = True) -> None:
        self._closing = True
        writer = self._writer
        if flush and writer is not None:
            # Let queued frames (an error, `reconnect`) reach the client first.
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(None)
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(writer), 1.0)
        await self.ws.close(code=code, message=reason.encode()[:120])

    # Inbound ----------------------------------------------------------------
    async def serve(self) -> None:
        writer = self._writer = asyncio.create_task(self.writer())
        try:
            if await self._authenticate():
                try:
                    await self._loop()
                finally:
                    await self.hub.unregister(self)
        except (RedisError, OSError) as exc:
            # Redis went away under this socket: the client reconnects and resyncs.
            log.warning("closing a socket after a redis error", extra={"error": repr(exc)})
            self.error(ApiError(ErrorCode.UNAVAILABLE, "Temporarily unavailable; reconnect."))
            await self.close(CLOSE_TRY_AGAIN, ErrorCode.UNAVAILABLE.value)
        finally:
            if self._ack_task is not None and not self._ack_task.done():
                # Let the last ack land: the client may not come back to repeat it.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(self._ack_task), 5.0)
            for task in list(self._pending):
                task.cancel()
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(writer, 2.0)
            writer.cancel()

    async def _receive_frame(self, msg: Any) -> Any:
        """Decode a text frame; None (after an error frame) when it is unusable."""
        if msg.type == WSMsgType.BINARY:
            self.error(ApiError(ErrorCode.BAD_REQUEST, "Send JSON text frames."))
            return None
        if len(msg.data) > self.settings.ws_max_frame_bytes:
            self.error(
                ApiError(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"Frames are limited to {self.settings.ws_max_frame_bytes} bytes.",
                )
            )
            return None
        try:
            return orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            self.error(ApiError(ErrorCode.INVALID_JSON, "The frame is not valid JSON."))
            return None

    async def _authenticate(self) -> bool:
        try:
            msg = await asyncio.wait_for(self.ws.receive(), self.settings.ws_auth_timeout_s)
        except TimeoutError:
            self.error(ApiError(ErrorCode.AUTH_TIMEOUT, "Authenticate within the time limit."))
            await self.close(CLOSE_AUTH_TIMEOUT, ErrorCode.AUTH_TIMEOUT.value)
            return False
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            return False
        data = await self._receive_frame(msg)
        if data is None:
            await self.close(CLOSE_AUTH_FAILED, ErrorCode.AUTH_REQUIRED.value)
            return False
        try:
            frame = parse_frame(data)
            if not isinstance(frame, AuthFrame):
                raise ApiError(ErrorCode.AUTH_REQUIRED, "The first frame must be `auth`.")
            claims = await self.verifier.verify(frame.token)
            await check_not_revoked(self.store.redis, self.settings.redis_prefix, claims)
        except ApiError as err:
            self.error(err, frame_id(data))
            await self.close(CLOSE_AUTH_FAILED, err.code.value)
            return False
        self.user_id, self.sid, self.token = claims.sub, claims.sid, frame.token
        # Presence is recorded before `ready`: once a client is ready, it is reachable.
        await self.hub.register(self)
        self.push(
            {
                "op": "ready",
                "id": frame.id,
                "protocol": PROTOCOL_VERSION,
                "user_id": claims.sub,
                "session_id": claims.sid,
                "gateway": self.settings.gateway_id,
                "limits": {
                    "max_frame_bytes": self.settings.ws_max_frame_bytes,
                    "sends_per_s": self.settings.ws_sends_per_s,
                    "send_burst": self.settings.ws_send_burst,
                },
            }
        )
        return True

    async def _loop(self) -> None:
        async for msg in self.ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            request_id_var.set(new_request_id())
            data = await self._receive_frame(msg)
            if data is None:
                continue
            try:
                frame = parse_frame(data)
                self.hub.frames_in.labels(frame.op).inc()  # type: ignore[attr-defined]
                await self._handle(frame)
            except ApiError as err:
                self.error(err, frame_id(data))
            if self._closing:
                break

    async def _handle(self, frame: Any) -> None:
        if isinstance(frame, SendFrame):
            await self._send(frame)
        elif isinstance(frame, AckFrame):
            self._ack(frame)
        elif isinstance(frame, SyncFrame):
            await self._sync(frame)
        elif isinstance(frame, PingFrame):
            self.push({"op": "pong", "id": frame.id})
        elif isinstance(frame, AuthFrame):
            # Re-authentication with a fresh token for the same user keeps the socket.
            claims = await self.verifier.verify(frame.token)
            await check_not_revoked(self.store.redis, self.settings.redis_prefix, claims)
            if claims.sub != self.user_id:
                raise ApiError(ErrorCode.FORBIDDEN, "A socket belongs to one user.")
            self.sid, self.token = claims.sid, frame.token
            self.push({"op": "ready", "id": frame.id, "protocol": PROTOCOL_VERSION,
                       "user_id": claims.sub, "session_id": claims.sid,
                       "gateway": self.settings.gateway_id})  # fmt: skip

    def _token(self) -> str:
        assert self.token is not None
        return self.token

    async def _send(self, frame: SendFrame) -> None:
        if not self.bucket.take():
            self.violations += 1
            if self.violations > 4 * self.settings.ws_send_burst:
                self.error(ApiError(ErrorCode.RATE_LIMITED, "Flooding; closing."), frame.id)
                await self.close(CLOSE_FLOOD, ErrorCode.RATE_LIMITED.value)
                return
            raise ApiError(ErrorCode.RATE_LIMITED, "Too many messages; slow down.")
        assert self.user_id is not None and self.sid is not None
        await self.directory.require_user(frame.to, self._token())
        env = envelope(
            server_id=new_server_id(),
            sender=self.user_id,
            sender_sid=self.sid,
            recipient=frame.to,
            client_id=frame.id,
            body=frame.body,
            commitment=frame.commitment,
        )
        await self.in_flight.acquire()
        try:
            ack = await self.store.enqueue(env)
        except ApiError:
            self.in_flight.release()
            raise
        task = asyncio.create_task(self._accepted(ack, frame.id, env))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _accepted(self, ack: Any, client_id: str, env: dict[str, Any]) -> None:
        try:
            await ack
        except KafkaError:
            self.error(ApiError(ErrorCode.UNAVAILABLE, "The message was not accepted."), client_id)
            return
        finally:
            self.in_flight.release()
        self.push(
            {
                "op": "accepted",
                "id": client_id,
                "server_id": env["server_id"],
                "conversation": env["conversation"],
            }
        )

    def _ack(self, frame: AckFrame) -> None:
        """Acks are cumulative: keep the highest, post it off the frame loop (one in flight).

        A slow inbox never holds up this socket's sends; a later `sync` waits
        for the acks before it, so it never returns what was acknowledged.
        """
        if frame.seq <= self._ack_target:
            return
        self._ack_target = frame.seq
        self._ack_id = frame.id
        if self._ack_task is None or self._ack_task.done():
            self._ack_task = asyncio.create_task(self._post_acks())

    async def _post_acks(self) -> None:
        while self._ack_posted < self._ack_target:
            target, answers = self._ack_target, self._ack_id
            try:
                await self.store.ack(self._token(), target)
            except ApiError as err:
                self.error(err, answers)
                return
            self._ack_posted = max(self._ack_posted, target)

    async def _sync(self, frame: SyncFrame) -> None:
        if self._ack_task is not None:
            await asyncio.shield(self._ack_task)
        limit = min(frame.limit, self.settings.sync_page_max)
        page = await self.store.sync(self._token(), frame.after, limit)
        last = frame.after
        for item in page["messages"]:
            self.push({"op": "message", **item})
            last = item["seq"]
        self.push({"op": "synced", "id": frame.id, "last": last, "more": page["more"]})
