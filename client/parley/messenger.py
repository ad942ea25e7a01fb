"""The messaging part of the client: the socket, sending, receiving, receipts, history.

Frames are built and read only through the contract (``parley_contract``).
Every state change (a ratchet step and the history entry it produced, a
prekey consumed, the last sequence number processed) is one store
transaction, and state is read inside the transaction that changes it, so
two processes on the same store (the CLI's ``chat`` and ``send``) never
reuse a message key.

The outbox: a message is queued in the store before it is sent and leaves
the queue when the server answers ``accepted`` (the broker keeps it
durably), or fails for good; queued messages are sent again, with the same
id, after every (re)connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import msgspec
from parley_contract import frames as f

from parley.account import Account, StoreRef
from parley.api import Api
from parley.connection import Connection, ConnectionClosed
from parley.crypto import (
    CryptoError,
    IdentityChanged,
    PrekeyBundle,
    PublicIdentity,
    ReplayedMessage,
    Session,
    commitment_from_message,
    format_safety_number,
    safety_number,
)
from parley.crypto.encoding import b64decode, b64encode
from parley.errors import ApiError, NotLoggedIn, ParleyError, ServerUnavailable
from parley.events import (
    ConnectionEvent,
    DecryptFailed,
    ErrorEvent,
    Event,
    EventBus,
    KeyChanged,
    Message,
    Receipt,
)
from parley.keys import Keys
from parley.peers import PeerState
from parley.store import Transaction

log = logging.getLogger(__name__)

ACK_DELAY = 0.2
_STATUS_RANK = {"queued": 0, "accepted": 1, "stored": 2, "delivered": 3}

Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


@dataclass
class _Outgoing:
    accepted: asyncio.Future[str]
    stored: asyncio.Future[str]
    peer_id: str
    statuses: list[str] = field(default_factory=list)


class Messenger:
    def __init__(
        self,
        server: str,
        api: Api,
        store: StoreRef,
        account: Account,
        keys: Keys,
        events: EventBus,
        spawn: Spawn,
        *,
        backoff: tuple[float, float] = (0.5, 30.0),
        reauth_every: float = 240.0,
    ) -> None:
        self.server = server
        self.api = api
        self._store = store
        self.account = account
        self.keys = keys
        self.events = events
        self._spawn = spawn
        self.backoff = backoff
        self.reauth_every = reauth_every
        self.conn: Connection | None = None
        self._outgoing: dict[str, _Outgoing] = {}
        self._ack_task: asyncio.Task[Any] | None = None
        self._ack_pending = 0
        self._synced = asyncio.Event()
        self._names: dict[str, str] = {}

    # -- contacts -----------------------------------------------------------------------------
    async def resolve(self, username_or_id: str) -> tuple[str, str]:
        """(user id, username) of a contact, from the auth service."""
        await self.account.access_token()
        found = await self.api.user(username_or_id)
        self._names[found["user_id"]] = found["username"]
        return str(found["user_id"]), str(found["username"])

    async def _name_of(self, user_id: str) -> str:
        if user_id in self._names:
            return self._names[user_id]
        with contextlib.suppress(ParleyError):
            peer = self._store().read().peer(user_id)
            if peer and peer.get("username"):
                self._names[user_id] = peer["username"]
                return str(peer["username"])
            _, name = await self.resolve(user_id)
            return name
        return user_id[:8]

    def _peer(self, tx: Transaction, user_id: str) -> PeerState:
        raw = tx.peer(user_id)
        return PeerState(user_id) if raw is None else PeerState.from_json(raw)

    async def safety_number(self, username_or_id: str) -> tuple[str, str | None]:
        """(username, safety number of the identity we trust for them, or None if we
        never exchanged keys).  Compare it with theirs out of band."""
        peer_id, name = await self.resolve(username_or_id)
        device = self.keys.device()
        me = self.account.user_id
        if device is None or me is None:
            raise NotLoggedIn("This device has no keys yet: log in first.")
        state = self._peer(self._store().read(), peer_id)
        number = state.safety_number(device.identity, me)
        if number is None:
            # Not talked yet: show the number for the identity the directory has now.
            devices = await self.api.identities(peer_id)
            if devices:
                identity = PublicIdentity.from_json(devices[0]["identity"])
                number = format_safety_number(
                    safety_number(device.identity.signing_key, me, identity.signing_key, peer_id)
                )
        return name, number

    # -- history --------------------------------------------------------------------------------
    def history(self, peer_id: str, limit: int | None = None) -> list[dict[str, Any]]:
        return self._store().read().history(peer_id, limit)

    def conversations(self) -> list[dict[str, Any]]:
        """Every contact with its last message and unread count, newest first."""
        read = self._store().read()
        out = []
        for peer in read.peers():
            entries = read.history(peer["user_id"])
            seen = read.get(f"read:{self._ref(peer['user_id'])}") or 0
            unread = [e for e in entries if e.get("dir") == "in" and e.get("at", 0) > seen]
            out.append(
                {
                    "user_id": peer["user_id"],
                    "username": peer.get("username") or peer["user_id"][:8],
                    "last": entries[-1] if entries else None,
                    "unread": unread,
                }
            )
        out.sort(key=lambda c: c["last"]["at"] if c["last"] else 0, reverse=True)
        return out

    def _ref(self, peer_id: str) -> str:
        return self._store().ref("peer", peer_id)

    async def mark_read(self, peer_id: str) -> None:
        entries = self.history(peer_id, 1)
        if entries:
            async with self._store().transaction() as tx:
                tx.put(f"read:{self._ref(peer_id)}", entries[-1].get("at", 0))

    def outbox(self) -> list[dict[str, Any]]:
        return self._store().read().queued()

    # -- connection ------------------------------------------------------------------------------
    @property
    def ws_url(self) -> str:
        base = self.server.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        return base + "/ws"

    @property
    def connected(self) -> bool:
        return self.conn is not None and self.conn.connected

    async def connect(self, timeout: float = 20.0) -> None:
        """Open the WebSocket, fetch what waits in the inbox and resend unaccepted
        messages; keeps reconnecting (with backoff) until :meth:`disconnect`."""
        self.account.require()
        if self.conn is not None:
            return
        await self.keys.setup()  # keys present and fresh, prekeys topped up
        self._synced.clear()
        self.conn = Connection(
            self.ws_url,
            self.account.access_token,
            self._on_frame,
            on_ready=self._on_ready,
            on_state=lambda s, d: self.events.emit(ConnectionEvent(s, d)),
            backoff_start=self.backoff[0],
            backoff_max=self.backoff[1],
            reauth_every=self.reauth_every,
        )
        try:
            await self.conn.start(timeout)
        except BaseException:
            await self.conn.close()
            self.conn = None
            raise
        await asyncio.wait_for(self._synced.wait(), timeout)

    async def disconnect(self) -> None:
        if self.conn is not None:
            await self.conn.close()
            self.conn = None

    async def _on_ready(self, ready: f.Ready) -> None:
        await self.sync()
        await self._resend()
        self._synced.set()

    async def sync(self) -> int:
        """Page through the inbox after the last processed item; returns the number of
        pages read (each acknowledged as a whole)."""
        conn = self.conn
        if conn is None:
            raise ConnectionClosed("not connected")
        total = 0
        while True:
            after = int(self._store().read().get("last_seq") or 0)
            answer = await conn.request(f.Sync(after=after, limit=200), timeout=30)
            if isinstance(answer, f.Error):
                raise ServerUnavailable(f"Sync failed: {answer.message}")
            if not isinstance(answer, f.Synced):
                raise ServerUnavailable("Sync failed: unexpected answer.")
            total += 1
            if answer.last > after:
                await self._ack(answer.last)
            if not answer.more:
                return total

    async def _resync(self) -> None:
        try:
            await self.sync()
        except (ParleyError, TimeoutError) as exc:  # the socket went away: ready syncs again
            log.info("resync failed: %s", exc)

    def _queued(self) -> list[f.Send]:
        out = []
        for raw in self._store().read().queued():
            with contextlib.suppress(msgspec.ValidationError):
                out.append(msgspec.convert({**raw, "op": "send"}, f.Send))
        return out

    async def _resend(self) -> None:
        assert self.conn is not None
        for frame in self._queued():
            await self.conn.send(frame)

    async def _ack(self, seq: int) -> None:
        async with self._store().transaction() as tx:
            if seq > int(tx.get("last_seq") or 0):
                tx.put("last_seq", seq)
        if self.conn is not None:
            with contextlib.suppress(ConnectionClosed):
                await self.conn.send(f.Ack(seq=seq))

    def _ack_soon(self, seq: int) -> None:
        """Acknowledge pushed items cumulatively, at most every ``ACK_DELAY`` seconds: a
        burst of messages costs the server one acknowledgement, not one each.  (During
        a sync, the page is acknowledged as a whole by :meth:`sync`.)"""
        self._ack_pending = max(self._ack_pending, seq)
        if not self._synced.is_set() or (self._ack_task and not self._ack_task.done()):
            return

        async def later() -> None:
            await asyncio.sleep(ACK_DELAY)
            if self.conn is not None:
                with contextlib.suppress(ConnectionClosed):
                    await self.conn.send(f.Ack(seq=self._ack_pending))

        self._ack_task = self._spawn(later())

    # -- incoming ------------------------------------------------------------------------------
    async def _on_frame(self, frame: f.ServerFrames) -> None:
        if isinstance(frame, f.Message):
            await self._on_message(frame)
        elif isinstance(frame, f.KeyChanged):
            await self._on_key_changed(frame)
        elif isinstance(frame, f.Accepted | f.Stored | f.Delivered):
            await self._on_receipt(frame)
        elif isinstance(frame, f.Error):
            await self._on_error(frame)
        elif isinstance(frame, f.PrekeysLow):
            self.keys.on_prekeys_low()
        elif isinstance(frame, f.Resync):
            # The server lost frames it meant to push (its routing restarted):
            # page through the inbox again, off the reader (sync awaits replies).
            self._spawn(self._resync())

    async def _on_message(self, frame: f.Message) -> None:
        seq, sender, server_id = frame.seq, frame.from_, frame.server_id
        name = await self._name_of(sender)
        event: Event | None = None
        warning: KeyChanged | None = None
        try:
            wire = b64decode(frame.body)
        except ValueError:
            wire = b""
        me = self.account.user_id
        async with self._store().transaction() as tx:
            if not tx.has_message(server_id):
                state = self._peer(tx, sender)
                state.username = name
                device = self.keys.device(tx)
                assert device is not None and me is not None
                entry: dict[str, Any] = {
                    "dir": "in",
                    "peer": sender,
                    "at": int(frame.sent_at or time.time() * 1000),
                    "server_id": server_id,
                    "seq": seq,
                }
                try:
                    incoming = state.decrypt(device, wire, me)
                except ReplayedMessage:
                    incoming = None
                except (CryptoError, ValueError) as exc:
                    incoming = None
                    entry.update(kind="error", text=f"[could not decrypt: {type(exc).__name__}]")
                    tx.add_message(sender, entry, ref=server_id)
                    tx.put_peer(sender, state.to_json())
                    event = DecryptFailed(sender, name, type(exc).__name__)
                if incoming is not None:
                    text = incoming.message.plaintext.decode("utf-8", errors="replace")
                    if incoming.identity_changed is not None:
                        warning = self._warning(sender, name, incoming.identity_changed)
                        tx.add_message(sender, self._system_entry(sender, warning))
                    entry.update(kind="message", text=text)
                    tx.add_message(sender, entry, ref=server_id)
                    tx.put_peer(sender, state.to_json())
                    if incoming.new_session:
                        tx.put_bytes("device", device.to_bytes())
                    event = Message(sender, name, text, entry["at"], server_id, seq)
            if seq > int(tx.get("last_seq") or 0):
                tx.put("last_seq", seq)
        if warning is not None:
            self.events.emit(warning)
        if event is not None:
            self.events.emit(event)
        self._ack_soon(seq)

    def _warning(self, peer_id: str, name: str, exc: IdentityChanged) -> KeyChanged:
        new = exc.new_safety_number
        old = exc.old_safety_number
        return KeyChanged(
            peer_id,
            name,
            format_safety_number(new) if new else "",
            format_safety_number(old) if old else None,
        )

    def _system_entry(self, peer_id: str, warning: KeyChanged) -> dict[str, Any]:
        return {
            "dir": "system",
            "kind": "key_changed",
            "peer": peer_id,
            "at": int(time.time() * 1000),
            "text": f"{warning.username}'s safety number changed. "
            f"New safety number: {warning.safety_number}",
        }

    async def _on_key_changed(self, frame: f.KeyChanged) -> None:
        seq, peer_id, server_id = frame.seq, frame.user_id, frame.server_id
        warning: KeyChanged | None = None
        name = await self._name_of(peer_id)
        me = self.account.user_id
        async with self._store().transaction() as tx:
            raw = tx.peer(peer_id)
            if raw is not None and not tx.has_message(server_id):
                state = PeerState.from_json(raw)
                state.username = name
                known = state.known_identity()
                try:
                    presented = (
                        PublicIdentity.from_json(msgspec.to_builtins(frame.identity))
                        if frame.identity is not None
                        else None
                    )
                except CryptoError:
                    presented = None
                device = self.keys.device(tx)
                if presented is not None and device is not None and me is not None:
                    old = state.safety_number(device.identity, me)
                    if state.replace_identity(presented) and known is not None:
                        new = state.safety_number(device.identity, me)
                        warning = KeyChanged(peer_id, name, new or "", old)
                        entry = self._system_entry(peer_id, warning)
                        tx.add_message(peer_id, entry, ref=server_id)
                    tx.put_peer(peer_id, state.to_json())
            if seq > int(tx.get("last_seq") or 0):
                tx.put("last_seq", seq)
        if warning is not None:
            self.events.emit(warning)
        if seq:
            self._ack_soon(seq)

    async def _on_receipt(self, frame: f.Accepted | f.Stored | f.Delivered) -> None:
        client_id = frame.id
        status = str(type(frame).__struct_config__.tag)
        out = self._outgoing.get(client_id)
        rank = _STATUS_RANK.get(status, 0)
        async with self._store().transaction() as tx:
            tx.unqueue(client_id)
            tx.update_message(
                client_id,
                only_if=lambda e: _STATUS_RANK.get(str(e.get("status")), 0) < rank,
                status=status,
            )
        peer = out.peer_id if out else getattr(frame, "to", "")
        if out is not None:
            for fut in (out.accepted,) if status == "accepted" else (out.accepted, out.stored):
                if not fut.done():
                    fut.set_result(status)
            if status == "delivered":
                self._outgoing.pop(client_id, None)
        self.events.emit(Receipt(client_id, peer, status))

    async def _on_error(self, frame: f.Error) -> None:
        code, message, client_id = frame.code, frame.message, frame.id
        out = self._outgoing.get(client_id) if client_id else None
        queued = False
        if client_id:
            async with self._store().transaction() as tx:
                if code in ("rate_limited", "service_unavailable"):
                    queued = True  # kept in the outbox: resent below or after reconnecting
                elif tx.unqueue(client_id):
                    tx.update_message(client_id, status="failed", error=message)
        if queued and client_id:
            self._spawn(self._resend_later(client_id))
            return
        if out is not None and client_id:
            for fut in (out.accepted, out.stored):
                if not fut.done():
                    fut.set_exception(ApiError(code, message))
                    fut.exception()
            self._outgoing.pop(client_id, None)
            self.events.emit(Receipt(client_id, out.peer_id, "failed", message))
        self.events.emit(ErrorEvent(code, message))

    async def _resend_later(self, client_id: str, delay: float = 1.0) -> None:
        await asyncio.sleep(delay)
        for frame in self._queued():
            if frame.id == client_id and self.conn is not None:
                with contextlib.suppress(ConnectionClosed):
                    await self.conn.send(frame)

    # -- sending ------------------------------------------------------------------------------
    async def send(
        self, username_or_id: str, text: str, *, wait: str | None = "accepted", timeout: float = 30
    ) -> str:
        """Encrypt ``text`` for a contact and send it; returns the client message id.

        ``wait``: ``"accepted"`` (default; durable in the server's log),
        ``"stored"`` (in the recipient's inbox) or ``None``.  Without a
        connection the message waits in the outbox and goes out on the next
        connect.  The first message to a contact claims its prekey bundle and
        starts a PQXDH session; if the contact's identity differs from the one
        we know, a :class:`KeyChanged` event is emitted and a new session is
        started with the new identity (see docs/client.md).
        """
        peer_id, name = await self.resolve(username_or_id)
        me = self.account.user_id
        if peer_id == me:
            raise ParleyError("Sending to yourself is not supported (one device per account).")
        bundle: dict[str, Any] | None = None
        if not self._peer(self._store().read(), peer_id).has_session:
            bundle = await self.keys.claim_bundle(peer_id)
        client_id = uuid.uuid4().hex
        warning: KeyChanged | None = None
        async with self._store().transaction() as tx:
            state = self._peer(tx, peer_id)
            state.username = name
            device = self.keys.device(tx)
            assert device is not None and me is not None
            if state.has_session:
                wire = state.encrypt(text.encode())
            else:
                assert bundle is not None
                verified = PrekeyBundle.from_json(bundle)
                changed = state.check(verified.identity, device.identity, me)
                if changed is not None:
                    warning = self._warning(peer_id, name, changed)
                    tx.add_message(peer_id, self._system_entry(peer_id, warning))
                session, wire = Session.initiate(device, verified, text.encode())
                state.start(session)
            frame = f.Send(
                id=client_id, to=peer_id, body=b64encode(wire),
                commitment=b64encode(commitment_from_message(wire)),
            )  # fmt: skip
            entry = {
                "dir": "out",
                "kind": "message",
                "peer": peer_id,
                "text": text,
                "at": int(time.time() * 1000),
                "client_id": client_id,
                "status": "queued",
            }
            tx.put_peer(peer_id, state.to_json())
            tx.add_message(peer_id, entry, ref=client_id)
            tx.queue(client_id, msgspec.to_builtins(frame))
        if warning is not None:
            self.events.emit(warning)
        loop = asyncio.get_running_loop()
        out = _Outgoing(loop.create_future(), loop.create_future(), peer_id)
        self._outgoing[client_id] = out
        if self.conn is not None:
            with contextlib.suppress(ConnectionClosed):
                await self.conn.send(frame)
        if wait is not None:
            fut = out.stored if wait == "stored" else out.accepted
            if self.conn is None:
                raise ConnectionClosed("Not connected: the message waits in the outbox.")
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        return client_id
