"""``parley.Client``: an account on one device, end to end.

A thin front over three parts, each with its own module and tests:

- :class:`parley.account.Account`: sign-up, log-in (with 2FA), tokens;
- :class:`parley.keys.Keys`: this device's keys, uploads, top-ups, rotation,
  contacts' bundles;
- :class:`parley.messenger.Messenger`: the socket, the outbox, receipts,
  sending and receiving, history;
- :class:`parley.rooms.Rooms` (``client.rooms``): rooms, and private rooms'
  sender-key encryption.

They share one encrypted local store (:mod:`parley.store`), one HTTP client
(:mod:`parley.api`) and one :class:`parley.events.EventBus`::

    async with Client("http://127.0.0.1:8080", data_dir=path, passphrase=pw) as alice:
        await alice.login("alice", "password ...")
        await alice.connect()
        await alice.send("bob", "hello")
        async for event in alice.events():
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from parley import paths
from parley.account import Account, SecondFactor, SecondFactorPrompt
from parley.api import DEFAULT_SERVER, Api
from parley.crypto import Device, LinkRequest
from parley.errors import ApiError, DeviceRemoved, ParleyError
from parley.events import (
    ConnectionEvent,
    DecryptFailed,
    ErrorEvent,
    Event,
    EventBus,
    KeyChanged,
    Message,
    MessageRemoved,
    Receipt,
    RoomChanged,
    RoomMessage,
    RoomMessageChanged,
    RoomNotification,
    SentElsewhere,
    Typing,
)
from parley.keys import (
    PREKEY_BATCH,
    PREKEY_ROTATION_S,
    Keys,
    NeedsLink,
    PendingDevice,
    fingerprint,
)
from parley.messenger import Messenger
from parley.moderation import Moderation
from parley.rooms import Rooms
from parley.store import KdfParams, Store, Transaction

__all__ = [
    "Client",
    "ConnectionEvent",
    "DecryptFailed",
    "ErrorEvent",
    "Event",
    "KeyChanged",
    "Message",
    "MessageRemoved",
    "NeedsLink",
    "PendingDevice",
    "Receipt",
    "RoomChanged",
    "RoomMessage",
    "RoomMessageChanged",
    "RoomNotification",
    "SecondFactor",
    "SentElsewhere",
    "Typing",
]


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
        self._passphrase = passphrase
        self._kdf = kdf
        self._store: Store | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.flush_on_close = 0.0
        """Seconds :meth:`close` waits, if connected, for the outbox to be accepted (the
        CLI: 10; its commands connect, resend and would otherwise close at once)."""
        self._link: LinkRequest | None = None
        self.bus = EventBus()
        self.account = Account(self.server, self.api, lambda: self.store, self.bus)
        self.api.on_expired = lambda: self.account.access_token(force=True)
        self.keys = Keys(
            self.api, lambda: self.store, self.account, self.bus, self._spawn,
            prekey_batch=prekey_batch, rotate_after=rotate_after,
        )  # fmt: skip
        self.messenger = Messenger(
            self.server, self.api, lambda: self.store, self.account, self.keys, self.bus,
            self._spawn, backoff=(backoff_start, backoff_max), reauth_every=reauth_every,
        )  # fmt: skip
        self.moderation = Moderation(self.api, lambda: self.store, self.account, self.bus)
        """Reports, unsend, tombstones (:class:`parley.moderation.Moderation`)."""
        self.messenger.moderation = self.moderation
        self.rooms = Rooms(self.api, lambda: self.store, self.account, self.messenger, self.bus)
        """Rooms: create, list, invite, join, leave, members, send, history,
        notifications (:class:`parley.rooms.Rooms`, docs/client.md "Rooms")."""

    # -- lifecycle ------------------------------------------------------------------
    async def open(self) -> Client:
        if self._store is None:
            path = self.data_dir / paths.STORE_FILE
            self._store = await asyncio.to_thread(Store.open, path, self._passphrase, kdf=self._kdf)
            self.account.load()
        return self

    async def close(self) -> None:
        if self.flush_on_close > 0 and self._store is not None and self.messenger.connected:
            left = await self.messenger.wait_outbox(self.flush_on_close)
            if left:
                self.bus.emit(
                    ErrorEvent(
                        "outbox_waiting",
                        f"{left} message(s) not yet accepted by the server: they stay in "
                        "the outbox and go at the next connection (`parley outbox`).",
                    )
                )
        await self.messenger.disconnect()
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

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- who ------------------------------------------------------------------------------
    @property
    def user_id(self) -> str | None:
        return self.account.user_id

    @property
    def username(self) -> str | None:
        return self.account.username

    @property
    def logged_in(self) -> bool:
        return self.account.logged_in

    # -- events -----------------------------------------------------------------------
    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener(event)`` for every event, as it happens (in the event loop)."""
        self.bus.add_listener(listener)

    async def events(self) -> AsyncIterator[Event]:
        """Every event not yet taken, then each as it happens (the buffer keeps the
        last 10,000)."""
        async for event in self.bus.events():
            yield event

    async def next_event(self, kind: type[Event] = Event, timeout: float = 30.0) -> Event:
        """Take the oldest buffered event of this type (others stay buffered), waiting
        for one up to ``timeout`` seconds."""
        return await self.bus.next_event(kind, timeout)

    # -- account ----------------------------------------------------------------------
    async def signup(self, username: str, password: str, email: str) -> str:
        """Create an account with this install as its first device (a new account
        identity key and device list); returns the user id."""
        did = await self.keys.device_id()
        result = await self.account.signup(username, password, email, did)
        await self.keys.setup()
        return str(result["user"]["user_id"])

    async def login(
        self,
        username: str,
        password: str,
        *,
        second_factor: SecondFactorPrompt | None = None,
        new_identity: bool = False,
    ) -> str:
        """Log in (answering a 2FA challenge with ``second_factor``) and make sure this
        device's keys are published; returns the user id.

        On an install that is not yet one of the account's devices this raises
        :class:`parley.keys.NeedsLink` (link it with :meth:`link_device`), unless
        ``new_identity``: the account identity is reset (contacts see a new safety
        number; the account's other devices are removed)."""
        did = await self.keys.device_id()
        with self._removed_install():
            result = await self.account.login(
                username, password, second_factor=second_factor, device_id=did
            )
        await self.keys.setup(new_identity=new_identity)
        return str(result["user"]["user_id"])

    @contextlib.contextmanager
    def _removed_install(self) -> Iterator[None]:
        """A login refused as ``device_removed``: this install's device was removed from
        the account (from another device), and its id stays refused. Said as what to do
        here: the server's "link it again as a new device" cannot be followed on this
        install, which keeps the removed device's id and keys."""
        try:
            yield
        except ApiError as exc:
            if exc.code != "device_removed":
                raise
            raise DeviceRemoved(
                "This install's device was removed from the account (from another "
                "device), so it cannot sign in as that device again. To use this computer "
                f"again, move its data directory ({self.data_dir}) aside, which keeps its "
                "history there, and link it as a new device (`parley devices link`)."
            ) from None

    async def link_device(
        self,
        username: str,
        password: str,
        *,
        second_factor: SecondFactorPrompt | None = None,
        name: str | None = None,
    ) -> str:
        """On a new install: log in and ask to be linked; returns the link code to
        approve on an existing device (then :meth:`wait_linked`)."""
        did = await self.keys.device_id()
        with self._removed_install():
            await self.account.login(username, password, second_factor=second_factor, device_id=did)
        self._link = await self.keys.start_link(name)
        return self._link.code

    def fingerprint(self) -> str:
        """This device's fingerprint (of its signing key): what an approving device shows
        for it (``devices approve``) and must match."""
        device = self.keys.device()
        if device is None:
            raise ParleyError("This install has no device keys yet.")
        return fingerprint(device.identity.signing_key)

    async def wait_linked(self, timeout: float = 600.0) -> None:
        """Wait until an existing device approves the link code of :meth:`link_device`."""
        if self._link is None:
            raise ParleyError("No link in progress: call link_device first.")
        try:
            await self.keys.finish_link(self._link, timeout)
        except asyncio.CancelledError:
            # Given up (Ctrl-C): the code is withdrawn, not left approvable; approved
            # already, it is opened (the account lists this device now).
            withdrawn = True
            with contextlib.suppress(TimeoutError):
                withdrawn = await asyncio.wait_for(self.keys.cancel_link(self._link), 5)
            if not withdrawn:
                with contextlib.suppress(TimeoutError, ParleyError):
                    await asyncio.wait_for(self.keys.finish_link(self._link, 5), 10)
            raise
        self._link = None

    async def approve_device(
        self, code: str, confirm: Callable[[PendingDevice], Awaitable[bool]] | None = None
    ) -> PendingDevice:
        """On an existing device: link the device that shows ``code`` (``confirm`` sees
        its name and fingerprint first)."""
        return await self.keys.approve(code, confirm)

    async def rename_device(self, device_id: int, name: str) -> None:
        await self.keys.rename(device_id, name)

    async def remove_device(self, device_id: int) -> None:
        """Remove a device of this account (its tokens stop working, its inbox is dropped)."""
        await self.keys.remove(device_id)

    async def access_token(self, force: bool = False) -> str:
        return await self.account.access_token(force)

    async def logout(self) -> None:
        """End this session on the server and forget its tokens (keys and history stay)."""
        await self.messenger.disconnect()
        await self.account.logout()

    async def me(self) -> dict[str, Any]:
        return await self.account.me()

    async def auth_sessions(self) -> list[dict[str, Any]]:
        return await self.account.sessions()

    # -- keys -------------------------------------------------------------------------
    @property
    def rotate_after(self) -> float:
        """Seconds after which the signed and last-resort prekeys are rotated."""
        return self.keys.rotate_after

    @rotate_after.setter
    def rotate_after(self, seconds: float) -> None:
        self.keys.rotate_after = seconds

    @property
    def prekey_batch(self) -> int:
        return self.keys.prekey_batch

    def device(self, tx: Transaction | None = None) -> Device | None:
        return self.keys.device(tx)

    async def setup_keys(self) -> None:
        await self.keys.setup()

    async def top_up_prekeys(self) -> tuple[int, int]:
        return await self.keys.top_up()

    async def devices(self) -> list[dict[str, Any]]:
        """This account's devices, from its verified device list."""
        return await self.keys.devices()

    @property
    def device_id(self) -> int:
        return self.keys.known_device_id()

    # -- contacts and history ---------------------------------------------------------
    async def resolve(self, username_or_id: str) -> tuple[str, str]:
        return await self.messenger.resolve(username_or_id)

    async def safety_number(self, username_or_id: str) -> tuple[str, str | None]:
        return await self.messenger.safety_number(username_or_id)

    async def accept_identity(self, username_or_id: str) -> str | None:
        """Accept a contact's changed identity key: sending to them resumes."""
        return await self.messenger.accept_identity(username_or_id)

    async def verify(self, username_or_id: str, safety_number: str) -> None:
        """Mark a contact verified after comparing ``safety_number`` with them."""
        await self.messenger.verify(username_or_id, safety_number)

    def identity_status(self, peer_id: str) -> dict[str, Any]:
        return self.messenger.identity_status(peer_id)

    def history(self, peer_id: str, limit: int | None = None) -> list[dict[str, Any]]:
        return self.messenger.history(peer_id, limit)

    def conversations(self) -> list[dict[str, Any]]:
        return self.messenger.conversations()

    async def report(self, message: str, peer_id: str | None = None) -> dict[str, Any]:
        """Report a message you received (its server id, or a prefix of at least 4
        characters; ``last`` with ``peer_id``) to the server's admins: its plaintext and
        franking key go with it, so the server can verify what was said. Returns
        ``{id, state, duplicate}`` (docs/moderation-messages.md)."""
        return await self.moderation.report(message, peer_id)

    async def unsend(self, message: str, peer_id: str | None = None) -> dict[str, Any]:
        """Remove a message you sent (server id or prefix; ``last`` with ``peer_id``) from
        every inbox: each device of the conversation gets a signed tombstone."""
        return await self.moderation.unsend(message, peer_id)

    async def mark_read(self, peer_id: str) -> None:
        await self.messenger.mark_read(peer_id)

    def outbox(self) -> list[dict[str, Any]]:
        return self.messenger.outbox()

    async def drop_outbox(self, client_id: str) -> dict[str, Any]:
        """Remove a queued message (by id or unique prefix) without sending it."""
        return await self.messenger.drop_outbox(client_id)

    @property
    def max_frame_bytes(self) -> int:
        return self.messenger.max_frame_bytes

    def check_text(self, text: str) -> None:
        """Raise at once for a text :meth:`send` would refuse (empty, far too large)."""
        self.messenger.check_text(text)

    # -- messaging --------------------------------------------------------------------
    @property
    def ws_url(self) -> str:
        return self.messenger.ws_url

    @property
    def connected(self) -> bool:
        return self.messenger.connected

    @property
    def _conn(self) -> Any:
        """The socket (tests and the CLI look at its counters)."""
        return self.messenger.conn

    async def connect(self, timeout: float = 20.0) -> None:
        """Open the WebSocket and fetch what waits in the inbox; unaccepted messages are
        resent behind it (new sends wait for them). Keeps reconnecting (with backoff)
        until :meth:`close`."""
        await self.messenger.connect(timeout)

    async def sync(self) -> int:
        return await self.messenger.sync()

    async def send(
        self,
        username_or_id: str,
        text: str,
        *,
        wait: str | None = "accepted",
        timeout: float = 30,
        accept_new_identity: bool = False,
    ) -> str:
        """Encrypt ``text`` for a contact and send it; returns the client message id
        (see :meth:`parley.messenger.Messenger.send`).  Raises
        :class:`parley.SafetyNumberChanged` if the contact's identity changed and the
        user has not accepted it (``accept_new_identity`` does, for an unverified
        contact)."""
        return await self.messenger.send(
            username_or_id,
            text,
            wait=wait,
            timeout=timeout,
            accept_new_identity=accept_new_identity,
        )
