"""One simulated user: sends, resends, receives, acknowledges, syncs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import struct
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
from parley_contract import frames as f

from loadtest.common import HEADER, HEADER_CHARS, b64url

if TYPE_CHECKING:
    from loadtest.soak.run import Soak

DEVICE = 1


@dataclass
class Account:
    username: str
    user_id: str
    token: str
    refresh_token: str
    expires_in: int
    got_at: float = field(default_factory=time.monotonic)


class TokenBucket:
    """The client's copy of the server's per-socket send limit."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, time.monotonic()

    async def take(self) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return
            await asyncio.sleep((1.0 - self.tokens) / self.rate)


class Client:
    """One user (device 1): sends to its partner, receives from it, resends, acks, syncs."""

    def __init__(self, soak: Soak, idx: int, account: Account) -> None:
        self.soak = soak
        self.idx = idx
        self.account = account
        self.peer: Client | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()  # connected, synced, backlog sent
        self.bucket = TokenBucket(50.0, 100.0)
        self.n = 0
        self.frames: dict[int, str] = {}  # number -> the encoded `send` (unaccepted or recent)
        self.unaccepted: dict[int, float] = {}  # number -> when last sent (0: not yet)
        self.recent: deque[int] = deque()  # accepted numbers, newest last
        self.max_seq = 0
        self.acked = 0
        self.syncing = False
        self.final = False
        self.sync_no = 0
        self.waiting: dict[str, asyncio.Future[f.Synced]] = {}
        self.force_resend = False
        self.send_lock = asyncio.Lock()
        self.task: asyncio.Task[None] | None = None
        self.stopping = False
        self.socket_token = ""  # the token the open socket was (re)authenticated with
        self.refresh_lock = asyncio.Lock()
        self.errors: Counter[str] = Counter()

    # Connection -----------------------------------------------------------------
    async def run(self) -> None:
        """Stay connected: (re)connect with back-off, sync, send the backlog, wait."""
        soak = self.soak
        delay = 0.2
        first = True
        while not self.stopping:
            try:
                await self._connect()
            except Exception as exc:  # keep trying, whatever the stack does
                soak.count("connect_failed", type(exc).__name__)
                await asyncio.sleep(delay * (0.5 + soak.rng.random()))
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.2
            if not first:
                soak.reconnects += 1
            first = False
            try:
                await self.sync()
                await self._send_backlog()
                assert self.reader is not None
                await self.reader
            except Exception as exc:  # the socket or the stack failed: reconnect
                soak.count("session_failed", type(exc).__name__)
            finally:
                self.ready.clear()
                await self._drop()
            if not self.stopping:
                soak.disconnects += 1

    async def _connect(self) -> None:
        soak = self.soak
        assert soak.session is not None
        ws = await soak.session.ws_connect(
            soak.stack.ws_url, autoping=True, heartbeat=20.0, max_msg_size=0, compress=0,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
        )  # fmt: skip
        token = self.account.token
        try:
            await ws.send_str(f.encode(f.Auth(token=token)).decode())
            msg = await ws.receive(timeout=15)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"no ready: {msg.type!r} {ws.close_code}")
            frame = f.decode_server_frame(msg.data)
            if isinstance(frame, f.Error):
                if frame.code in ("token_expired", "invalid_token"):
                    await soak.refresh(self, force=True)
                raise RuntimeError(f"auth refused: {frame.code}")
            if not isinstance(frame, f.Ready):
                raise RuntimeError(f"expected ready, got {frame!r}")
            if frame.limits is not None:
                self.bucket = TokenBucket(frame.limits.sends_per_s, frame.limits.send_burst)
        except BaseException:
            await ws.close()
            raise
        self.ws = ws
        self.socket_token = token
        self.reader = asyncio.create_task(self._read(ws))
        if self.account.token != token:
            # The token was refreshed while this socket was authenticating.
            soak.spawn(self.reauth())

    async def _drop(self) -> None:
        ws, self.ws = self.ws, None
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionResetError("socket closed"))
        self.waiting.clear()
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader
            self.reader = None

    async def force_reconnect(self) -> None:
        """Drop the socket on purpose; after reconnecting, resend recent accepted ids."""
        if self.ws is None or not self.ready.is_set():
            return
        self.force_resend = True
        self.soak.forced_reconnects += 1
        await self.ws.close()

    async def _send(self, text: str) -> None:
        ws = self.ws
        if ws is None or ws.closed:
            raise ConnectionResetError("not connected")
        await self.bucket.take()
        await ws.send_str(text)

    async def _send_backlog(self) -> None:
        """After (re)connecting: what was never accepted, in order; after a forced
        reconnect, also the most recent accepted messages, with the same ids."""
        again = []
        if self.force_resend:
            self.force_resend = False
            again = [n for n in self.recent if n not in self.unaccepted]
        async with self.send_lock:
            for n in again:
                await self._send(self.frames[n])
                self.soak.resent_accepted += 1
            todo = sorted(self.unaccepted)
            while todo:
                for n in todo:
                    if n not in self.unaccepted:
                        continue
                    if self.unaccepted[n]:
                        self.soak.resent_unaccepted += 1
                    await self._send(self.frames[n])
                    self.unaccepted[n] = time.monotonic()
                # What was composed meanwhile, then ready (no await in between).
                todo = sorted(n for n, t in self.unaccepted.items() if not t)
            self.ready.set()

    # Sending --------------------------------------------------------------------
    def compose(self) -> int:
        """A new message to the partner; sent now if the socket is up, else kept."""
        assert self.peer is not None
        soak = self.soak
        n = self.n = self.n + 1
        now = time.monotonic_ns()
        soak.ledger.composed[self.idx << 32 | n] = now
        body = b64url(HEADER.pack(0, 0, self.idx, n, now)) + soak.padding
        to = self.peer.account.user_id
        frame = f.Send(id=str(n), to=to, copies=[f.Copy(user=to, device=DEVICE, body=body)])
        self.frames[n] = f.encode(frame).decode()
        self.unaccepted[n] = 0.0
        return n

    async def send_new(self, n: int) -> None:
        if not self.ready.is_set():
            return  # sent with the backlog once the socket is back
        async with self.send_lock:
            if n in self.unaccepted and not self.unaccepted[n]:
                with contextlib.suppress(ConnectionResetError, RuntimeError, OSError):
                    await self._send(self.frames[n])
                    self.unaccepted[n] = time.monotonic()

    async def retry_overdue(self, after: float) -> None:
        """Send again (same id) what has waited ``after`` seconds for `accepted`."""
        if not self.ready.is_set():
            return
        now = time.monotonic()
        due = sorted(n for n, t in self.unaccepted.items() if not t or now - t >= after)
        if not due:
            return
        async with self.send_lock:
            for n in due:
                if n not in self.unaccepted:
                    continue
                again = bool(self.unaccepted[n])
                with contextlib.suppress(ConnectionResetError, RuntimeError, OSError):
                    await self._send(self.frames[n])
                    self.unaccepted[n] = time.monotonic()
                    self.soak.resent_unaccepted += again

    def _accepted(self, n: int) -> None:
        if self.unaccepted.pop(n, None) is None:
            return  # a resend of an accepted message: accepted again
        self.soak.ledger.accepted.setdefault(self.idx << 32 | n, time.monotonic_ns())
        self.recent.append(n)
        while len(self.recent) > self.soak.opts.resend_count:
            old = self.recent.popleft()
            if old not in self.unaccepted:
                self.frames.pop(old, None)

    # Receiving ------------------------------------------------------------------
    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        soak = self.soak
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            try:
                frame = f.decode_server_frame(msg.data)
            except f.FrameError:
                soak.count("bad_frame")
                continue
            if isinstance(frame, f.Message):
                self._message(frame)
            elif isinstance(frame, f.Accepted):
                if frame.id is not None and frame.id.isdigit():
                    self._accepted(int(frame.id))
            elif isinstance(frame, f.Synced):
                fut = self.waiting.pop(frame.id or "", None)
                if fut is not None and not fut.done():
                    fut.set_result(frame)
            elif isinstance(frame, f.Error):
                self._error(frame)
            elif isinstance(frame, f.Resync):
                soak.count("resync")
                soak.spawn(self._resync())
            elif isinstance(frame, f.Reconnect):
                soak.count("reconnect_asked")
                soak.spawn(ws.close())
            elif isinstance(frame, f.KeyChanged):
                self.max_seq = max(self.max_seq, frame.seq)
            elif isinstance(frame, f.Stored):
                soak.stored += 1
            elif isinstance(frame, f.Delivered):
                soak.delivered_receipts += 1

    def _message(self, frame: f.Message) -> None:
        soak = self.soak
        now = time.monotonic_ns()
        self.max_seq = max(self.max_seq, frame.seq)
        try:
            _, _, sender, n, _ = HEADER.unpack(b64decode(frame.body[:HEADER_CHARS]))
        except (ValueError, struct.error):
            soak.ledger.foreign += 1
            return
        peer = self.peer
        if peer is None or sender != peer.idx or frame.from_ != peer.account.user_id:
            soak.ledger.foreign += 1
            return
        soak.ledger.deliver(
            sender << 32 | n, frame.seq, frame.server_id, now,
            via_sync=self.syncing, final=self.final,
        )  # fmt: skip

    def _error(self, frame: f.Error) -> None:
        soak = self.soak
        soak.count("error", frame.code)
        self.errors[frame.code] += 1
        ident = frame.id or ""
        if frame.code in ("token_expired", "invalid_token"):
            # The socket's token ran out (an ack or a sync was refused): renew it.
            soak.spawn(self.renew())
        if ident.isdigit() and int(ident) in self.unaccepted:
            # Refused (e.g. service_unavailable while a process is down): sent
            # again with the same id about a second from now.
            self.unaccepted[int(ident)] = time.monotonic() - soak.opts.retry_after + 1.0
        elif ident in self.waiting:
            fut = self.waiting.pop(ident)
            if not fut.done():
                fut.set_exception(RuntimeError(f"sync refused: {frame.code}"))

    async def sync(self) -> None:
        """Page through everything after the last acknowledged seq (no acks meanwhile)."""
        self.syncing = True
        try:
            after = self.acked
            while True:
                self.sync_no += 1
                ident = f"s{self.sync_no}"
                fut: asyncio.Future[f.Synced] = asyncio.get_running_loop().create_future()
                self.waiting[ident] = fut
                await self._send_control(f.Sync(after=after, limit=200, id=ident))
                done = await asyncio.wait_for(fut, 30)
                after = max(after, done.last)
                self.max_seq = max(self.max_seq, done.last)
                if not done.more:
                    return
        finally:
            self.syncing = False

    async def _resync(self) -> None:
        if self.syncing:
            return
        try:
            await self.sync()
        except (OSError, TimeoutError, RuntimeError, aiohttp.ClientError):
            if self.ws is not None:
                await self.ws.close()  # reconnect, which syncs

    async def _send_control(self, frame: f.Sync | f.Ack | f.Auth) -> None:
        ws = self.ws
        if ws is None or ws.closed:
            raise ConnectionResetError("not connected")
        await ws.send_str(f.encode(frame).decode())

    async def ack(self) -> None:
        if self.syncing or not self.ready.is_set() or self.max_seq <= self.acked:
            return
        seq = self.max_seq
        with contextlib.suppress(ConnectionResetError, RuntimeError, OSError):
            await self._send_control(f.Ack(seq=seq))
            self.acked = seq
            self.soak.acks += 1

    async def reauth(self) -> None:
        """A fresh token on the open socket (docs/protocol.md, `auth`)."""
        token = self.account.token
        with contextlib.suppress(ConnectionResetError, RuntimeError, OSError):
            await self._send_control(f.Auth(token=token))
            self.socket_token = token

    async def renew(self) -> None:
        """The socket's token was refused: use the current one, or refresh it."""
        acc = self.account
        if self.socket_token != acc.token and time.monotonic() - acc.got_at < acc.expires_in * 0.8:
            await self.reauth()
        else:
            await self.soak.refresh(self, force=True)


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
