"""The WebSocket to the gateway: authenticate, reconnect with backoff, keep the token fresh.

:class:`Connection` owns one socket at a time and hands every frame it reads
to a handler, in order.  After each (re)connection it calls ``on_ready``
(the client syncs its inbox and resends what the server did not accept),
as docs/protocol.md, "Reconnecting", asks:

- backoff starts at 0.5 s, doubles to at most 30 s, with full jitter;
- a ``reconnect`` frame (the pod drains) reconnects at once;
- close 4001 (token refused) refreshes the token before trying again;
- close 4005 (``reauth_required``: the token the socket authenticated with
  expired before it was renewed in place) refreshes the token and
  reconnects at once;
- 4003 (revoked, blocked) and a refused refresh (the session ended, the
  account is blocked: :class:`~parley.errors.NotLoggedIn`) stop for good:
  ``failed`` says why. A refresh that got no answer, or one that says "later"
  (429, 5xx: :func:`for_now`), is retried after the backoff like a socket that
  did not open: an outage longer than the access token's life ends in a
  reconnection, not in ``failed``;
- a frame this side could not process for a reason of its own (the local
  store, the disk, a server it asked: :func:`transient`), or an ``on_ready``
  that failed (the inbox's sync), drops the socket (close 4000) before
  another frame is handled, and it reconnects after the backoff: the next
  sync reads again from the last item processed, so nothing is acknowledged
  past an item that was not (:meth:`Connection.drop`). A frame that fails for
  what it holds is logged and passed: read again, it would fail again, and
  hold up everything after it (a sender could block an inbox for good).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import TypeAlias

import aiohttp
import msgspec
from parley_contract import frames as f

from parley.account import TOKEN_MARGIN_S, jwt_exp
from parley.errors import ApiError, ParleyError, ServerUnavailable, StoreError

__all__ = ["Connection", "ConnectionClosed", "for_now", "transient"]

log = logging.getLogger(__name__)

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
# The longest a "later" answer's Retry-After is waited for before the next attempt.
RETRY_AFTER_MAX = 300.0
FATAL_CODES = {"token_revoked", "account_blocked"}

TokenProvider = Callable[[bool], Awaitable[str]]
Answer: TypeAlias = f.Synced | f.Pong | f.Ready | f.Error


class ConnectionClosed(ParleyError):
    """The socket is not open (it reconnects by itself unless it failed for good)."""


def transient(exc: BaseException) -> bool:
    """A failure of this side that may not happen again (the local store, the disk, a
    server that did not answer): the frame is read again after a reconnect. Anything
    else is in the frame itself, and would fail every time."""
    return isinstance(exc, OSError | TimeoutError | sqlite3.Error | StoreError | ServerUnavailable)


def for_now(exc: BaseException) -> bool:
    """A failure that may not happen again: no answer, or one that says "later"."""
    if isinstance(exc, ApiError):
        return exc.status == 429 or exc.status >= 500
    return transient(exc)


class Connection:
    def __init__(
        self,
        url: str,
        token: TokenProvider,
        handler: Callable[[f.ServerFrames], Awaitable[None]],
        *,
        on_ready: Callable[[f.Ready], Awaitable[None]] | None = None,
        on_state: Callable[[str, str], None] | None = None,
        backoff_start: float = BACKOFF_START,
        backoff_max: float = BACKOFF_MAX,
        reauth_every: float = 240.0,
    ) -> None:
        self.url = url
        self._token = token
        self._handler = handler
        self._on_ready = on_ready
        self._on_state = on_state
        self.backoff_start = backoff_start
        self.backoff_max = backoff_max
        self.reauth_every = reauth_every
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._first = asyncio.get_running_loop().create_future()
        self._waiters: dict[str, asyncio.Future[Answer]] = {}
        self._ids = itertools.count(1)
        self._closing = False
        self._dropped = False  # this side closed the current socket (see drop)
        self.failed: ParleyError | None = None
        """Why it stopped for good (the session ended, the account is blocked); never a
        failure that may pass (:func:`for_now`): it goes on retrying those."""
        self.last_error: str = ""
        """Why the last attempt to connect failed (empty once connected)."""
        self.ready_frame: f.Ready | None = None
        self.connects = 0
        self.reauths = 0

    # -- lifecycle ------------------------------------------------------------
    async def start(self, timeout: float = 20.0) -> f.Ready:
        """Connect (retrying with backoff) and return the first ``ready`` frame.

        Raises the reason if the first connection fails for good, or
        :class:`ConnectionClosed` if it did not succeed within ``timeout``.
        """
        self._http = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._run(), name="parley-connection")
        try:
            return await asyncio.wait_for(asyncio.shield(self._first), timeout)
        except TimeoutError:
            why = f": {self.last_error}" if self.last_error else " (is the server up?)"
            raise ConnectionClosed(
                f"Could not connect to {self.url} within {timeout:.0f} s{why}"
            ) from None

    @property
    def connected(self) -> bool:
        return self._ready.is_set() and self._ws is not None and not self._ws.closed

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._http is not None:
            await self._http.close()
        if not self._first.done():
            self._first.set_exception(ConnectionClosed("closed"))
            self._first.exception()

    async def drop(self, reason: str) -> None:
        """Close the current socket because this side failed to process what it
        received (a frame, the inbox's sync): it reconnects after the backoff and
        the next connection syncs again from the last item processed."""
        ws = self._ws
        if ws is None or ws.closed:
            return
        log.warning("dropping the connection: %s", reason)
        self._dropped = True
        self._ready.clear()  # no frame is sent on it any more (acks above all)
        with contextlib.suppress(Exception):
            await ws.close(code=4000, message=b"client failure")

    # -- sending ----------------------------------------------------------------
    async def send(self, frame: f.ClientFrames) -> None:
        ws = self._ws
        if ws is None or ws.closed or not self._ready.is_set():
            raise ConnectionClosed("not connected")
        try:
            await ws.send_str(f.encode(frame).decode())
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            raise ConnectionClosed(f"the connection dropped ({exc})") from exc

    async def request(self, frame: f.Sync | f.Ping | f.Auth, timeout: float = 20.0) -> Answer:
        """Send a frame with a fresh ``id`` and wait for the answer that carries it
        (``synced``, ``pong``, ``ready`` or ``error``)."""
        frame_id = frame.id or f"c{next(self._ids)}"
        frame = msgspec.structs.replace(frame, id=frame_id)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[frame_id] = waiter
        try:
            await self.send(frame)
            return await asyncio.wait_for(waiter, timeout)
        finally:
            self._waiters.pop(frame_id, None)

    # -- the loop ---------------------------------------------------------------
    def _state(self, state: str, detail: str = "") -> None:
        if self._on_state is not None:
            self._on_state(state, detail)

    async def _run(self) -> None:
        delay = self.backoff_start
        refresh = False
        while not self._closing:
            outcome = "error"
            later = 0.0  # a 429's Retry-After
            try:
                outcome = await self._session(refresh)
                refresh = False
                if outcome == "ok":
                    delay = self.backoff_start
            except ParleyError as exc:
                if not for_now(exc):
                    self._fail(exc)
                    return
                # The token's refresh got no answer (the network is down) or a "later"
                # (429, 5xx): as a socket that did not open, try again after the backoff
                # (``refresh`` stays as it was: a refused token is refreshed then).
                log.debug("connection failed: %r", exc)
                self.last_error = str(exc)
                later = exc.retry_after if isinstance(exc, ApiError) else 0.0
                self._state("disconnected", str(exc))
            except (aiohttp.ClientError, OSError, TimeoutError, sqlite3.Error) as exc:
                log.debug("connection failed: %r", exc)
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._state("disconnected", self.last_error)
            if self._closing:
                return
            if outcome in ("reauth", "expired"):
                refresh = True
            if outcome in ("reconnect", "expired"):
                continue  # the pod drains: another one is ready now
            # A Retry-After is honoured (up to RETRY_AFTER_MAX: a WAF's 300 s was cut to
            # 30 and its window hit again), with the backoff's jitter on top (clients
            # behind one address told the same time came back at the same instant).
            wait = min(later, RETRY_AFTER_MAX) + random.uniform(0, delay)
            self._state("reconnecting", f"in {wait:.1f} s")
            await asyncio.sleep(wait)
            delay = min(self.backoff_max, delay * 2)

    def _fail(self, exc: ParleyError) -> None:
        self.failed = exc
        self._state("failed", str(exc))
        if not self._first.done():
            self._first.set_exception(exc)

    async def _session(self, refresh: bool) -> str:
        """One socket from connect to close; returns why it ended."""
        assert self._http is not None
        token = await self._token(refresh)
        async with self._http.ws_connect(self.url, heartbeat=30, max_msg_size=0) as ws:
            await ws.send_str(f.encode(f.Auth(token=token)).decode())
            msg = await ws.receive(timeout=20)
            if msg.type != aiohttp.WSMsgType.TEXT:
                return "reauth" if ws.close_code == 4001 else "error"
            try:
                ready = f.decode_server_frame(msg.data)
            except f.FrameError:
                return "error"
            if isinstance(ready, f.Error):
                if ready.code in FATAL_CODES:
                    raise ParleyError(_closing_message(ready.code))
                return "reauth" if ready.code in ("token_expired", "invalid_token") else "error"
            if not isinstance(ready, f.Ready):
                return "error"
            self._ws = ws
            self._dropped = False
            self.last_error = ""
            self.ready_frame = ready
            self.connects += 1
            self._ready.set()
            self._state("connected", ready.gateway)
            if not self._first.done():
                self._first.set_result(ready)
            reauth = asyncio.create_task(self._reauth_loop(ws, token))
            after = asyncio.create_task(self._after_ready(ready))
            try:
                return await self._read(ws)
            finally:
                self._ready.clear()
                self._ws = None
                reauth.cancel()
                after.cancel()
                for waiter in self._waiters.values():
                    if not waiter.done():
                        waiter.set_exception(ConnectionClosed("the connection dropped"))
                self._state("disconnected", f"closed {ws.close_code}")

    async def _after_ready(self, ready: f.Ready) -> None:
        if self._on_ready is None:
            return
        try:
            await self._on_ready(ready)
        except ConnectionClosed:
            pass  # the socket dropped while syncing: the next connection syncs again
        except Exception as exc:
            log.exception("after-connect work failed")
            await self.drop(f"after-connect work failed: {exc!r}")

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            try:
                frame = f.decode_server_frame(msg.data)
            except f.FrameError as exc:
                # A newer server's frame, or garbage: skip it, keep the socket.
                log.debug("skipping a frame: %s", exc.message)
                continue
            if isinstance(frame, f.Reconnect):
                await ws.close()
                return "reconnect"
            answers = getattr(frame, "id", None)
            waiter = self._waiters.get(answers) if isinstance(answers, str) else None
            if (
                waiter is not None
                and not waiter.done()
                and isinstance(frame, f.Synced | f.Pong | f.Ready)
            ):
                waiter.set_result(frame)
                continue
            if isinstance(frame, f.Error) and frame.code in FATAL_CODES:
                raise ParleyError(_closing_message(frame.code))
            if waiter is not None and not waiter.done() and isinstance(frame, f.Error):
                waiter.set_result(frame)
            if self._dropped:
                break  # nothing after a frame that failed is handled
            try:
                await self._handler(frame)
            except ConnectionClosed:
                pass
            except Exception as exc:
                log.exception("frame handler failed for %s", type(frame).__name__)
                if transient(exc):
                    await self.drop(f"a {type(frame).__name__} frame failed: {exc!r}")
                    break
                # What the frame holds makes it fail (a sender's malformed payload): it
                # would fail at every connect and hold up everything after it for good.
        if self._dropped:
            return "dropped"
        code = ws.close_code
        if code == 4003:
            raise ParleyError(_closing_message("token_revoked"))
        if code == 4001:
            return "reauth"
        if code == f.CLOSE_REAUTH:
            return "expired"
        if code in (f.CLOSE_FLOOD, f.CLOSE_TOO_MANY):
            return "throttled"  # the backoff keeps growing: at once would be the same again
        return "ok"

    async def _reauth_loop(self, ws: aiohttp.ClientWebSocketResponse, sent: str) -> None:
        """Send a fresh token before the current one expires (the gateway closes
        sockets whose token ran out)."""
        while not ws.closed:
            await asyncio.sleep(self.reauth_every)
            try:
                token = await self._token(False)
                exp = jwt_exp(token)
                if token == sent and 0 < exp <= time.time() + self.reauth_every + TOKEN_MARGIN_S:
                    # Valid now, but it would run out before the next renewal and the
                    # gateway close the socket (every ~15 minutes before 2026-12-08:
                    # a token with 2-4 minutes left was sent again as it was). Not when
                    # that call refreshed it already: a new token can live no longer.
                    token = await self._token(True)
                answer = await self.request(f.Auth(token=token), timeout=20)
                sent = token
            except (ConnectionClosed, TimeoutError):
                continue
            except ParleyError as exc:
                if not for_now(exc):
                    return  # the session ended: the gateway closes this socket, and
                    # the refresh on reconnect says so (``failed``)
                log.debug("renewing the token failed for now: %r", exc)
                continue  # the auth service is away: again at the next round
            if isinstance(answer, f.Ready):
                self.reauths += 1


def _closing_message(code: str) -> str:
    if code == "account_blocked":
        return "This account is blocked: the server closed the connection."
    return "Your session has ended (logged out or revoked): log in again."
