"""``parley.Client``: an account on one device, end to end.

One client is one user on one device (device id 1; multi-device fan-out is
out of scope, see docs/client.md).  It keeps everything in an encrypted
local store (:mod:`parley.store`), talks HTTP to auth and keys
(:mod:`parley.api`) and holds a WebSocket to the gateway
(:mod:`parley.connection`)::

    async with Client("http://127.0.0.1:8080", data_dir=path, passphrase=pw) as alice:
        await alice.login("alice", "password ...")
        await alice.connect()
        await alice.send("bob", "hello")
        async for event in alice.events():
            ...

Every state change (a ratchet step and the history entry it produced, a
prekey consumed, the last sequence number processed) is one store
transaction, and state is read inside the transaction that changes it, so
two processes on the same store (the CLI's ``chat`` and ``send``) never
reuse a message key.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from parley import paths
from parley.api import DEFAULT_SERVER, Api
from parley.connection import Connection, ConnectionClosed
from parley.crypto import (
    CryptoError,
    Device,
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
from parley.peers import PeerState
from parley.store import KdfParams, Store, Transaction

__all__ = [
    "DEVICE_ID",
    "Client",
    "ConnectionEvent",
    "DecryptFailed",
    "ErrorEvent",
    "Event",
    "KeyChanged",
    "Message",
    "Receipt",
    "SecondFactor",
]

log = logging.getLogger(__name__)

DEVICE_ID = 1
PREKEY_BATCH = 100
PREKEY_LOW = 10
PREKEY_ROTATION_S = 7 * 24 * 3600  # signed and last-resort prekeys, as Signal (weekly)
MAX_UPLOAD = 100
TOKEN_MARGIN_S = 120
ACK_DELAY = 0.2
_STATUS_RANK = {"queued": 0, "accepted": 1, "stored": 2, "delivered": 3}


# -- events ---------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """Base class of what :meth:`Client.events` yields."""


@dataclass(frozen=True)
class Message(Event):
    peer_id: str
    username: str
    text: str
    sent_at: int
    server_id: str
    seq: int


@dataclass(frozen=True)
class KeyChanged(Event):
    """A contact's identity key changed: warn, show the new safety number."""

    peer_id: str
    username: str
    safety_number: str
    old_safety_number: str | None


@dataclass(frozen=True)
class Receipt(Event):
    """``accepted`` (durable on the server), ``stored`` (in the recipient's inbox),
    ``delivered`` (the recipient's device acknowledged it) or ``failed``."""

    client_id: str
    peer_id: str
    status: str
    detail: str = ""


@dataclass(frozen=True)
class DecryptFailed(Event):
    peer_id: str
    username: str
    reason: str


@dataclass(frozen=True)
class ErrorEvent(Event):
    code: str
    message: str


@dataclass(frozen=True)
class ConnectionEvent(Event):
    state: str  # connected | disconnected | reconnecting | failed
    detail: str = ""


@dataclass(frozen=True)
class SecondFactor:
    """A login challenge: answer with one of ``methods`` (``totp``, ``email``, ``recovery``)."""

    challenge_id: str
    methods: list[str]
    email_code_sent: bool


SecondFactorPrompt = Callable[[SecondFactor], Awaitable[tuple[str, str]]]


@dataclass
class _Outgoing:
    accepted: asyncio.Future[str]
    stored: asyncio.Future[str]
    peer_id: str
    statuses: list[str] = field(default_factory=list)


def _jwt_exp(token: str) -> float:
    """The ``exp`` of a JWT, unverified (only to decide when to refresh)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return 0.0


class Client:
    """One account on one device.  See the module docstring."""

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        *,
        passphrase: str,
        data_dir: Path | str | None = None,
        username: str | None = None,
        prekey_batch: int = PREKEY_BATCH,
        kdf: KdfParams | None = None,
        backoff_start: float = 0.5,
        backoff_max: float = 30.0,
        reauth_every: float = 240.0,
        rotate_after: float = PREKEY_ROTATION_S,
    ) -> None:
        if data_dir is None:
            if username is None:
                raise ValueError("give data_dir, or username for the default data directory")
            data_dir = paths.account_dir(paths.data_home(), server, username)
        self.server = server.rstrip("/")
        self.data_dir = Path(data_dir)
        self.api = Api(self.server)
        self.api.on_expired = lambda: self.access_token(force=True)
        self.prekey_batch = prekey_batch
        self.backoff = (backoff_start, backoff_max)
        self.reauth_every = reauth_every
        self.rotate_after = rotate_after
        self._passphrase = passphrase
        self._kdf = kdf
        self._store: Store | None = None
        self._conn: Connection | None = None
        self._backlog: collections.deque[Event] = collections.deque(maxlen=10_000)
        self._arrived = asyncio.Event()
        self._listeners: list[Callable[[Event], None]] = []
        self._outgoing: dict[str, _Outgoing] = {}
        self._refresh_lock = asyncio.Lock()
        self._topping_up: asyncio.Task[None] | None = None
        self._ack_task: asyncio.Task[Any] | None = None
        self._ack_pending = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._synced = asyncio.Event()
        self._names: dict[str, str] = {}
        self.user_id: str | None = None
        self.username: str | None = None

    # -- lifecycle ------------------------------------------------------------------
    async def open(self) -> Client:
        if self._store is None:
            path = self.data_dir / paths.STORE_FILE
            self._store = await asyncio.to_thread(Store.open, path, self._passphrase, kdf=self._kdf)
            account = self._store.read().get("account")
            if account:
                self.user_id = account["user_id"]
                self.username = account["username"]
                self.api.token = account.get("access_token")
        return self

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.api.close()
        if self._store is not None:
            self._store.close()
            self._store = None

    async def __aenter__(self) -> Client:
        return await self.open()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def store(self) -> Store:
        if self._store is None:
            raise ParleyError("the client is not open (use `async with Client(...)`)")
        return self._store

    @property
    def logged_in(self) -> bool:
        account = self.store.read().get("account")
        return bool(account and account.get("refresh_token"))

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- events -----------------------------------------------------------------------
    def _emit(self, event: Event) -> None:
        self._backlog.append(event)
        self._arrived.set()
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed")

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener(event)`` for every event, as it happens (in the event loop)."""
        self._listeners.append(listener)

    async def events(self) -> AsyncIterator[Event]:
        """Every event not yet taken, then each as it happens (the buffer keeps the
        last 10,000)."""
        while True:
            yield await self.next_event()

    async def next_event(self, kind: type[Event] = Event, timeout: float = 30.0) -> Event:
        """Take the oldest buffered event of this type (others stay buffered), waiting
        for one up to ``timeout`` seconds."""

        async def wait() -> Event:
            while True:
                for event in self._backlog:
                    if isinstance(event, kind):
                        self._backlog.remove(event)
                        return event
                self._arrived.clear()
                await self._arrived.wait()

        return await asyncio.wait_for(wait(), timeout)

    # -- accounts -----------------------------------------------------------------------
    async def signup(self, username: str, password: str, email: str) -> str:
        """Create an account, log in and publish this device's keys; returns the user id."""
        result = await self.api.signup(username, email, password)
        await self._logged_in(result)
        await self.setup_keys()
        return str(result["user"]["user_id"])

    async def login(
        self, username: str, password: str, *, second_factor: SecondFactorPrompt | None = None
    ) -> str:
        """Log in (answering a 2FA challenge with ``second_factor``) and make sure this
        device's keys are published; returns the user id."""
        result = await self.api.login(username, password, device="parley-cli")
        attempts = 0
        while result.get("second_factor_required"):
            if second_factor is None:
                raise ApiError(
                    "second_factor_required", "This account needs a second factor to log in."
                )
            challenge = SecondFactor(
                result["challenge_id"], list(result["methods"]), bool(result.get("email_code_sent"))
            )
            method, code = await second_factor(challenge)
            if method == "email" and not code:
                await self.api.send_email_code(challenge.challenge_id)
                result = {**result, "email_code_sent": True}
                continue
            try:
                result = await self.api.login_2fa(challenge.challenge_id, method, code)
            except ApiError as exc:
                attempts += 1
                if exc.code != "invalid_code" or attempts >= 5:
                    raise
                self._emit(ErrorEvent(exc.code, str(exc)))
                result["email_code_sent"] = False
        await self._logged_in(result)
        await self.setup_keys()
        return str(result["user"]["user_id"])

    async def _logged_in(self, tokens: dict[str, Any]) -> None:
        user = tokens["user"]
        async with self.store.transaction() as tx:
            previous = tx.get("account")
            if previous and previous.get("user_id") != user["user_id"]:
                raise ParleyError(
                    f"This data directory belongs to {previous.get('username')!r}; "
                    "use another one for another account."
                )
            tx.put(
                "account",
                {
                    "user_id": user["user_id"],
                    "username": user["username"],
                    "server": self.server,
                    "access_token": tokens["access_token"],
                    "refresh_token": tokens["refresh_token"],
                    "session_id": tokens.get("session_id"),
                },
            )
        self.user_id = str(user["user_id"])
        self.username = str(user["username"])
        self.api.token = str(tokens["access_token"])

    def _account(self, tx: Transaction | None = None) -> dict[str, Any]:
        account = (tx or self.store.read()).get("account")
        if not account or not account.get("refresh_token"):
            raise NotLoggedIn("You are not logged in: run `parley login` first.")
        result: dict[str, Any] = account
        return result

    async def access_token(self, force: bool = False) -> str:
        """A valid access token, refreshed if it expires within two minutes.

        The refresh happens inside a store transaction, so two processes on one
        store never present the same refresh token twice (which the server
        treats as theft and answers by ending the session).
        """
        async with self._refresh_lock:
            current = self.api.token
            async with self.store.transaction() as tx:
                account = self._account(tx)
                token = str(account["access_token"])
                fresh_elsewhere = token != current and current is not None
                if (fresh_elsewhere or not force) and _jwt_exp(
                    token
                ) > time.time() + TOKEN_MARGIN_S:
                    self.api.token = token
                    return token
                try:
                    result = await self.api.refresh(account["refresh_token"])
                except ApiError as exc:
                    if exc.code in ("token_revoked", "refresh_token_reused", "invalid_token"):
                        account["refresh_token"] = None
                        tx.put("account", account)
                        raise NotLoggedIn(f"{exc} Run `parley login`.") from exc
                    raise
                account["access_token"] = result["access_token"]
                account["refresh_token"] = result["refresh_token"]
                tx.put("account", account)
            self.api.token = str(result["access_token"])
            return self.api.token

    async def logout(self) -> None:
        """End this session on the server and forget its tokens (keys and history stay)."""
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        self._account()
        with contextlib.suppress(ApiError):
            await self.access_token()
            await self.api.logout()
        async with self.store.transaction() as tx:
            account = tx.get("account")
            account["access_token"] = None
            account["refresh_token"] = None
            tx.put("account", account)
        self.api.token = None

    async def me(self) -> dict[str, Any]:
        await self.access_token()
        return await self.api.me()

    async def auth_sessions(self) -> list[dict[str, Any]]:
        await self.access_token()
        return await self.api.sessions()

    async def devices(self) -> list[dict[str, Any]]:
        """This account's devices in the key directory (with safety-relevant keys)."""
        await self.access_token()
        assert self.user_id is not None
        return await self.api.identities(self.user_id)

    # -- keys -----------------------------------------------------------------------------
    def device(self, tx: Transaction | None = None) -> Device | None:
        raw = (tx or self.store.read()).get_bytes("device")
        return None if raw is None else Device.from_bytes(raw)

    async def setup_keys(self) -> None:
        """Generate this device's keys on first use and publish them; afterwards make
        sure the directory still holds them (keys check), rotate the signed and
        last-resort prekeys once they are a week old, and top up one-time prekeys."""
        await self.access_token()
        now = time.time()
        async with self.store.transaction() as tx:
            device = self.device(tx)
            new = device is None
            if device is None:
                device = Device.generate()
                tx.put("prekeys_rotated_at", now)
            elif now - float(tx.get("prekeys_rotated_at") or 0) >= self.rotate_after:
                # The previous ones are kept for initial messages still in flight.
                device.rotate_signed_prekey()
                device.rotate_last_resort_kem_prekey()
                tx.put("prekeys_rotated_at", now)
            tx.put_bytes("device", device.to_bytes())
        if new or not await self.api.check_keys(DEVICE_ID, b64encode(device.keys_digest())):
            await self.api.put_identity(DEVICE_ID, device.public_identity())
            await self.api.put_signed_prekey(DEVICE_ID, device.signed_prekey())
            await self.api.put_last_resort(DEVICE_ID, device.last_resort_kem_prekey())
        await self.top_up_prekeys()

    async def top_up_prekeys(self) -> tuple[int, int]:
        """Upload one-time X25519 and ML-KEM prekeys up to the batch size; returns how
        many of each were uploaded.  Private halves are stored before the public
        halves are published."""
        counts = await self.api.counts(DEVICE_ID)
        need_ot = max(0, self.prekey_batch - int(counts["one_time"]))
        need_kem = max(0, self.prekey_batch - int(counts["kem_one_time"]))
        if not need_ot and not need_kem:
            return 0, 0
        async with self.store.transaction() as tx:
            device = self.device(tx)
            assert device is not None
            one_time = await asyncio.to_thread(device.generate_one_time_prekeys, need_ot)
            kem = await asyncio.to_thread(device.generate_kem_prekeys, need_kem)
            tx.put_bytes("device", device.to_bytes())
        for i in range(0, len(one_time), MAX_UPLOAD):
            await self.api.upload_one_time(DEVICE_ID, one_time[i : i + MAX_UPLOAD])
        for i in range(0, len(kem), MAX_UPLOAD):
            await self.api.upload_kem(DEVICE_ID, kem[i : i + MAX_UPLOAD])
        return need_ot, need_kem

    def _on_prekeys_low(self) -> None:
        if self._topping_up is None or self._topping_up.done():
            self._topping_up = self._spawn(self._top_up_quietly())

    async def _top_up_quietly(self) -> None:
        try:
            await self.top_up_prekeys()
        except ParleyError as exc:
            self._emit(ErrorEvent("prekeys", f"Could not upload new prekeys: {exc}"))

    async def _resync(self) -> None:
        try:
            await self.sync()
        except (ParleyError, TimeoutError) as exc:  # the socket went away: ready syncs again
            log.info("resync failed: %s", exc)

    # -- contacts -----------------------------------------------------------------------------
    async def resolve(self, username_or_id: str) -> tuple[str, str]:
        """(user id, username) of a contact, from the local store or the auth service."""
        await self.access_token()
        found = await self.api.user(username_or_id)
        self._names[found["user_id"]] = found["username"]
        return str(found["user_id"]), str(found["username"])

    async def _name_of(self, user_id: str) -> str:
        if user_id in self._names:
            return self._names[user_id]
        with contextlib.suppress(ParleyError):
            peer = self.store.read().peer(user_id)
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
        device = self.device()
        if device is None or self.user_id is None:
            raise NotLoggedIn("This device has no keys yet: log in first.")
        state = self._peer(self.store.read(), peer_id)
        number = state.safety_number(device.identity, self.user_id)
        if number is None:
            # Not talked yet: show the number for the identity the directory has now.
            devices = await self.api.identities(peer_id)
            if devices:
                identity = PublicIdentity.from_json(devices[0]["identity"])
                number = format_safety_number(
                    safety_number(
                        device.identity.signing_key, self.user_id, identity.signing_key, peer_id
                    )
                )
        return name, number

    # -- history --------------------------------------------------------------------------------
    def history(self, peer_id: str, limit: int | None = None) -> list[dict[str, Any]]:
        return self.store.read().history(peer_id, limit)

    def conversations(self) -> list[dict[str, Any]]:
        """Every contact with its last message and unread count, newest first."""
        read = self.store.read()
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
        return self.store.ref("peer", peer_id)

    async def mark_read(self, peer_id: str) -> None:
        entries = self.history(peer_id, 1)
        if entries:
            async with self.store.transaction() as tx:
                tx.put(f"read:{self._ref(peer_id)}", entries[-1].get("at", 0))

    # -- connection ------------------------------------------------------------------------------
    @property
    def ws_url(self) -> str:
        base = self.server.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        return base + "/ws"

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.connected

    async def connect(self, timeout: float = 20.0) -> None:
        """Open the WebSocket, fetch what waits in the inbox and resend unaccepted
        messages; keeps reconnecting (with backoff) until :meth:`close`."""
        self._account()
        if self._conn is not None:
            return
        await self.setup_keys()  # keys present and fresh, prekeys topped up
        self._synced.clear()
        self._conn = Connection(
            self.ws_url,
            self._token_for_socket,
            self._on_frame,
            on_ready=self._on_ready,
            on_state=lambda s, d: self._emit(ConnectionEvent(s, d)),
            backoff_start=self.backoff[0],
            backoff_max=self.backoff[1],
            reauth_every=self.reauth_every,
        )
        try:
            await self._conn.start(timeout)
        except BaseException:
            await self._conn.close()
            self._conn = None
            raise
        await asyncio.wait_for(self._synced.wait(), timeout)

    async def _token_for_socket(self, force: bool) -> str:
        return await self.access_token(force=force)

    async def _on_ready(self, ready: dict[str, Any]) -> None:
        await self.sync()
        await self._resend()
        self._synced.set()

    async def sync(self) -> int:
        """Page through the inbox after the last processed item; returns the number of
        pages read (each acknowledged as a whole)."""
        conn = self._conn
        if conn is None:
            raise ConnectionClosed("not connected")
        total = 0
        while True:
            after = int(self.store.read().get("last_seq") or 0)
            answer = await conn.request({"op": "sync", "after": after, "limit": 200}, timeout=30)
            if answer.get("op") == "error":
                raise ServerUnavailable(f"Sync failed: {answer.get('message')}")
            total += 1
            last = int(answer.get("last") or after)
            if last > after:
                await self._ack(last)
            if not answer.get("more"):
                return total

    async def _resend(self) -> None:
        assert self._conn is not None
        for frame in self.store.read().queued():
            await self._conn.send(frame)

    async def _ack(self, seq: int) -> None:
        async with self.store.transaction() as tx:
            if seq > int(tx.get("last_seq") or 0):
                tx.put("last_seq", seq)
        if self._conn is not None:
            with contextlib.suppress(ConnectionClosed):
                await self._conn.send({"op": "ack", "seq": seq})

    # -- incoming ------------------------------------------------------------------------------
    async def _on_frame(self, frame: dict[str, Any]) -> None:
        op = frame.get("op")
        if op == "message":
            await self._on_message(frame)
        elif op == "key_changed":
            await self._on_key_changed(frame)
        elif op in ("accepted", "stored", "delivered"):
            await self._on_receipt(frame)
        elif op == "error":
            await self._on_error(frame)
        elif op == "prekeys_low":
            self._on_prekeys_low()
        elif op == "resync":
            # The server lost frames it meant to push (its routing restarted):
            # page through the inbox again, off the reader (sync awaits replies).
            self._spawn(self._resync())

    async def _on_message(self, frame: dict[str, Any]) -> None:
        seq = int(frame.get("seq") or 0)
        sender = str(frame.get("from"))
        server_id = str(frame.get("server_id"))
        name = await self._name_of(sender)
        event: Event | None = None
        warning: KeyChanged | None = None
        try:
            wire = b64decode(str(frame.get("body", "")))
        except ValueError:
            wire = b""
        async with self.store.transaction() as tx:
            if tx.has_message(server_id):
                event = None
            else:
                state = self._peer(tx, sender)
                state.username = name
                device = self.device(tx)
                assert device is not None and self.user_id is not None
                entry: dict[str, Any] = {
                    "dir": "in",
                    "peer": sender,
                    "at": int(frame.get("sent_at") or time.time() * 1000),
                    "server_id": server_id,
                    "seq": seq,
                }
                try:
                    incoming = state.decrypt(device, wire, self.user_id)
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
            self._emit(warning)
        if event is not None:
            self._emit(event)
        self._ack_soon(seq)

    def _ack_soon(self, seq: int) -> None:
        """Acknowledge pushed items cumulatively, at most every ``ACK_DELAY`` seconds: a
        burst of messages costs the server one acknowledgement, not one each.  (During
        a sync, the page is acknowledged as a whole by :meth:`sync`.)"""
        self._ack_pending = max(self._ack_pending, seq)
        if not self._synced.is_set() or (self._ack_task and not self._ack_task.done()):
            return

        async def later() -> None:
            await asyncio.sleep(ACK_DELAY)
            if self._conn is not None:
                with contextlib.suppress(ConnectionClosed):
                    await self._conn.send({"op": "ack", "seq": self._ack_pending})

        self._ack_task = self._spawn(later())

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

    async def _on_key_changed(self, frame: dict[str, Any]) -> None:
        seq = int(frame.get("seq") or 0)
        peer_id = str(frame.get("user_id") or frame.get("from"))
        server_id = str(frame.get("server_id"))
        warning: KeyChanged | None = None
        name = await self._name_of(peer_id)
        async with self.store.transaction() as tx:
            raw = tx.peer(peer_id)
            if raw is not None and not tx.has_message(server_id):
                state = PeerState.from_json(raw)
                state.username = name
                known = state.known_identity()
                try:
                    presented = PublicIdentity.from_json(frame.get("identity"))
                except CryptoError:
                    presented = None
                device = self.device(tx)
                if presented is not None and device is not None and self.user_id is not None:
                    old = state.safety_number(device.identity, self.user_id)
                    if state.replace_identity(presented) and known is not None:
                        new = state.safety_number(device.identity, self.user_id)
                        warning = KeyChanged(peer_id, name, new or "", old)
                        entry = self._system_entry(peer_id, warning)
                        tx.add_message(peer_id, entry, ref=server_id)
                    tx.put_peer(peer_id, state.to_json())
            if seq > int(tx.get("last_seq") or 0):
                tx.put("last_seq", seq)
        if warning is not None:
            self._emit(warning)
        if seq:
            self._ack_soon(seq)

    async def _on_receipt(self, frame: dict[str, Any]) -> None:
        client_id = str(frame.get("id"))
        status = str(frame["op"])
        out = self._outgoing.get(client_id)
        rank = _STATUS_RANK.get(status, 0)
        async with self.store.transaction() as tx:
            tx.unqueue(client_id)
            tx.update_message(
                client_id,
                only_if=lambda e: _STATUS_RANK.get(str(e.get("status")), 0) < rank,
                status=status,
            )
        peer = out.peer_id if out else str(frame.get("to") or "")
        if out is not None:
            for fut in (out.accepted,) if status == "accepted" else (out.accepted, out.stored):
                if not fut.done():
                    fut.set_result(status)
            if status == "delivered":
                self._outgoing.pop(client_id, None)
        self._emit(Receipt(client_id, peer, status))

    async def _on_error(self, frame: dict[str, Any]) -> None:
        code = str(frame.get("code", "error"))
        message = str(frame.get("message", code))
        client_id = frame.get("id")
        out = self._outgoing.get(str(client_id)) if client_id else None
        queued = False
        if client_id:
            async with self.store.transaction() as tx:
                if code in ("rate_limited", "service_unavailable"):
                    queued = True  # kept in the outbox: resent below or after reconnecting
                else:
                    queued = False
                    if tx.unqueue(str(client_id)):
                        tx.update_message(str(client_id), status="failed", error=message)
        if queued and client_id:
            self._spawn(self._resend_later(str(client_id)))
            return
        if out is not None:
            for fut in (out.accepted, out.stored):
                if not fut.done():
                    fut.set_exception(ApiError(code, message))
                    fut.exception()
            self._outgoing.pop(str(client_id), None)
        if client_id and out is not None:
            self._emit(Receipt(str(client_id), out.peer_id, "failed", message))
        self._emit(ErrorEvent(code, message))

    async def _resend_later(self, client_id: str, delay: float = 1.0) -> None:
        await asyncio.sleep(delay)
        for frame in self.store.read().queued():
            if frame.get("id") == client_id and self._conn is not None:
                with contextlib.suppress(ConnectionClosed):
                    await self._conn.send(frame)

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
        if peer_id == self.user_id:
            raise ParleyError("Sending to yourself is not supported (one device per account).")
        bundle: dict[str, Any] | None = None
        if not self._peer(self.store.read(), peer_id).has_session:
            bundles = await self.api.claim_bundles(peer_id)
            bundle = next((b for b in bundles if b.get("device_id") == DEVICE_ID), bundles[0])
        client_id = uuid.uuid4().hex
        warning: KeyChanged | None = None
        async with self.store.transaction() as tx:
            state = self._peer(tx, peer_id)
            state.username = name
            device = self.device(tx)
            assert device is not None and self.user_id is not None
            if state.has_session:
                wire = state.encrypt(text.encode())
            else:
                assert bundle is not None
                verified = PrekeyBundle.from_json(bundle)
                changed = state.check(verified.identity, device.identity, self.user_id)
                if changed is not None:
                    warning = self._warning(peer_id, name, changed)
                    tx.add_message(peer_id, self._system_entry(peer_id, warning))
                session, wire = Session.initiate(device, verified, text.encode())
                state.start(session)
            frame = {
                "op": "send",
                "id": client_id,
                "to": peer_id,
                "body": b64encode(wire),
                "commitment": b64encode(commitment_from_message(wire)),
            }
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
            tx.queue(client_id, frame)
        if warning is not None:
            self._emit(warning)
        loop = asyncio.get_running_loop()
        out = _Outgoing(loop.create_future(), loop.create_future(), peer_id)
        self._outgoing[client_id] = out
        if self._conn is not None:
            with contextlib.suppress(ConnectionClosed):
                await self._conn.send(frame)
        if wait is not None:
            fut = out.stored if wait == "stored" else out.accepted
            if self._conn is None:
                raise ConnectionClosed("Not connected: the message waits in the outbox.")
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        return client_id

    def outbox(self) -> list[dict[str, Any]]:
        return self.store.read().queued()
