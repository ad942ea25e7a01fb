"""One client's WebSocket: authenticate, then serve frames until it closes.

The connection owns its socket: the outbound queue and its writer task, the
send-rate bucket, and the coalescing of acks. Everything that is the pod's
(registration and presence, the broker, the inbox, the recipient directory,
metrics) is the hub's: a connection only calls :class:`Hub` methods.

Frames are parsed and built only through the contract (``parley_contract``);
outbound frames are encoded once, and frames routed from delivery arrive
already encoded and are forwarded as they are.

Outbound frames go through a bounded queue drained by one writer task: a
client that does not read fast enough is disconnected (it resyncs from its
inbox on reconnect) instead of making the pod grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sys
import time
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web
from aiokafka.errors import KafkaError
from parley_contract import frames as f
from redis.exceptions import RedisError

from services.common.errors import ApiError, ErrorCode
from services.common.http import client_ip
from services.common.logging import new_request_id, request_id_var, user_id_var
from services.gateway import packed
from services.gateway.wire import PING, text_frames

if TYPE_CHECKING:
    from services.common.state import Handler
    from services.gateway.hub import Hub

log = logging.getLogger(__name__)


class TypingTooSoon(ApiError):
    """A start within ``TYPING_EVERY_S`` of the device's last one in the room: refused
    (``rate_limited``) but no violation toward the flood close (a client from before
    the rule, starting again right after a stop, does it once per message sent)."""


MAX_IN_FLIGHT_SENDS = 256
# Refused sends (over the rate) after which a socket is closed 4009: 4x the burst, at most this.
FLOOD_VIOLATIONS = 400
VIOLATIONS_FORGOTTEN_S = 60.0
"""A socket's refused frames are forgotten after this long without one (_violated)."""
violation_clock = time.monotonic
_TYPING_VIOLATIONS = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.ROOM_NOT_FOUND})
CLOSE_TIMEOUT_S = 5.0
"""A closing socket's connection is dropped once its client has taken nothing of what
waits for it for this long, or has taken everything and not answered the close frame
for twice this long (a client that stopped reading held it for ever)."""
CLOSE_ROUNDS = 24
"""... and at the latest after this many of those intervals (two minutes), however
slowly it still reads."""


def _retrieved(task: asyncio.Future[bool]) -> None:
    if not task.cancelled():
        task.exception()  # aiohttp's close keeps its errors (the connection is gone)


_ENDS = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)
"""What ends a socket's frame loop (as it ends ``async for`` over the socket)."""


class Connection:
    # What an idle socket holds is what a pod's memory is made of (docs/BENCHMARKS.md,
    # "Idle connections"): no instance dict, and the outbound queue, the set of
    # pending tasks and the waiter for a send slot exist only while they are used.
    __slots__ = (
        "_ack_floor", "_ack_id", "_ack_posted", "_ack_target", "_ack_task", "_ahead", "_cid",
        "_closing", "_pending", "_sending", "_slot_free", "_token_body", "_token_head",
        "_violated_at", "_writer", "_writer_delayed",
        "beat", "busy", "device_id", "expires_at", "heard", "hub", "limits", "queue",
        "queued_bytes", "sid", "transport", "user_id", "violations", "ws",
    )  # fmt: skip

    def __init__(
        self, ws: web.WebSocketResponse, hub: Hub, transport: asyncio.Transport | None = None
    ) -> None:
        self.ws = ws
        self.hub = hub
        self.transport = transport
        """The socket's connection, when frames that wait together may go out in one write."""
        self.limits = hub.limits
        self._cid = secrets.randbits(64)  # an int (40 B), not its 16 hex digits (65 B)
        self.user_id: str | None = None
        self.device_id: int | None = None
        self.sid: str | None = None
        # The access token, packed (services/gateway/packed.py): a third less memory.
        self._token_head: str | None = None
        self._token_body = b""
        # Frames waiting for the socket, at most ``outbound_queue`` of them. The queue
        # and a writer task exist only while some wait (most idle sockets have none).
        self.queue: deque[bytes] | None = None
        self.queued_bytes = 0
        """Bytes waiting in ``queue``: bounded too (``outbound_queue_bytes``), since
        1,000 frames of 64 KiB would be 64 MiB per socket."""
        self.violations = 0
        self._violated_at = 0.0
        self._sending = 0
        """Sends submitted and not yet accepted by the broker (``MAX_IN_FLIGHT_SENDS``)."""
        self._slot_free: asyncio.Future[None] | None = None
        self._ahead: asyncio.Future[None] | None = None
        """The last send's: done once it is produced or refused (the next one waits)."""
        self._pending: set[asyncio.Task[None]] | None = None
        self._writer: asyncio.Task[None] | asyncio.Handle | None = None
        """What writes the queue: a callback once the loop comes back (with the
        socket's transport; uvloop's handles are not ``asyncio.Handle``), else a
        task (tests without one)."""
        self._writer_delayed = False
        """The callback waits ``room_write_delay_s`` (a direct frame brings it forward;
        told by this flag: uvloop's timer handles are not ``asyncio.TimerHandle``)."""
        self._ack_target = 0
        self._ack_posted = 0
        self._ack_id: str | None = None
        self._ack_floor: tuple[int, str | None] | None = None
        """The highest ack that came below the one being posted (posted if that one is
        refused: it was dropped unposted before 2026-12-07)."""
        self._ack_task: asyncio.Task[None] | None = None
        self._closing = False
        self.expires_at = 0.0
        """When the token this socket last authenticated with expires (epoch seconds);
        the hub closes the socket then (one timer per pod, not one per socket)."""
        self.heard = 0.0
        """When a frame (any, pings and pongs too) last came from the client (monotonic
        seconds): the pod's heartbeat pings a socket that has been silent for long
        (services/gateway/heartbeat.py)."""
        self.beat = 0.0
        self.busy = False
        """The frame loop is handling a frame (a sync waiting for delivery): what the
        client sent meanwhile, its pong too, is not read yet (the heartbeat waits)."""

    @property
    def conn_id(self) -> str:
        """This socket's id in its user's presence hash (16 hex digits)."""
        return f"{self._cid:016x}"

    # Outbound ---------------------------------------------------------------
    def push(self, frame: f.ServerFrames) -> None:
        """Queue a frame for this socket (encoded here, once)."""
        op = str(type(frame).__struct_config__.tag)
        if self.push_encoded(f.encode(frame)):
            self.hub.count_out(op)

    def push_encoded(self, data: bytes, delay: float = 0.0) -> bool:
        """Queue an already encoded frame (routed from delivery: forwarded as is); False
        when it was not (the socket is closing, or too slow: then closed). The caller
        counts it (``Hub.count_out``: once for many, on the routing path).

        ``delay``: the write may wait that long, for the frames that follow (a busy
        room's) to go in the same write; a frame without one that comes meanwhile
        brings the write forward to now."""
        if self._closing:
            return False
        queue = self.queue
        if queue is None:
            queue = self.queue = deque()
        transport = self.transport
        if transport is not None:
            # The queue holds only what came since the loop last turned (or a room's
            # short delay): frames the client has not been offered yet. A burst (the
            # receipts of one ack of thousands, a sync page) is no sign of a slow
            # reader; what it has not read, here and in the transport, is.
            over = (
                self.queued_bytes + len(data) + transport.get_write_buffer_size()
                > self.limits.outbound_queue_bytes
            )
        else:
            over = (
                len(queue) >= self.limits.outbound_queue
                or self.queued_bytes + len(data) > self.limits.outbound_queue_bytes
            )
        if over:
            self._slow_consumer()
            return False
        queue.append(data)
        self.queued_bytes += len(data)
        writer = self._writer
        if writer is None:
            if self.transport is not None:
                # What waits when the loop comes back goes out in one write, from a
                # callback: no task and no coroutine per push.
                loop = asyncio.get_running_loop()
                self._writer = (
                    loop.call_later(delay, self._flush) if delay else loop.call_soon(self._flush)
                )
                self._writer_delayed = bool(delay)
            else:
                self._writer = asyncio.create_task(self.writer())
        elif not delay and self._writer_delayed:
            writer.cancel()
            self._writer = asyncio.get_running_loop().call_soon(self._flush)
            self._writer_delayed = False
        return True

    def _slow_consumer(self) -> None:
        """Close a socket whose client does not read fast enough (it resyncs on reconnect)."""
        log.warning("slow consumer disconnected", extra={"user_id": self.user_id})
        self.hub.count_error(ErrorCode.SLOW_CONSUMER)
        self.close_soon(f.CLOSE_SLOW_CONSUMER, ErrorCode.SLOW_CONSUMER.value, flush=False)

    def close_soon(self, code: int, reason: str, flush: bool = True) -> None:
        """Close from outside the socket's frame loop (a slow consumer, an expired token, a
        revocation): nothing more is queued from now on (what the listener routes in
        the same turn too), and the close runs as the socket's task (its end may cancel
        that task: the close itself is shielded, :meth:`close`)."""
        self._closing = True
        self._spawn(self.close(code, reason, flush))

    def error(self, err: ApiError, answers: str | None = None) -> None:
        self.hub.count_error(err.code)
        self.push(err.frame(answers))

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        if self._pending is None:
            self._pending = set()
        self._pending.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[None]) -> None:
        pending = self._pending
        if pending is not None:
            pending.discard(task)
            if not pending:
                self._pending = None

    async def writer(self) -> None:
        """Send what waits, in order, then end (the next push starts another)."""
        queue = self.queue
        try:
            while queue:
                if len(queue) > 1 and self.transport is not None:
                    if not self._write_all(queue, self.transport):
                        return
                    continue
                data = queue.popleft()
                self.queued_bytes -= len(data)
                try:
                    await self.ws.send_frame(data, WSMsgType.TEXT)
                except (ConnectionResetError, RuntimeError):
                    queue.clear()
                    self.queued_bytes = 0
                    return
        finally:
            self._writer = None
            if not queue and self.queue is queue:
                self.queue = None  # an empty deque is still ~760 bytes

    def _flush(self) -> None:
        """Write every waiting frame (the callback :meth:`push_encoded` schedules)."""
        self._writer = None
        self._writer_delayed = False
        queue, transport = self.queue, self.transport
        if queue:
            assert transport is not None
            self._write_all(queue, transport)
        if self.queue is queue:
            self.queue = None  # an empty deque is still ~760 bytes

    def _write_all(self, queue: deque[bytes], transport: asyncio.Transport) -> bool:
        """Write every waiting frame with one system call (services/gateway/wire.py), not
        one each; False once the socket cannot take more.

        What the transport holds is bounded as the queue is: a client that lets
        more than ``outbound_queue_bytes`` wait there is a slow consumer.
        """
        if transport.is_closing() or self.ws.closed:
            queue.clear()
            self.queued_bytes = 0
            return False
        frames = list(queue)
        queue.clear()
        self.queued_bytes = 0
        transport.write(text_frames(frames))
        hub = self.hub
        hub.socket_writes += 1
        hub.frames_written += len(frames)
        if transport.get_write_buffer_size() > self.limits.outbound_queue_bytes:
            self._slow_consumer()
            return False
        return True

    async def close(self, code: int, reason: str, flush: bool = True) -> None:
        self._closing = True
        writer = self._writer
        if writer is not None and not isinstance(writer, asyncio.Task):  # the callback
            writer.cancel()
            if flush:
                self._flush()  # queued frames (an error, `reconnect`) first
            else:
                self._writer = None
        elif flush and writer is not None:
            # Let queued frames (an error, `reconnect`) reach the client first: no
            # frame is queued from now on, so the writer ends once they are out.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(writer), 1.0)
        # aiohttp's close drains the transport first, then waits for the client's close
        # frame: for a client that stopped reading, for ever. A watch (``_watch``) drops
        # the connection once the client stops taking what waits for it; a client still
        # reading (a slow link, megabytes buffered) gets its last frames and the close
        # code. Shielded: the socket's own end (which cancels its tasks) does not cut
        # the close short.
        closing = asyncio.ensure_future(self.ws.close(code=code, message=reason.encode()[:120]))
        closing.add_done_callback(_retrieved)
        self.watch_close(closing)
        await asyncio.shield(closing)

    def watch_close(self, closing: asyncio.Future[bool] | None) -> None:
        """Watch a close (``closing``: aiohttp's, or None: one aiohttp started itself, or
        the socket's end with frames still buffered) every ``CLOSE_TIMEOUT_S``."""
        transport = self.transport
        if transport is not None:
            asyncio.get_running_loop().call_later(
                CLOSE_TIMEOUT_S, self._watch, closing, transport.get_write_buffer_size(), 1
            )

    def _watch(self, closing: asyncio.Future[bool] | None, left: int, rounds: int) -> None:
        """Drop the connection if the client took nothing since the last look (``left``
        bytes were waiting), took everything but has not answered the close frame
        since, or after ``CLOSE_ROUNDS`` looks; else look again later."""
        transport = self.transport
        if transport is None or (closing is not None and closing.done()):
            return
        size = transport.get_write_buffer_size()
        if size == 0 and closing is None:
            return  # all of it sent: the transport closes by itself
        if (size and size >= left) or (size == 0 and left == 0) or rounds >= CLOSE_ROUNDS:
            self._drop()
            return
        asyncio.get_running_loop().call_later(
            CLOSE_TIMEOUT_S, self._watch, closing, size, rounds + 1
        )

    def _drop(self) -> None:
        """Abort the connection: what it had not read is discarded (a close keeps it, and
        the connection, until the peer reads it)."""
        transport = self.transport
        if transport is not None:
            transport.abort()

    def ping(self) -> None:
        """The pod's heartbeat: a ping, written as it is (wire.py), without a task."""
        transport = self.transport
        if transport is not None and not self.ws.closed and not transport.is_closing():
            transport.write(PING)

    def abort(self) -> None:
        """The pod's heartbeat: the ping went unanswered, the client is gone. Drop the
        connection as aiohttp's own heartbeat does: no close frame, close code 1006."""
        # Whether or not aiohttp closed the socket already (it does after the client's
        # EOF or a protocol error, and then drains for ever): not close(), which keeps
        # the connection until the client reads what is buffered.
        self._drop()

    # Inbound ----------------------------------------------------------------
    @classmethod
    async def live(cls, request: web.Request, handshake: Handler, hub: Hub) -> web.StreamResponse:
        """A socket's whole life: its handshake, then its frames until it closes.

        ``handshake`` is the route's handler inside the services' middlewares
        (services/common/app.py, ``serve_sockets``): it answers 101, or refuses
        the upgrade with an HTTP answer that is returned as it is. Once it has
        returned, the middlewares are done with the request; the socket is
        served here, in one coroutine frame (the frame loop is inlined, not a
        method of its own): what every idle socket holds (docs/BENCHMARKS.md,
        "Idle connections").
        """
        ws = await handshake(request)
        if not isinstance(ws, web.WebSocketResponse) or not ws.prepared:
            return ws
        opened = time.monotonic()
        # With its transport, frames that wait together go out in one write (wire.py).
        conn = cls(ws, hub, request.transport)
        # The pods sit behind the load balancer, whose X-Forwarded-For hop is the client.
        # Interned: the sockets from one address share one string (the key they are
        # counted under), not a copy each held by their frame.
        address = sys.intern(client_ip(request, trust_forwarded_for=True))
        try:
            hub.open_address(address)
        except ApiError as err:
            conn.error(err)
            await conn.close(f.CLOSE_TOO_MANY, err.code.value)
            hub.count_disconnect(ws.close_code, time.monotonic() - opened)
            return ws
        hub.heartbeat.add(conn)
        try:
            if await conn._authenticate():
                try:
                    # ``receive()``, not ``async for``: no ``__anext__`` coroutine held
                    # by every idle socket while it waits.
                    while True:
                        msg = await ws.receive()
                        conn.heard = time.monotonic()
                        if conn._closing:
                            # Closed from outside meanwhile (a revocation, a block, an
                            # expiry): nothing more is handled, a send least of all.
                            break
                        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                            if msg.type in _ENDS:
                                break
                            if msg.type is WSMsgType.PING:  # aiohttp's autoping is off
                                with contextlib.suppress(ConnectionError):  # closing
                                    await ws.pong(msg.data)
                            continue
                        request_id_var.set(new_request_id())
                        frame = conn._read(msg)
                        if frame is None:
                            continue
                        hub.count_in(str(type(frame).__struct_config__.tag))
                        conn.busy = True
                        try:
                            await conn._handle(frame)
                        except ApiError as err:
                            conn.error(err, frame.id)
                        finally:
                            conn.busy = False
                        if conn._closing:
                            break
                finally:
                    await hub.unregister(conn)
        except (RedisError, OSError) as exc:
            # Redis went away under this socket: the client reconnects and resyncs.
            log.warning("closing a socket after a redis error", extra={"error": repr(exc)})
            conn.error(ApiError(ErrorCode.UNAVAILABLE, "Temporarily unavailable; reconnect."))
            await conn.close(f.CLOSE_TRY_AGAIN, ErrorCode.UNAVAILABLE.value)
        except Exception:
            # Past the handshake the error middleware no longer sees the socket.
            log.exception("unhandled error", extra={"path": request.path})
            await conn.close(WSCloseCode.INTERNAL_ERROR, ErrorCode.INTERNAL.value, flush=False)
        finally:
            hub.count_disconnect(ws.close_code, time.monotonic() - opened)
            await conn._end(address)
        return ws

    async def _end(self, address: str) -> None:
        """What a socket leaves on its pod, dropped once it is done."""
        self.hub.heartbeat.discard(self)
        self.hub.close_address(address)
        if self.expires_at:
            self.hub.untrack_expiry(self)
        if self._ack_task is not None and not self._ack_task.done():
            # Let the last ack land: the client may not come back to repeat it.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._ack_task), 5.0)
        for task in list(self._pending or ()):
            task.cancel()
        self._closing = True  # nothing more is queued: the writer (if any) ends
        writer = self._writer
        if writer is not None and not isinstance(writer, asyncio.Task):  # the callback
            writer.cancel()
            self._flush()
        elif writer is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(writer, 2.0)
        transport = self.transport
        if transport is not None and transport.get_write_buffer_size():
            # Frames still buffered for a socket that ended (aiohttp may have closed it
            # itself, after the client's EOF or a protocol error, without a time limit):
            # dropped if the client stops taking them.
            self.watch_close(None)

    def _read(self, msg: WSMessage) -> f.ClientFrames | None:
        """Parse one WebSocket message; None (after an error frame) when it is unusable."""
        if msg.type == WSMsgType.BINARY:
            self.error(ApiError(ErrorCode.BAD_REQUEST, "Send JSON text frames."))
            return None
        data: str = msg.data
        if len(data) > self.limits.max_frame_bytes:
            self.error(
                ApiError(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"Frames are limited to {self.limits.max_frame_bytes} bytes.",
                ),
                f.frame_id(data),
            )
            return None
        try:
            return f.decode_client_frame(data)
        except f.FrameError as exc:
            self.error(ApiError.from_frame_error(exc), f.frame_id(data))
            return None

    async def _receive(self) -> WSMessage:
        """The next message that is not a ping or a pong (pings are answered here)."""
        while True:
            msg = await self.ws.receive()
            self.heard = time.monotonic()
            if msg.type is WSMsgType.PING:
                with contextlib.suppress(ConnectionError):  # closing: the next receive says so
                    await self.ws.pong(msg.data)
            elif msg.type is not WSMsgType.PONG:
                return msg

    async def _authenticate(self) -> bool:
        try:
            msg = await asyncio.wait_for(self._receive(), self.limits.auth_timeout_s)
        except TimeoutError:
            self.error(ApiError(ErrorCode.AUTH_TIMEOUT, "Authenticate within the time limit."))
            await self.close(f.CLOSE_AUTH_TIMEOUT, ErrorCode.AUTH_TIMEOUT.value)
            return False
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            return False
        # The `auth` frame's own request id, like every frame's; not kept past it: an idle
        # socket's context holds its user id only (docs/BENCHMARKS.md, "Idle connections").
        rid = request_id_var.set(new_request_id())
        try:
            return await self._authenticate_with(msg)
        finally:
            request_id_var.reset(rid)

    async def _authenticate_with(self, msg: WSMessage) -> bool:
        frame = self._read(msg)
        if frame is None:
            await self.close(f.CLOSE_AUTH_FAILED, ErrorCode.AUTH_REQUIRED.value)
            return False
        try:
            if not isinstance(frame, f.Auth):
                raise ApiError(ErrorCode.AUTH_REQUIRED, "The first frame must be `auth`.")
            checked = self.hub.revocations
            claims = await self.hub.verify(frame.token)
            if claims.did is None:
                raise ApiError(
                    ErrorCode.DEVICE_REQUIRED,
                    "This session is not bound to a device: log in with a device id.",
                )
        except ApiError as err:
            self.error(err, getattr(frame, "id", None))
            await self.close(_auth_close(err), err.code.value)
            return False
        self.user_id, self.sid = claims.sub, claims.sid
        self._token_head, self._token_body = packed.pack(frame.token)
        self.device_id = claims.did
        self.expires_at = float(claims.exp)
        self.hub.track_expiry(self)
        user_id_var.set(claims.sub)  # every line about this socket carries it
        # Presence is recorded before `ready`: once a client is ready, it is reachable.
        try:
            await self.hub.register(self, frame.token, checked)
        except ApiError as err:
            self.user_id = None  # not registered: nothing to unregister
            self.error(err, frame.id)
            await self.close(_auth_close(err), err.code.value)
            return False
        if self.hub.draining:
            # SIGTERM came while this socket authenticated: the drain's list of sockets
            # missed it. Sent on at once, as the drain does, not left to be cut off.
            await self.hub.unregister(self)
            self.user_id = None
            self.push(f.Reconnect(reason=ErrorCode.SERVER_SHUTTING_DOWN.value))
            await self.close(f.CLOSE_GOING_AWAY, ErrorCode.SERVER_SHUTTING_DOWN.value)
            return False
        self.push(self.hub.ready_frame(claims.sub, claims.sid, frame.id, limits=True))
        return True

    async def _handle(self, frame: f.ClientFrames) -> None:
        if isinstance(frame, f.Send | f.RoomSend):
            await self._send(frame)
        elif isinstance(frame, f.Ack):
            self._ack(frame)
        elif isinstance(frame, f.Sync):
            await self._sync(frame)
        elif isinstance(frame, f.Ping):
            self.push(f.Pong(id=frame.id))
        elif isinstance(frame, f.Typing):
            assert self.user_id is not None and self.device_id is not None
            try:
                await self.hub.typing(self.user_id, self.device_id, self._token(), frame)
            except ApiError as err:
                # Refused (too many, a room the user may not see): a violation, as a
                # refused send is, so a flood of them closes the socket (4009).
                flood = err.code in _TYPING_VIOLATIONS and not isinstance(err, TypingTooSoon)
                if flood and await self._violated(frame.id):
                    return
                raise
        elif isinstance(frame, f.Auth):
            # Re-authentication with a fresh token for the same user keeps the socket.
            claims = await self.hub.verify(frame.token)
            if claims.sub != self.user_id or claims.did != self.device_id:
                raise ApiError(ErrorCode.FORBIDDEN, "A socket belongs to one user's device.")
            self.sid = claims.sid
            self._token_head, self._token_body = packed.pack(frame.token)
            # The socket's calls use this token from now on: it lives as long as this
            # one, sooner too (an earlier expiry kept the later deadline, and calls
            # were made with an expired token; the session of that token may end).
            was, self.expires_at = self.expires_at, float(claims.exp)
            self.hub.track_expiry(self, was)
            self.push(self.hub.ready_frame(claims.sub, claims.sid, frame.id, limits=False))

    def expired(self) -> None:
        """The hub's call at ``expires_at``: close the socket unless an `auth` renewed it.

        A socket must not outlive the token that opened it (a stolen token
        would otherwise keep a socket for as long as it stays open): at
        ``exp`` the client gets ``reauth_required`` and close 4005, and
        reconnects with a fresh token. Clients renew in place (``auth`` again)
        before that, which moves ``expires_at`` and the hub's deadline with it.
        """
        if self._closing:
            return
        if self.expires_at - time.time() > 0:
            self.hub.track_expiry(self)  # renewed meanwhile
            return
        expired = "The access token expired: reconnect with a fresh one (or renew it in place)."
        self.error(ApiError(ErrorCode.REAUTH_REQUIRED, expired))
        self.close_soon(f.CLOSE_REAUTH, ErrorCode.REAUTH_REQUIRED.value)

    @property
    def token_head(self) -> str | None:
        """The start of this socket's token (its header; all of it if it did not pack):
        enough to read which key signed it."""
        return self._token_head

    def _token(self) -> str:
        """The access token this socket last authenticated with, for a call made for it."""
        assert self._token_head is not None
        return packed.unpack(self._token_head, self._token_body)

    async def _send(self, frame: f.Send | f.RoomSend) -> None:
        assert self.user_id is not None
        if not self.hub.bucket(self.user_id).take():
            if await self._violated(frame.id):
                return
            raise ApiError(ErrorCode.RATE_LIMITED, "Too many messages; slow down.")
        assert self.user_id is not None and self.sid is not None and self.device_id is not None
        await self._take_send_slot()
        # Checked off the frame loop, produced in the order the frames came: a send to a
        # recipient not seen yet asks the auth service and the key directory, and a
        # room's key distribution is a thousand of those (loadtest/bench_web_room.py);
        # one at a time they took ~14 ms each.
        ahead, self._ahead = self._ahead, asyncio.get_running_loop().create_future()
        self._spawn(self._submit(frame, self._token(), ahead, self._ahead))

    async def _violated(self, frame_id: str | None) -> bool:
        """Count a refused frame; True once the socket is closed for flooding (4x the
        burst, at most 400: a large burst, a room's key distribution, does not also
        let a flood run longer before the socket closes). Counted since the last quiet
        spell: ``VIOLATIONS_FORGOTTEN_S`` without one forgets those before (a socket
        open for days that hit the limit now and then was closed as a flood once
        they added up)."""
        now = violation_clock()
        if now - self._violated_at > VIOLATIONS_FORGOTTEN_S:
            self.violations = 0
        self._violated_at = now
        self.violations += 1
        if self.violations <= min(4 * self.limits.send_burst, FLOOD_VIOLATIONS):
            return False
        self.error(ApiError(ErrorCode.RATE_LIMITED, "Flooding; closing."), frame_id)
        await self.close(f.CLOSE_FLOOD, ErrorCode.RATE_LIMITED.value)
        return True

    async def _submit(
        self, frame: f.Send | f.RoomSend, token: str,
        ahead: asyncio.Future[None] | None, mine: asyncio.Future[None],
    ) -> None:  # fmt: skip
        """Check a send, wait for the send before it to be produced (or refused), then
        produce it and answer ``accepted`` once the broker has it, or the error."""
        assert self.user_id is not None and self.sid is not None and self.device_id is not None
        args = (self.user_id, self.device_id, self.sid, token)
        try:
            if isinstance(frame, f.RoomSend):
                # After the one before: a room's messages come in runs, and the first
                # reads the room for the rest (the gate, docs/rooms.md).
                if ahead is not None and not ahead.done():
                    await ahead
                room = await self.hub.prepare_room(*args, frame)
                server_id, conversation, acks = await self.hub.produce_room(room)
            else:
                try:
                    envs = await self.hub.prepare_send(*args, frame)
                finally:
                    if ahead is not None and not ahead.done():
                        await ahead  # the records keep the frames' order
                server_id, conversation, acks = await self.hub.produce(envs)
        except ApiError as err:
            self._free_send_slot()
            self.error(err, frame.id)
            return
        except BaseException:
            self._free_send_slot()
            raise
        finally:
            if not mine.done():
                mine.set_result(None)
            if self._ahead is mine:
                self._ahead = None  # an idle socket holds no future
        await self._accepted(acks, frame.id, server_id, conversation)

    async def _take_send_slot(self) -> None:
        """Wait until fewer than ``MAX_IN_FLIGHT_SENDS`` sends wait for the broker.

        A counter and, only while the frame loop waits, a future: what an
        ``asyncio.Semaphore`` would do for this one waiter, without one per socket.
        """
        while self._sending >= MAX_IN_FLIGHT_SENDS:
            self._slot_free = asyncio.get_running_loop().create_future()
            await self._slot_free
        self._sending += 1

    def _free_send_slot(self) -> None:
        self._sending -= 1
        waiter, self._slot_free = self._slot_free, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _accepted(
        self, acks: list[asyncio.Future[object]], client_id: str, server_id: str,
        conversation: str,
    ) -> None:  # fmt: skip
        try:
            await asyncio.gather(*acks)
        except KafkaError as exc:
            log.warning("message not accepted", extra={"message_id": server_id, "error": repr(exc)})
            self.error(ApiError(ErrorCode.UNAVAILABLE, "The message was not accepted."), client_id)
            return
        finally:
            self._free_send_slot()
        self.push(f.Accepted(id=client_id, server_id=server_id, conversation=conversation))

    def _ack(self, frame: f.Ack) -> None:
        """Acks are cumulative: keep the highest, post it off the frame loop (one in flight).

        A slow inbox never holds up this socket's sends; a later `sync` waits
        for the acks before it, so it never returns what was acknowledged.
        """
        if frame.seq <= self._ack_target:
            floor = self._ack_floor
            if frame.seq > self._ack_posted and (floor is None or frame.seq > floor[0]):
                self._ack_floor = (frame.seq, frame.id)
            return
        self._ack_target = frame.seq
        self._ack_id = frame.id
        if self._ack_task is None or self._ack_task.done():
            self._ack_task = asyncio.create_task(self._post_acks())

    async def _post_acks(self) -> None:
        while self._ack_posted < self._ack_target:
            target, answers = self._ack_target, self._ack_id
            try:
                assert self.user_id is not None and self.device_id is not None
                await self.hub.ack(self._token(), self.user_id, self.device_id, target)
            except ApiError as err:
                # Refused (e.g. seq_not_issued): nothing changed; a later ack starts
                # again from what was really acknowledged. An ack that came meanwhile
                # (a higher target) is still posted: it used to be dropped unanswered.
                self.error(err, answers)
                if self._ack_target == target:
                    # One below it that came meanwhile (a valid ack behind a bogus one)
                    # is posted now; none: nothing more to post.
                    floor, self._ack_floor = self._ack_floor, None
                    if floor is not None and floor[0] > self._ack_posted:
                        self._ack_target, self._ack_id = floor
                        continue
                    self._ack_target = self._ack_posted
                    return
                continue
            self._ack_posted = max(self._ack_posted, target)
        self._ack_floor = None

    async def _sync(self, frame: f.Sync) -> None:
        if self._ack_task is not None:
            await asyncio.shield(self._ack_task)
        page = await self.hub.sync(self._token(), frame.after, frame.limit)
        last, more = frame.after, page.more
        # A page goes out whole unless what already waits for the socket (frames pushed
        # meanwhile, a page it has not read) would take it past half of what the socket
        # may hold: then it ends early, `more` set, and the client asks again after
        # `last` once it has read it (delivery's pages are smaller: sync_page_bytes).
        room = self.limits.outbound_queue_bytes // 2 - self._waiting()
        sent = 0
        for item in page.messages:
            data = f.encode(item)
            room -= len(data)
            if sent and room < 0:
                more = True
                break
            if not self.push_encoded(data):
                return
            self.hub.count_out(str(type(item).__struct_config__.tag))
            sent += 1
            last = item.seq
        self.push(f.Synced(id=frame.id, last=last, more=more))

    def _waiting(self) -> int:
        """Bytes pushed to this socket that its client has not read yet (as far as the
        pod can tell: queued here, or in the transport's buffer)."""
        transport = self.transport
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        return self.queued_bytes + buffered


def _auth_close(err: ApiError) -> int:
    """The close code of an ``auth`` refused: 4001 (clients refresh their token and come
    back at once) only for the token itself; ``service_unavailable`` (the JWKS cannot be
    read, a user's revocations keep coming) is 1013, try again later with a back-off,
    and too many sockets 4010."""
    if err.code is ErrorCode.TOO_MANY_CONNECTIONS:
        return f.CLOSE_TOO_MANY
    if err.code is ErrorCode.UNAVAILABLE:
        return f.CLOSE_TRY_AGAIN
    return f.CLOSE_AUTH_FAILED
