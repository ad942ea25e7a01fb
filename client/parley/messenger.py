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
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import orjson
from parley_contract import frames as f
from parley_contract.envelopes import conversation_id, message_server_id

from parley.account import Account, StoreRef
from parley.api import Api
from parley.connection import Connection, ConnectionClosed, transient
from parley.connection import for_now as for_now  # also parley.rooms's (it was defined here)
from parley.crypto import (
    Binding,
    CryptoError,
    Device,
    PrekeyBundle,
    ReplayedMessage,
    Session,
    SignedDeviceList,
    commitment_from_message,
)
from parley.crypto.encoding import b64decode, b64encode
from parley.errors import (
    ApiError,
    MessageTooLarge,
    NotLoggedIn,
    ParleyError,
    SafetyNumberChanged,
    ServerUnavailable,
    StoreError,
)
from parley.events import (
    ConnectionEvent,
    DecryptFailed,
    ErrorEvent,
    Event,
    EventBus,
    KeyChanged,
    Message,
    Receipt,
    SentElsewhere,
)
from parley.keys import Keys
from parley.moderation import Moderation, UnknownTombstoneKey, alias_key, report_fields
from parley.peers import PeerState
from parley.store import Transaction

RoomFrame = f.RoomPost | f.Notification | f.RoomMessageChanged | f.RoomChanged | f.TypingNotice
"""The rooms service's live frames and typing notices, for :class:`RoomHook`."""

log = logging.getLogger(__name__)

ACK_DELAY = 0.2
ASIDE_MAX = 10_000  # messages kept aside at most (Messenger._on_message)
ASIDE_RETRY = (2.0, 60.0)  # first and longest wait between reads of what is kept aside
ASIDE_ASK_EVERY = 1.0  # after a list could not be read, none is asked for this long
ASIDE_ASK_TIMEOUT = 5.0  # a device list read that waits longer counts as "not now"
LISTS_PER_READ = 1000  # users per bulk device-list read (the key directory's MAX_LIST_USERS)
CLAIMS_PER_REQUEST = 100  # users per bulk claim (the key directory's MAX_CLAIM_USERS)
CLAIMS_AT_ONCE = 3  # bulk claims in flight (the directory works on each 16 users at a time)
DEFAULT_MAX_FRAME_BYTES = 64 * 1024  # the gateway's default (PARLEY_WS_MAX_FRAME_BYTES)
_STATUS_RANK = {"queued": 0, "accepted": 1, "stored": 2, "delivered": 3}
# Refusals after which the message stays in the outbox and goes again later (nothing
# was stored: docs/protocol.md, "Errors"), with the first wait and its cap in seconds.
_SEND_AGAIN = {
    "rate_limited": (0.0, 0.0),  # at once, at the paced rate (see _Pacer.drain)
    "service_unavailable": (1.0, 30.0),
    "inbox_full": (5.0, 300.0),
    "too_many_pending": (5.0, 300.0),
}

Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


@dataclass
class _Outgoing:
    accepted: asyncio.Future[str]
    stored: asyncio.Future[str]
    peer_id: str
    wants_stored: bool = False
    """A caller waits for ``stored``: kept past ``accepted`` (else forgotten then: a room
    message never gets ``stored``, nor a message to a device that stays offline)."""


class _Pacer:
    """The client's copy of the gateway's send bucket (``ready.limits``: ``sends_per_s``,
    ``send_burst``): sends and resends wait for a token, so a backlog goes out at the
    rate the server takes instead of collecting ``rate_limited`` refusals (the gateway
    closes a socket that collects too many: 4009)."""

    def __init__(self, rate: float = 50.0, burst: int = 5000) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens = self.burst
        self.at = time.monotonic()
        self.generation = 0  # one a socket: a wait booked on an older one sends nothing

    def configure(self, rate: float, burst: int) -> None:
        """A new socket's limits. No debt carried over (sends booked on a socket that
        closed do not hold up the new one's: they send nothing, see :meth:`take`; the
        new socket's resend covers them), and no fresh burst either (the server's
        bucket is the user's on that pod, and may be empty)."""
        self._refill()
        self.rate, self.burst = max(rate, 0.001), float(max(burst, 1))
        self.tokens = max(0.0, min(self.tokens, self.burst))
        self.generation += 1

    def drain(self) -> None:
        """The server refused a send: its bucket (shared by all of the user's sockets on
        the pod) is empty, whatever ours says."""
        self._refill()
        self.tokens = min(self.tokens, 0.0)

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now

    async def take(self) -> bool:
        """Wait for a token; False if a new socket came meanwhile (send nothing: its
        resend sends the outbox, and this one's turn would double the rate)."""
        self._refill()
        generation = self.generation
        self.tokens -= 1.0  # taken now: concurrent senders queue behind one another
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)
        return generation == self.generation


def _record_receipt(tx: Transaction, frame: f.Accepted | f.Stored | f.Delivered) -> None:
    """A receipt in the history and the outbox (``accepted`` takes it out of the outbox)."""
    client_id = frame.id
    status = str(type(frame).__struct_config__.tag)
    rank = _STATUS_RANK.get(status, 0)
    device = None if isinstance(frame, f.Accepted) else frame.device

    def per_device(entry: dict[str, Any]) -> None:
        # The per-device detail: {"<device id>": "stored" | "delivered"}.
        devices = entry.setdefault("devices", {})
        if _STATUS_RANK.get(str(devices.get(str(device))), 0) < rank:
            devices[str(device)] = status

    if status == "accepted":
        tx.unqueue(client_id)
    tx.update_message(
        client_id,
        only_if=lambda e: _STATUS_RANK.get(str(e.get("status")), 0) < rank,
        status=status,
    )
    if device is not None:
        tx.update_message(client_id, apply=per_device)


class Claims:
    """Bundles claimed in bulk (:meth:`Messenger.claim_missing`), filled as the key
    directory's answers come."""

    def __init__(self) -> None:
        self.bundles: dict[tuple[str, int], PrekeyBundle] = {}
        self.ours = ""
        self._answered: dict[str, asyncio.Future[None]] = {}

    def add(self, users: list[str], answered: asyncio.Future[None]) -> None:
        answered.add_done_callback(lambda f: f.cancelled() or f.exception())  # raised below
        for user in users:
            self._answered[user] = answered

    async def ready(self, user: str) -> None:
        """Once ``user``'s answer and ours are in (raises their request's error)."""
        for who in (self.ours, user):
            answered = self._answered.get(who)
            if answered is not None:
                await asyncio.shield(answered)


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
        # Receipts read while their last batch was being written (one transaction each
        # batch: a room's key distribution brings two thousand at once).
        self._receipts: list[f.Accepted | f.Stored | f.Delivered] = []
        self._receipts_task: asyncio.Task[Any] | None = None
        self._ack_pending = 0
        self._synced = asyncio.Event()
        self._syncing = 0  # syncs running: pushes then move neither last_seq nor acks
        self._names: dict[str, str] = {}
        # One encryption at a time per peer: concurrent first sends to a new contact
        # would each claim its bundles (a one-time prekey each, and the directory's
        # claim limit) although one session serves them all.
        self._peer_locks: dict[str, asyncio.Lock] = {}
        self.room_hook: RoomHook | None = None
        self.moderation: Moderation | None = None
        self._pacer = _Pacer()
        # Queued sends the server refused for now (``_SEND_AGAIN``): when each goes again
        # (loop time), and how often each was refused; one task sends them.
        self._held: dict[str, float] = {}
        self._refusals: dict[str, int] = {}
        self._held_task: asyncio.Task[Any] | None = None
        self._held_changed = asyncio.Event()
        # The outbox's resend after a (re)connection runs behind connect (a backlog past
        # the send burst goes at the server's rate, minutes for thousands), and new
        # sends wait for it so they do not overtake what was queued before them.
        # Open once this socket's resend is done (and while there is no socket): a new
        # send waits for it. Closed at "connected", before the socket's sync.
        self._flushed = asyncio.Event()
        self._flushed.set()
        self._resent: set[str] = set()  # what the running resend sent (not sent twice)
        # The devices each waiting control send was (last) encrypted for (send_control).
        self._copies: dict[str, set[tuple[str, int]]] = {}
        # Messages kept aside (_on_message): read by one task at a time, in order.
        self._aside_lock = asyncio.Lock()
        self._aside_task: asyncio.Task[Any] | None = None
        self._aside_wake = asyncio.Event()
        self._unanswered = 0.0  # loop time before which the directory is not asked again
        self._aside_turn = 0  # where the next round of _read_aside starts

    # -- contacts -----------------------------------------------------------------------------
    async def resolve(self, username_or_id: str) -> tuple[str, str]:
        """(user id, username) of a contact, from the auth service."""
        await self.account.access_token()
        found = await self.api.user(username_or_id)
        self._names[found["user_id"]] = found["username"]
        return str(found["user_id"]), str(found["username"])

    async def name_of(self, user_id: str) -> str:
        """``user_id``'s username, as shown: remembered, from the local store's contact,
        or looked up at the auth service; its first 8 characters when it cannot be
        looked up (offline)."""
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
        """A contact's state, or our own account's (sessions with our other devices)."""
        raw = tx.get(SELF_PEER) if user_id == self.account.user_id else tx.peer(user_id)
        return PeerState(user_id) if raw is None else PeerState.from_json(raw)

    def _put_peer(self, tx: Transaction, state: PeerState) -> None:
        if state.user_id == self.account.user_id:
            tx.put(SELF_PEER, state.to_json())
        else:
            tx.put_peer(state.user_id, state.to_json())

    def _my_account_key(self) -> bytes:
        key = self.keys.account_key()
        if key is None:
            raise NotLoggedIn("This device is not linked to its account yet.")
        return key.public

    async def _refresh_peer(self, user_id: str, answer: dict[str, Any] | None = None) -> PeerState:
        """Take a user's signed device list from the directory (or from a bundle
        answer) and trust it as :meth:`PeerState.trust` says; a changed account key
        is reported (warning event and history entry)."""
        if answer is None:
            answer = await self.keys.directory_list(user_id)
        if user_id != self.account.user_id:
            await self.name_of(user_id)
        [state] = await self._trust_lists([answer])
        return state

    async def _trust_lists(self, answers: list[dict[str, Any]]) -> list[PeerState]:
        """Trust users' signed device lists (from the directory or from claims' answers)
        as :meth:`PeerState.trust` says, in one transaction; a changed account key is
        reported (warning event and history entry). A contact's username is the one
        already known (:meth:`name_of` is not asked: a room's members come named).
        A list that does not verify (or is older than the one held) raises
        :class:`UntrustedKeys` and changes nothing (a raw crypto error ended the CLI's
        chat with a traceback, and a room send's redo task with it)."""
        try:
            return await self._trust_checked(answers)
        except CryptoError as exc:
            raise UntrustedKeys(
                f"The key directory served a device list that does not verify ({exc})."
            ) from exc

    async def _trust_checked(self, answers: list[dict[str, Any]]) -> list[PeerState]:
        me = self.account.user_id
        assert me is not None
        signed = [SignedDeviceList.from_json(answer) for answer in answers]
        mine = b64encode(self._my_account_key())
        for answer in answers:
            # Our own list is under the account key this device holds, never one the
            # directory names: trusting another on first sight let a lying directory
            # add a device of its own to every message we send (copies to "our other
            # devices") and to every private room's sender keys, silently.
            if str(answer["user_id"]) == me and str(answer["account_key"]) != mine:
                raise UntrustedKeys(
                    "The key directory holds another account key for this account: the "
                    "identity was reset from another install, or the directory is not "
                    "to be trusted. Nothing was sent; link this device again."
                )
        warnings: list[KeyChanged] = []
        states = []
        async with self._store().transaction() as tx:
            for answer, listed in zip(answers, signed, strict=True):
                user_id = str(answer["user_id"])
                state = self._peer(tx, user_id)
                if user_id != me and user_id in self._names:
                    state.username = self._names[user_id]
                changed = state.trust(
                    str(answer["account_key"]), listed, self._my_account_key(), me
                )
                if changed is not None and user_id != me:
                    warning = KeyChanged(
                        user_id, state.username or user_id[:8],
                        changed.new_safety_number, changed.old_safety_number,
                    )  # fmt: skip
                    tx.add_message(user_id, self._system_entry(user_id, warning))
                    warnings.append(warning)
                self._put_peer(tx, state)
                states.append(state)
        for warning in warnings:
            self.events.emit(warning)
        return states

    def known_names(self, user_ids: list[str]) -> dict[str, str]:
        """The usernames of ``user_ids`` known here (remembered, or the local store's
        contacts), asking no server."""
        store = self._store().read()
        out: dict[str, str] = {}
        for user_id in user_ids:
            name = self._names.get(user_id)
            if name is None:
                peer = store.peer(user_id)
                name = peer.get("username") if peer else None
            if name:
                out[user_id] = str(name)
        return out

    def remember_names(self, names: dict[str, str]) -> None:
        """Usernames learnt elsewhere (a room's member list), for :meth:`name_of`."""
        self._names.update(names)

    async def refresh_peers(self, user_ids: list[str]) -> None:
        """:meth:`_refresh_peer` for many users: their lists read in bulk
        (``LISTS_PER_READ`` a request) and trusted in one transaction per read. A user
        with no account key is skipped (no device to reach)."""
        for at in range(0, len(user_ids), LISTS_PER_READ):
            await self.account.access_token()
            answer = await self.api.device_lists(user_ids[at : at + LISTS_PER_READ])
            await self._trust_lists(answer["lists"])

    def claim_missing(self, user_ids: list[str]) -> Claims:
        """Bundles of every device of these users (and of ours but this one) we have no
        session with, claimed in bulk (``CLAIMS_PER_REQUEST`` users a request,
        ``CLAIMS_AT_ONCE`` requests at a time): what :meth:`send_control`'s ``bundles``
        takes, so that a private room's first message claims for 1,000 members in 10
        requests. The requests start at once; :class:`Claims` fills as their answers come
        and says when a user's is in (ours is asked first), so a user's send need not wait
        for the other requests. Users the directory refused (no keys left, the pair's
        budget) are left out: their own send claims again and says why."""
        me = self.account.user_id
        assert me is not None
        my_device = self.keys.known_device_id()
        read = self._store().read()
        wanted: dict[str, list[int] | None] = {}
        for user in dict.fromkeys([me, *user_ids]):
            missing = [
                d for d in self._peer(read, user).missing_sessions() if (user, d) != (me, my_device)
            ]
            if missing:
                wanted[user] = missing
        claims = Claims()
        users = list(wanted)
        gate = asyncio.Semaphore(CLAIMS_AT_ONCE)

        async def claim(chunk: list[str]) -> None:
            async with gate:
                await self.account.access_token()
                answer: dict[str, Any] = await self.api.claim_many({u: wanted[u] for u in chunk})
            claimed = answer.get("claimed", [])
            try:
                for state, got in zip(await self._trust_lists(claimed), claimed, strict=True):
                    for raw in got.get("bundles", []):
                        bundle = PrekeyBundle.from_json(raw)
                        state.check_device(int(raw["device_id"]), bundle.identity)
                        claims.bundles[(state.user_id, int(raw["device_id"]))] = bundle
            except CryptoError as exc:
                raise UntrustedKeys(
                    "The key directory served keys that the account's signed device "
                    f"list does not vouch for ({exc}): nothing was sent."
                ) from exc

        for at in range(0, len(users), CLAIMS_PER_REQUEST):
            chunk = users[at : at + CLAIMS_PER_REQUEST]
            answered = asyncio.ensure_future(claim(chunk))
            claims.add(chunk, answered)
        claims.ours = me
        return claims

    async def safety_number(self, username_or_id: str) -> tuple[str, str | None]:
        """(username, safety number of the account key we trust for them, or of the
        one the directory has if we never exchanged keys).  Compare it out of band."""
        peer_id, name = await self.resolve(username_or_id)
        me = self.account.user_id
        if me is None or self.keys.account_key() is None:
            raise NotLoggedIn("This device has no keys yet: log in first.")
        state = self._peer(self._store().read(), peer_id)
        number = state.safety_number(self._my_account_key(), me)
        if number is None:
            with contextlib.suppress(ApiError):
                state = await self._refresh_peer(peer_id)
                number = state.safety_number(self._my_account_key(), me)
        return name, number

    # -- identity policy ------------------------------------------------------------------------
    async def accept_identity(self, username_or_id: str) -> str | None:
        """Accept a contact's new identity key without comparing safety numbers:
        sending resumes (the contact is unverified).  Returns the safety number."""
        peer_id, _ = await self.resolve(username_or_id)
        async with self._store().transaction() as tx:
            state = self._peer(tx, peer_id)
            state.accept()
            self._put_peer(tx, state)
        me = self.account.user_id
        assert me is not None
        return state.safety_number(self._my_account_key(), me)

    async def verify(self, username_or_id: str, safety_number: str) -> None:
        """Mark a contact verified: ``safety_number`` is the one the user compared
        with theirs (from :meth:`safety_number`); it must be the number of the key
        we trust now, else nothing changes (the key changed meanwhile)."""
        peer_id, name = await self.resolve(username_or_id)
        me = self.account.user_id
        assert me is not None
        async with self._store().transaction() as tx:
            state = self._peer(tx, peer_id)
            current = state.safety_number(self._my_account_key(), me)
            if state.account_key is None or current is None:
                raise ParleyError(f"{name} has no keys yet: nothing to verify.")
            if "".join(safety_number.split()) != "".join(current.split()):
                raise ParleyError(
                    f"{name}'s safety number changed while you were comparing it: "
                    "compare the new one."
                )
            state.mark_verified(state.account_key)
            self._put_peer(tx, state)

    def identity_status(self, peer_id: str) -> dict[str, Any]:
        """``{"verified": bool, "pending_change": bool, "was_verified": bool}`` for a
        contact we know (all False for one we never exchanged keys with)."""
        state = self._peer(self._store().read(), peer_id)
        pending = state.pending_change or {}
        return {
            "verified": state.verified,
            "pending_change": state.pending_change is not None,
            "was_verified": bool(pending.get("was_verified")),
        }

    def _check_identity(self, state: PeerState, name: str | None) -> None:
        """Raise :class:`SafetyNumberChanged` if the contact's identity changed and the
        user has not accepted the new one."""
        change = state.pending_change
        if change is None:
            return
        me = self.account.user_id
        assert me is not None
        number = state.safety_number(self._my_account_key(), me)
        assert number is not None
        raise SafetyNumberChanged(
            state.user_id,
            name or state.username or state.user_id[:8],
            change.get("old_safety_number"),
            number,
            verified=bool(change.get("was_verified")),
        )

    async def _identity_gate(self, peer_id: str, name: str | None, accept: bool) -> None:
        state = self._peer(self._store().read(), peer_id)
        change = state.pending_change
        if change is not None and accept and not change.get("was_verified"):
            async with self._store().transaction() as tx:
                state = self._peer(tx, peer_id)
                state.accept()
                self._put_peer(tx, state)
        self._check_identity(self._peer(self._store().read(), peer_id), name)

    # -- history --------------------------------------------------------------------------------
    def history(self, peer_id: str, limit: int | None = None) -> list[dict[str, Any]]:
        return self._store().read().history(peer_id, limit)

    def conversations(self) -> list[dict[str, Any]]:
        """Every contact with its last message and unread count, newest first."""
        read = self._store().read()
        out = []
        me = self.account.user_id
        peers = list(read.peers())
        if me is not None and read.history(me, 1):  # notes to self
            peers.append({"user_id": me, "username": self.account.username})
        for peer in peers:
            last = read.history(peer["user_id"], 1)
            # Read up to a row of the store (mark_read), not up to a time: an entry's
            # ``at`` is this device's clock for what it sent and the server's for what
            # it received, and a clock ahead hid the replies that came after.
            seen_id = read.get(f"read_id:{self._ref(peer['user_id'])}")
            if isinstance(seen_id, int):
                entries = read.history_since(peer["user_id"], seen_id)
                unread = [e for e in entries if e.get("dir") == "in"]
            else:  # marked read before 2026-12 (a time), or never
                seen = read.get(f"read:{self._ref(peer['user_id'])}") or 0
                unread = [e for e in read.history(peer["user_id"])
                          if e.get("dir") == "in" and e.get("at", 0) > seen]  # fmt: skip
            out.append(
                {
                    "user_id": peer["user_id"],
                    "username": peer.get("username") or peer["user_id"][:8],
                    "last": last[-1] if last else None,
                    "unread": unread,
                }
            )
        out.sort(key=lambda c: c["last"]["at"] if c["last"] else 0, reverse=True)
        return out

    def _ref(self, peer_id: str) -> str:
        return self._store().ref("peer", peer_id)

    async def mark_read(self, peer_id: str) -> None:
        """Everything the conversation holds so far is read (by the store's order of
        arrival: :meth:`conversations`)."""
        async with self._store().transaction() as tx:
            last = tx.last_message_id(peer_id)
            if last:
                tx.put(f"read_id:{self._ref(peer_id)}", last)

    def outbox(self) -> list[dict[str, Any]]:
        """Messages not yet accepted by the server:
        ``{"client_id", "peer", "text", "bytes"}`` (``bytes``: the frame's size)."""
        out = []
        for q in self._store().read().queued():
            op = "send" if isinstance(q.get("send"), dict) else "room_send"
            if not isinstance(q.get(op), dict):
                continue
            out.append(
                {
                    "client_id": q[op]["id"],
                    "peer": q.get("peer"),
                    "text": q.get("text") if not q.get("control") else "[room key]",
                    "bytes": len(_frame_bytes(q[op], op)),
                }
            )
        return out

    async def drop_outbox(self, client_id: str) -> dict[str, Any]:
        """Remove a message from the outbox (it is never sent); ``client_id`` may be a
        unique prefix.  Its history entry is marked failed.  Returns the entry."""
        matches = [q for q in self.outbox() if str(q["client_id"]).startswith(client_id)]
        if not client_id or not matches:
            raise ParleyError(f"No message {client_id!r} in the outbox (see `parley outbox`).")
        if len(matches) > 1:
            raise ParleyError(f"{client_id!r} matches several messages: give more of the id.")
        found = matches[0]
        async with self._store().transaction() as tx:
            tx.unqueue(found["client_id"])
            tx.update_message(found["client_id"], status="failed", error="dropped from the outbox")
        self._outgoing.pop(found["client_id"], None)
        return found

    def check_text(self, text: str) -> None:
        """Refuse at once what cannot be sent: an empty or blank text, or one whose
        base64 alone is over the frame limit (the exact check, on the encrypted frame,
        is made before queuing: :class:`MessageTooLarge` either way)."""
        if not text.strip():
            raise ParleyError("The message is empty: there is nothing to send.")
        if text.startswith(CONTROL_MARK):
            raise ParleyError("A message may not start with a NUL character.")
        try:
            text.encode()
        except UnicodeEncodeError as exc:  # lone surrogates: argv bytes that are not UTF-8
            raise ParleyError(
                f"The message is not valid text: character {exc.start + 1} is a byte that is "
                "not UTF-8 (a terminal or file in another encoding?). Nothing was sent."
            ) from None
        limit = self.max_frame_bytes
        if len(text.encode()) * 4 // 3 > limit:
            raise MessageTooLarge(len(text.encode()) * 4 // 3, limit, limit * 3 // 4 - 2000)

    @property
    def max_frame_bytes(self) -> int:
        """The server's frame limit: from the last ``ready`` frame, else the default."""
        ready = self.conn.ready_frame if self.conn is not None else None
        if ready is not None and ready.limits is not None:
            return int(ready.limits.max_frame_bytes)
        with contextlib.suppress(ParleyError):
            known = self._store().read().get("max_frame_bytes")
            if isinstance(known, int) and known > 0:
                return known
        return DEFAULT_MAX_FRAME_BYTES

    # -- connection ------------------------------------------------------------------------------
    @property
    def ws_url(self) -> str:
        base = self.server.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        return base + "/ws"

    @property
    def connected(self) -> bool:
        return self.conn is not None and self.conn.connected

    async def connect(self, timeout: float = 20.0) -> None:
        """Open the WebSocket and fetch what waits in the inbox; unaccepted messages are
        resent behind it (new sends wait for them). Keeps reconnecting (with backoff)
        until :meth:`disconnect`."""
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
            on_state=self._on_state,
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
        self.keys.start_upkeep()  # prekeys rotated and checked while it stays connected
        await asyncio.wait_for(self._synced.wait(), timeout)

    async def disconnect(self) -> None:
        await self.keys.stop_upkeep()
        if self.conn is not None:
            await self.conn.close()
            self.conn = None

    def _on_state(self, state: str, detail: str) -> None:
        if state in ("connected", "disconnected"):
            # A new socket: until its sync is done, pushes move neither last_seq nor
            # acks (they run before on_ready's sync starts: see sync). A socket gone:
            # nothing of it still running (a sync's page failed with it) moves them.
            self._synced.clear()
        if state == "connected":
            self._flushed.clear()  # new sends wait for this socket's resend
        elif state == "disconnected":
            self._flushed.set()  # waiting sends leave it queued: the next socket resends
        self.events.emit(ConnectionEvent(state, detail))

    def _may_advance(self) -> bool:
        """Whether a pushed item may move ``last_seq`` and be acknowledged: only once
        this socket's sync is done and while none runs (see :meth:`sync`)."""
        return self._synced.is_set() and not self._syncing

    async def _on_ready(self, ready: f.Ready) -> None:
        if ready.limits is not None:
            self._pacer.configure(float(ready.limits.sends_per_s), int(ready.limits.send_burst))
            limit = int(ready.limits.max_frame_bytes)
            if self._store().read().get("max_frame_bytes") != limit:
                async with self._store().transaction() as tx:
                    tx.put("max_frame_bytes", limit)  # for sends made while offline
        await self.sync()
        self._spawn(self._resend_behind(self._pacer.generation))
        self._synced.set()
        if self._store().read().aside_count():
            self._aside_soon(now=True)  # the directory may answer again by now
        if self.moderation is not None and self.moderation.kept():
            # Tombstones kept for a key not published then: it may be by now.
            self.moderation.retry_soon(self._spawn, self._take_tombstone, now=True)
        await self._sync_rooms()

    async def _resend_behind(self, generation: int) -> None:
        """:meth:`_resend`, in its own task; a failure of this side (the local store)
        drops the socket as a failed ``on_ready`` does, and the next one resends. Opens
        the way for new sends when done, if its socket is still the one."""
        conn = self.conn
        try:
            await self._resend()
        except ConnectionClosed:
            pass  # the next connection resends what is still queued
        except Exception as exc:
            log.exception("resending the outbox failed")
            if conn is not None and conn is self.conn:
                await conn.drop(f"resending the outbox failed: {exc!r}")
        finally:
            if self._pacer.generation == generation:
                self._flushed.set()

    async def _sync_rooms(self) -> None:
        """The private rooms' logs after the inbox. A failure here drops nothing: the
        rooms' cursors move only with what was read, and a room's next push (or the
        next connection) reads the rest."""
        if self.room_hook is None:
            return
        try:
            await self.room_hook.sync_rooms()
        except Exception as exc:  # a bad page, the store: the next push or connect reads on
            log.warning("room logs not read: %r", exc)

    async def sync(self) -> int:
        """Page through the inbox after the last processed item; returns the number of
        pages read (each acknowledged as a whole).

        The cursor is the pages' own (``synced.last``), never the highest
        ``seq`` seen: a message pushed while a page is read has a later
        ``seq`` than the items still to page, and moving the cursor (or the
        stored ``last_seq``, or a cumulative ack) past them would skip them
        for good. While a sync runs, and on a new socket until its first sync
        is done, pushes neither move ``last_seq`` nor send acks; each page's end
        does both. A sync that fails drops the socket (the next one syncs again
        from ``last_seq``): acks after it would pass the items it did not read.
        """
        conn = self.conn
        if conn is None:
            raise ConnectionClosed("not connected")
        total = 0
        self._syncing += 1
        try:
            after = int(self._store().read().get("last_seq") or 0)
            while True:
                answer = await conn.request(f.Sync(after=after, limit=200), timeout=30)
                if isinstance(answer, f.Error):
                    raise ServerUnavailable(f"Sync failed: {answer.message}")
                if not isinstance(answer, f.Synced):
                    raise ServerUnavailable("Sync failed: unexpected answer.")
                total += 1
                if answer.last > after:
                    await self._ack(answer.last)
                    after = answer.last
                if not answer.more:
                    return total
        finally:
            self._syncing -= 1

    def _hold_pushes(self) -> Callable[[], None]:
        """Stop pushes from moving ``last_seq`` and acks (as a running sync does) until
        the returned function is called; calling it again does nothing."""
        self._syncing += 1
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self._syncing -= 1

        return release

    async def _resync(self, release: Callable[[], None] | None = None) -> None:
        """The inbox from the last processed item, then the rooms' logs (``resync``).
        ``release``: the hold the frame's handler put on pushes (:meth:`_hold_pushes`,
        before the next frame was read), let go once the sync is over. A sync that
        fails gives the socket up, and pushes move nothing until the next socket's
        sync is done."""
        conn = self.conn
        try:
            await self.sync()
        except ConnectionClosed:
            return  # the socket went away ("disconnected"): the next one syncs on ready
        except Exception as exc:
            # Items the sync did not read would be acknowledged by the next push's
            # cumulative ack: a new socket syncs again instead. Until then no push
            # (one still being handled included) moves last_seq.
            self._synced.clear()
            if not isinstance(exc, ParleyError | TimeoutError):
                log.exception("resync failed")  # the store: not the server's answer
            if conn is not None:
                await conn.drop(f"resync failed: {exc}")
            return
        finally:
            if release is not None:
                release()
        await self._sync_rooms()

    def _queued(self) -> list[f.Send | f.RoomSend]:
        out: list[f.Send | f.RoomSend] = []
        for raw in self._store().read().queued():
            with contextlib.suppress(msgspec.ValidationError, KeyError, TypeError):
                if "room_send" in raw:
                    out.append(msgspec.convert({**raw["room_send"], "op": "room_send"},
                                               f.RoomSend))  # fmt: skip
                else:
                    out.append(msgspec.convert({**raw["send"], "op": "send"}, f.Send))
        return out

    async def _resend(self) -> None:
        limit = self.max_frame_bytes
        frames = self._queued()
        self._resent = {frame.id for frame in frames}
        self._forget_refusals({frame.id for frame in frames})
        generation = self._pacer.generation
        for frame in frames:
            if not self.connected or self._pacer.generation != generation:
                return  # dropped meanwhile: the next connection resends the rest
            size = len(f.encode(frame))
            if size > limit:
                # Queued before the size check existed: the server can never take it.
                too_large = MessageTooLarge(size, limit, limit * 3 // 4 - 2000)
                await self.fail_queued(frame.id, too_large)
                self.events.emit(
                    ErrorEvent(
                        "frame_too_large",
                        f"A queued message ({size:,} bytes) is over the server's limit of "
                        f"{limit:,} bytes per frame: it was removed from the outbox.",
                    )
                )
                continue
            await self._send_paced(frame)

    async def wait_outbox(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds, while connected, for the server to accept
        what the outbox holds; returns how many are left (a one-shot command that closes
        at once would cut its own resends short: docs/client.md)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            ids = [frame.id for frame in self._queued()]
            # Not those the server refused until after the deadline (a full inbox: minutes).
            in_flight = [i for i in ids if self._held.get(i, 0.0) <= deadline]
            if not in_flight or not self.connected or loop.time() >= deadline:
                return len(ids)
            await asyncio.sleep(0.1)

    async def _send_paced(self, frame: f.Send | f.RoomSend) -> None:
        """Send at the server's advertised rate (:class:`_Pacer`); a dropped socket is
        nothing to report: the frame stays queued and the next connection resends it."""
        if not self.connected:
            return  # queued: the next connection's resend sends it (and takes the token)
        if not await self._pacer.take():
            return  # booked on a socket since closed: the new one's resend sends it
        if self.conn is not None:
            with contextlib.suppress(ConnectionClosed):
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
        if not self._may_advance():
            return  # the sync acknowledges page by page (see sync)
        if self._ack_task and not self._ack_task.done():
            return

        async def later() -> None:
            await asyncio.sleep(ACK_DELAY)
            if self.conn is not None and self._may_advance():
                with contextlib.suppress(ConnectionClosed):
                    await self.conn.send(f.Ack(seq=self._ack_pending))

        self._ack_task = self._spawn(later())

    # -- incoming ------------------------------------------------------------------------------
    async def _on_frame(self, frame: f.ServerFrames) -> None:
        if isinstance(frame, f.RoomMessage):
            if self.room_hook:
                await self.room_hook.on_room_message(frame)
        elif isinstance(frame, f.Message) and frame.room is not None:
            # A room's copy in this device's inbox (protocol 2): rooms have logs now.
            self._ack_soon(frame.seq)
        elif isinstance(frame, f.Message):
            await self._on_message(frame)
        elif isinstance(frame, RoomFrame) and self.room_hook:
            await self.room_hook.on_room_frame(frame)
        elif isinstance(frame, f.KeyChanged):
            await self._on_key_changed(frame)
        elif isinstance(frame, f.Tombstone):
            await self._on_tombstone(frame)
        elif isinstance(frame, f.Accepted | f.Stored | f.Delivered):
            await self._on_receipt(frame)
        elif isinstance(frame, f.Error):
            await self._on_error(frame)
        elif isinstance(frame, f.PrekeysLow):
            self.keys.on_prekeys_low()
        elif isinstance(frame, f.Resync):
            # The server lost frames it meant to push (its routing restarted):
            # page through the inbox again, off the reader (sync awaits replies).
            # Pushes stop moving last_seq and acks now, before the next frame is read
            # (a push right behind this one, in the same read buffer, is handled before
            # the task runs: had it moved last_seq, the sync would start after it and
            # the item whose push was lost would be skipped, then acknowledged).
            release = self._hold_pushes()
            self._spawn(self._resync(release)).add_done_callback(lambda _task: release())

    async def _on_message(self, frame: f.Message) -> None:
        """A 1:1 message (or a copy of one this account sent elsewhere).

        A message from a sending device not seen yet needs its device list first; if
        the key directory cannot answer now (no answer, 429, 5xx), the message is
        **kept aside** in the local store (in the transaction that moves the cursor)
        and acknowledged: the inbox reads on. So are later ones of that device while
        some are kept, so a device's messages are read in the order it sent them (its
        first one starts the session). They are read again when the directory answers
        (:meth:`_read_aside`): on the device's next message, after every sync, and
        every ``ASIDE_RETRY`` while some are kept. Past ``ASIDE_MAX`` kept, one is not
        processed (the socket drops; the next sync brings it again), as before: read
        as from an unknown device, it would be a "could not decrypt" line,
        acknowledged: lost for good to a short outage of the key directory."""
        sender, device = frame.from_, frame.from_device
        store = self._store().read()
        if frame.from_device in self._peer(store, sender).devices and not store.has_aside(
            sender, device
        ):
            await self._read_message(frame)
            return
        if store.is_aside(frame.server_id):
            await self._keep_aside(frame)  # a copy sent again: acknowledged, nothing asked
            return
        async with self._aside_lock:
            if not await self._device_known(sender, device):
                await self._keep_aside(frame)
                return
            await self._read_kept(sender, device)
            await self._read_message(frame)

    async def _device_known(self, sender: str, device: int) -> bool:
        """Whether ``device``'s messages can be read now: it is in ``sender``'s verified
        list, or the directory answered for good (a refusal, a list that does not
        verify: decrypting then fails and says so). False if it cannot answer now."""
        if device in self._peer(self._store().read(), sender).devices:
            return True
        loop = asyncio.get_running_loop()
        if self._unanswered > loop.time():
            return False  # it could not answer a moment ago: a backlog asks once a while
        try:
            # Not for long: the frame loop waits (a sync page's reply with it).
            async with asyncio.timeout(ASIDE_ASK_TIMEOUT):
                await self._refresh_peer(sender)  # it may have just been linked
        except (ParleyError, CryptoError, TimeoutError, OSError) as exc:
            if for_now(exc):
                log.info("device %s of %s not checked now: %r", device, sender, exc)
                self._unanswered = loop.time() + ASIDE_ASK_EVERY
                return False
        return True

    async def _keep_aside(self, frame: f.Message) -> None:
        seq = frame.seq
        async with self._store().transaction() as tx:
            if tx.has_message(frame.server_id) or tx.is_aside(frame.server_id):
                pass  # a copy sent again (an ack lost): acknowledged again
            elif tx.aside_count() >= ASIDE_MAX:
                raise ServerUnavailable(
                    f"{ASIDE_MAX} messages from new devices wait for their device lists "
                    "already; this one will be read again."
                )
            else:
                raw = msgspec.to_builtins(frame)
                tx.keep_aside(frame.server_id, frame.from_, frame.from_device, raw)
            if self._may_advance() and seq > int(tx.get("last_seq") or 0):
                tx.put("last_seq", seq)
        self._ack_soon(seq)
        self._aside_soon()

    async def _read_kept(self, sender: str, device: int) -> None:
        """Read the frames of one sending device kept aside, oldest first (each moved the
        cursor and was acknowledged when kept). One failing for a reason of this side
        raises (it stays, with those after it); one failing for what it holds is
        logged and dropped, as a live one is passed (kept, it would hold the device's
        later messages for good)."""
        kept = sorted(self._store().read().aside(sender, device), key=lambda r: int(r["seq"]))
        for raw in kept:  # in the inbox's order (a push may come before its sync page)
            try:
                await self._read_message(msgspec.convert(raw, f.Message), kept=True)
            except Exception as exc:
                if transient(exc):
                    raise
                log.exception("a message kept aside failed for what it holds: dropped")
                async with self._store().transaction() as tx:
                    tx.take_aside(str(raw.get("server_id")))

    def _aside_soon(self, now: bool = False) -> None:
        """Read what is kept aside after ``ASIDE_RETRY``'s first wait (``now``: at once),
        and keep trying, the wait doubling to its second, while some is kept."""
        if now:
            self._aside_wake.set()
        if self._aside_task is None or self._aside_task.done():
            self._aside_task = self._spawn(self._retry_aside())

    async def _retry_aside(self) -> None:
        wait, longest = ASIDE_RETRY
        while self._store().read().aside_count():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._aside_wake.wait(), wait)
            self._aside_wake.clear()
            try:
                left = await self._read_aside()
            except Exception:
                log.exception("reading the messages kept aside failed")
                left = True
            wait = min(wait * 2, longest) if left else ASIDE_RETRY[0]

    async def _read_aside(self) -> bool:
        """Read the frames kept aside whose devices can be checked now, each device's
        in order (:meth:`_read_kept`); True if some are still kept."""
        left = False
        devices = list(
            dict.fromkeys(
                (str(raw.get("from")), int(raw.get("from_device") or 0))
                for raw in self._store().read().aside()
            )
        )
        # Each round starts one further along: after a read that fails none is asked for
        # a moment, so one sender whose list keeps failing would hold every other's.
        self._aside_turn += 1
        turn = self._aside_turn % len(devices) if devices else 0
        for sender, device in devices[turn:] + devices[:turn]:
            # The directory asked outside the lock: the frame loop, waiting on it for
            # a new device's message, would wait for every read (and a sync page with it).
            try:
                if not await self._device_known(sender, device):
                    left = True
                    continue
                async with self._aside_lock:
                    await self._read_kept(sender, device)
            except Exception as exc:
                if not transient(exc):
                    raise
                log.warning("messages kept aside not read now: %r", exc)
                left = True
        return left

    async def _read_message(self, frame: f.Message, kept: bool = False) -> None:
        """Decrypt and record a message; ``kept``: one kept aside, which already moved
        the cursor and was acknowledged (it leaves the aside table in the same
        transaction that records it)."""
        seq, sender, server_id = frame.seq, frame.from_, frame.server_id
        me = self.account.user_id
        assert me is not None
        own = sender == me  # a copy of what we sent from another device
        peer = _other_party(frame.conversation, me) if own else sender
        name = await self.name_of(peer) if peer else sender[:8]
        event: Event | None = None
        later: list[Event] = []
        try:
            wire = b64decode(frame.body)
        except ValueError:
            wire = b""
        async with self._store().transaction() as tx:
            if not tx.has_message(server_id):
                state = self._peer(tx, sender)
                if not own:
                    state.username = name
                # This device's private state, parsed only for a first message (a new
                # session): every prekey it holds, which a message in a session the
                # contact already has does not need.
                device: Device | None = None

                def load_device() -> Device:
                    nonlocal device
                    if device is None:
                        device = self.keys.device(tx)
                        assert device is not None
                    return device

                entry: dict[str, Any] = {
                    "dir": "out" if own else "in",
                    "peer": peer,
                    "at": int(frame.sent_at or time.time() * 1000),
                    "server_id": server_id,
                    "seq": seq,
                    "device": frame.from_device,
                }
                try:
                    incoming = state.decrypt(
                        load_device, frame.from_device, wire,
                        me=(me, self.keys.known_device_id()),
                    )  # fmt: skip
                except ReplayedMessage:
                    incoming = None
                except (CryptoError, ValueError) as exc:
                    incoming = None
                    if peer:
                        entry.update(
                            kind="error", text=f"[could not decrypt: {type(exc).__name__}]"
                        )
                        tx.add_message(peer, entry, ref=server_id)
                    self._put_peer(tx, state)
                    event = DecryptFailed(peer or sender, name, type(exc).__name__)
                control = None if incoming is None else parse_control(incoming.message.plaintext)
                if incoming is not None and control is not None:
                    # A room's sender key (or another control payload): never a chat line.
                    if self.room_hook is not None:
                        later = self.room_hook.on_control(tx, sender, frame.from_device, control)
                    tx.add_message(CONTROL_CONV, {"kind": "control"}, ref=server_id)
                    self._put_peer(tx, state)
                    if incoming.new_session:
                        tx.put_bytes("device", load_device().to_bytes())
                    incoming = None
                if incoming is not None:
                    text = incoming.message.plaintext.decode("utf-8", errors="replace")
                    entry.update(kind="message", text=text)
                    if own:
                        entry["status"] = "sent"
                    else:
                        decrypted = incoming.message
                        report = report_fields(
                            frame, decrypted.franking_key, decrypted.plaintext, text
                        )
                        if report is not None:
                            entry["report"] = report
                    if peer:
                        tx.add_message(peer, entry, ref=server_id)
                    self._put_peer(tx, state)
                    if incoming.new_session:
                        tx.put_bytes("device", load_device().to_bytes())
                    if not own:
                        event = Message(sender, name, text, entry["at"], server_id, seq)
                    elif peer:
                        event = SentElsewhere(peer, text, entry["at"], server_id, frame.from_device)
            if kept:
                tx.take_aside(server_id)
            elif self._may_advance() and seq > int(tx.get("last_seq") or 0):
                tx.put("last_seq", seq)
        if event is not None:
            self.events.emit(event)
        for late in later:
            self.events.emit(late)
        if not kept:
            self._ack_soon(seq)

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
        """A contact reset their account identity: take their new list (the warning,
        if the key is not the one we trust, comes from :meth:`_refresh_peer`)."""
        seq, peer_id, server_id = frame.seq, frame.user_id, frame.server_id
        if self._store().read().peer(peer_id) is not None:
            with contextlib.suppress(ParleyError, CryptoError):
                await self._refresh_peer(peer_id)
        async with self._store().transaction() as tx:
            tx.has_message(server_id)
            if self._may_advance() and seq > int(tx.get("last_seq") or 0):
                tx.put("last_seq", seq)
        if seq:
            self._ack_soon(seq)

    async def _on_tombstone(self, frame: f.Tombstone) -> None:
        """A message was removed: once its signature verifies, hide it (the history
        entry becomes a "removed" marker; docs/moderation-messages.md). One signed with
        a key not published (yet) is kept and tried again (``Moderation.keep``); both
        are acknowledged."""
        unknown_key = False
        try:
            valid = self.moderation is not None and await self.moderation.verify(frame)
        except UnknownTombstoneKey:
            valid, unknown_key = False, True
        event: Event | None = None
        async with self._store().transaction() as tx:
            if valid:
                event = self._take_tombstone(tx, frame)
            elif unknown_key and self.moderation is not None:
                self.moderation.keep(tx, frame)
            if self._may_advance() and frame.seq > int(tx.get("last_seq") or 0):
                tx.put("last_seq", frame.seq)
        if event is not None:
            self.events.emit(event)
        self._ack_soon(frame.seq)
        if unknown_key and self.moderation is not None:
            self.moderation.retry_soon(self._spawn, self._take_tombstone)

    def _take_tombstone(self, tx: Transaction, frame: f.Tombstone) -> Event | None:
        """A verified tombstone in the history, once (``tombstone:<server id>``)."""
        marker = f"tombstone:{frame.server_id}"
        if self.moderation is None or tx.has_message(marker):
            return None
        event = self.moderation.apply(tx, frame)
        tx.add_message(CONTROL_CONV, {"kind": "control"}, ref=marker)
        return event

    async def _on_receipt(self, frame: f.Accepted | f.Stored | f.Delivered) -> None:
        """Receipts are written in batches, off the reader: those read while a batch is
        being written make the next one (:meth:`_write_receipts`)."""
        self._receipts.append(frame)
        if self._receipts_task is None or self._receipts_task.done():
            self._receipts_task = self._spawn(self._write_receipts())

    async def _write_receipts(self) -> None:
        """``accepted`` once; ``stored``/``delivered`` per device: the message counts as
        stored (delivered) when the first of the recipient's devices has (acked) it.
        Receipts about the copies for our own other devices are not news, but in a
        note to ourselves those devices are the recipient. Each batch is one
        transaction; its waiters are told once it is written."""
        while self._receipts:
            frames, self._receipts = self._receipts, []
            me = self.account.user_id
            news = [
                frame
                for frame in frames
                if isinstance(frame, f.Accepted)
                or frame.to != me
                or frame.conversation == conversation_id(str(me), str(me))
            ]
            try:
                async with self._store().transaction() as tx:
                    for frame in news:
                        _record_receipt(tx, frame)
            except (StoreError, sqlite3.Error):
                # Not written: those still in the outbox go again at the next connect
                # (the server answers a repeat with the same receipts).
                log.exception("receipts not recorded")
                continue
            for frame in news:
                client_id = frame.id
                status = str(type(frame).__struct_config__.tag)
                out = self._outgoing.get(client_id)
                peer = out.peer_id if out else getattr(frame, "to", "")
                if out is not None:
                    for fut in (
                        (out.accepted,) if status == "accepted" else (out.accepted, out.stored)
                    ):
                        if not fut.done():
                            fut.set_result(status)
                    if status != "accepted" or not out.wants_stored:
                        # Nothing waits for more (later receipts name their peer in
                        # ``to``): kept, a long-running client kept every message's.
                        self._outgoing.pop(client_id, None)
                self.events.emit(Receipt(client_id, peer, status))

    async def _on_error(self, frame: f.Error) -> None:
        code, message, client_id = frame.code, frame.message, frame.id
        if code == "reauth_required":
            return  # the token ran out: the connection reconnects with a fresh one (4005)
        out = self._outgoing.get(client_id) if client_id else None
        if client_id and code == "devices_changed":
            # Someone linked or removed a device: encrypt for the current devices and
            # send again with the same id (nothing was stored).
            self._spawn(self._redo(client_id, frame.devices))
            return
        if client_id and code in _SEND_AGAIN:
            if client_id in self._copies and code in ("inbox_full", "too_many_pending"):
                pass  # a room key send: fails at once with the reason (below), as before
            elif self._store().read().is_queued(client_id):
                # Nothing was stored: kept in the outbox and sent again with the same id,
                # later (or by the next connection's resend). Whoever waits keeps waiting.
                self._hold(client_id, code)
                if code != "rate_limited":  # the user should know why it has not gone yet
                    self.events.emit(ErrorEvent(code, f"{message} (kept; sent again later)"))
                return
            else:
                return  # a request's answer (a sync's): its waiter has it
        if client_id:
            async with self._store().transaction() as tx:
                if tx.unqueue(client_id):
                    tx.update_message(client_id, status="failed", error=message)
        if out is not None and client_id:
            for fut in (out.accepted, out.stored):
                if not fut.done():
                    fut.set_exception(ApiError(code, message))
                    fut.exception()
            self._outgoing.pop(client_id, None)
            self.events.emit(Receipt(client_id, out.peer_id, "failed", message))
        self.events.emit(ErrorEvent(code, message))

    async def _redo(self, client_id: str, lists: list[f.DeviceList] | None = None) -> None:
        queued = next(
            (
                q for q in self._store().read().queued()
                if (q.get("send") or q.get("room_send") or {}).get("id") == client_id
            ),
            None,
        )  # fmt: skip
        if queued is None:
            return
        frame: f.Send | f.RoomSend
        try:
            if "room_send" in queued:
                if self.room_hook is None:
                    return
                frame = await self.room_hook.redo_room_send(client_id, queued, lists or [])
            else:
                control = queued.get("control")
                frame = await self._encrypt(
                    str(queued["peer"]), str(queued.get("text") or ""), client_id, refresh=True,
                    payload=None if control is None else b64decode(str(control)),
                )  # fmt: skip
                if client_id in self._copies:  # a control send waits: these get it now
                    self._copies[client_id] = {(c.user, int(c.device)) for c in frame.copies}
        except TimeoutError:
            # Its room's keys could not be handed out in time (a slow socket): kept, and
            # tried again later (the task ended here, and the message waited for the
            # next connection).
            self._hold(client_id, "service_unavailable")
            return
        except NotQueued:
            return  # dropped or failed meanwhile: it stays so
        except ParleyError as exc:
            if for_now(exc):
                # The key directory could not answer now (no answer, 429, 5xx): kept and
                # tried again later (it failed for good, never accepted: lost to a blip).
                self._hold(client_id, "service_unavailable")
                return
            # Not sendable as it is (e.g. the contact's identity changed): it leaves the
            # outbox as failed rather than waiting there for ever.
            await self.fail_queued(client_id, exc)
            if not isinstance(exc, SafetyNumberChanged):  # the caller of send has it
                self.events.emit(ErrorEvent("devices_changed", f"Could not send again: {exc}"))
            return
        await self._send_paced(frame)

    async def fail_queued(self, client_id: str, exc: Exception) -> None:
        """A queued message that cannot be sent leaves the outbox as failed; whoever
        waits for its ``accepted`` gets ``exc``."""
        async with self._store().transaction() as tx:
            if tx.unqueue(client_id):
                tx.update_message(client_id, status="failed", error=str(exc))
        out = self._outgoing.pop(client_id, None)
        if out is not None:
            for fut in (out.accepted, out.stored):
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()
            self.events.emit(Receipt(client_id, out.peer_id, "failed", str(exc)))

    def _forget_refusals(self, queued: set[str]) -> None:
        """Drop the refusal counts of messages no longer queued (accepted or dropped)."""
        for cid in [c for c in self._refusals if c not in queued]:
            del self._refusals[cid]

    def _hold(self, client_id: str, code: str) -> None:
        """Send a refused message again later: at once but paced for ``rate_limited``,
        else after a wait that doubles with each refusal of it (``_SEND_AGAIN``)."""
        first, cap = _SEND_AGAIN[code]
        if code == "rate_limited":
            self._pacer.drain()
        tries = self._refusals[client_id] = self._refusals.get(client_id, 0) + 1
        wait = min(cap, first * 2 ** (tries - 1))
        self._held[client_id] = asyncio.get_running_loop().time() + wait
        self._held_changed.set()  # a sleeping round wakes: this one may be due sooner
        if self._held_task is None or self._held_task.done():
            self._held_task = self._spawn(self._send_held())

    async def _send_held(self) -> None:
        """The one task that sends held messages again as they fall due (the outbox is
        read once per round, not once per refusal)."""
        loop = asyncio.get_running_loop()
        while self._held:
            self._held_changed.clear()
            wait = max(0.0, min(self._held.values()) - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._held_changed.wait(), wait)
                continue  # another was held meanwhile: sleep to the earliest again
            now = loop.time()
            due = {cid for cid, at in self._held.items() if at <= now}
            for cid in due:
                del self._held[cid]
            frames = self._queued()
            self._forget_refusals({frame.id for frame in frames})
            if not self.connected:
                self._held.clear()  # the next connection resends the whole outbox
                return
            for frame in frames:
                if frame.id in due:
                    await self._send_paced(frame)

    # -- sending ------------------------------------------------------------------------------
    async def send(
        self,
        username_or_id: str,
        text: str,
        *,
        wait: str | None = "accepted",
        timeout: float = 30,
        accept_new_identity: bool = False,
    ) -> str:
        """Encrypt ``text`` for every device of a contact and for our own other devices,
        and send it; returns the client message id. To our own username it is a note
        to self: it goes to our other devices (there must be one), as a contact's
        message would, and they acknowledge it as its recipients.

        ``wait``: ``"accepted"`` (default; durable in the server's log),
        ``"stored"`` (in one of the recipient's inboxes) or ``None``.  Without a
        connection the message waits in the outbox and goes out on the next
        connect.  A device without a session gets a PQXDH session from a claimed
        bundle, verified against the contact's signed device list; a contact
        whose account key changed is warned about (:class:`KeyChanged`).  If the
        server says the device lists changed, the message is encrypted again
        for the current devices and resent with the same id (docs/devices.md).

        Identity policy: if the contact's identity key changed since the user last
        accepted or verified it, nothing is sent and :class:`SafetyNumberChanged`
        is raised.  ``accept_new_identity=True`` accepts the change first, but only
        for a contact the user had not verified: a verified contact's change needs
        :meth:`accept_identity` or :meth:`verify`.
        """
        self.check_text(text)
        peer_id, name = await self.resolve(username_or_id)
        client_id = uuid.uuid4().hex
        frame = await self._encrypt(
            peer_id, text, client_id, name=name, accept_new_identity=accept_new_identity
        )
        return await self.submit(frame, peer_id, wait=wait, timeout=timeout)

    async def send_control(
        self, peer_id: str, payload: bytes, timeout: float = 30,
        bundles: dict[tuple[str, int], PrekeyBundle] | None = None,
        accept_new_identity: bool = False,
    ) -> set[tuple[str, int]]:  # fmt: skip
        """Send a control payload (:func:`encode_control`, e.g. a room's sender key) to
        every device of ``peer_id`` (a user id) and our other devices, over the pairwise
        sessions; waits for ``accepted``.  Nothing enters the history. ``bundles``:
        claimed already (:meth:`claim_missing`) for devices with no session yet.

        Returns the (user, device) pairs the accepted copy was encrypted for: what
        got it, which the device lists as they are by then need not say (a device
        linked meanwhile and learned of by another route did not)."""
        client_id = uuid.uuid4().hex
        frame = await self._encrypt(
            peer_id, "", client_id, payload=payload, bundles=bundles,
            accept_new_identity=accept_new_identity,
        )  # fmt: skip
        self._copies[client_id] = {(c.user, int(c.device)) for c in frame.copies}
        try:
            await self.submit(frame, peer_id, wait="accepted", timeout=timeout, in_turn=False)
            return self._copies.get(client_id, set())
        finally:
            self._copies.pop(client_id, None)

    async def submit(
        self, frame: f.Send | f.RoomSend, peer: str, *, wait: str | None = "accepted",
        timeout: float = 30, in_turn: bool = True,
    ) -> str:  # fmt: skip
        """Send a frame already queued in the outbox; wait for its ``accepted`` (or
        ``stored``) answer if asked to.  Returns its client id. ``in_turn``: after the
        outbox's resend, if one runs (False: a room's key hand-out, which the room's
        messages queued behind it wait for)."""
        client_id = frame.id
        loop = asyncio.get_running_loop()
        out = _Outgoing(loop.create_future(), loop.create_future(), peer,
                        wants_stored=wait == "stored")  # fmt: skip
        self._outgoing[client_id] = out
        deadline = loop.time() + timeout
        # Its own task: a caller that stops waiting (timeout, cancelled) leaves the
        # message going out in its turn on this socket, not only at the next one.
        sending = self._spawn(self._send_in_turn(frame) if in_turn else self._send_paced(frame))
        if wait is None:
            return client_id  # queued, and going in its turn
        try:
            await asyncio.wait_for(asyncio.shield(sending), timeout)
        except asyncio.CancelledError as cancelled:
            task = asyncio.current_task()
            if sending.cancelled() and (task is None or not task.cancelling()):
                # The client closed under it (its tasks are cancelled), not this caller.
                closed = "The client closed: the message waits in the outbox."
                raise ConnectionClosed(closed) from cancelled
            raise
        fut = out.stored if wait == "stored" else out.accepted
        if self.conn is None:
            raise ConnectionClosed("Not connected: the message waits in the outbox.")
        if self.conn.failed is not None and not for_now(self.conn.failed):
            # Closed for good (session ended, account blocked): no answer will come. A
            # connection that is only away (the network, the auth service) is waited
            # for: the message is queued, and a timeout says so (never "failed": sent
            # again by hand, it would arrive twice).
            raise self.conn.failed
        await asyncio.wait_for(asyncio.shield(fut), max(0.0, deadline - loop.time()))
        return client_id

    async def _send_in_turn(self, frame: f.Send | f.RoomSend) -> None:
        """Behind this socket's resend of the outbox (a new send goes after the messages
        queued before it: one peer sees them in the order they were written), then
        paced. A new socket meanwhile: its resend sends it (queued before it read the
        outbox); one the resend sent already is not sent twice."""
        generation, waited = self._pacer.generation, False
        while self.connected and not self._flushed.is_set():
            waited = True
            await self._flushed.wait()
        if waited and (self._pacer.generation != generation or frame.id in self._resent):
            return
        await self._send_paced(frame)

    async def _encrypt(
        self, peer_id: str, text: str, client_id: str, *, name: str | None = None,
        refresh: bool = False, accept_new_identity: bool = False, payload: bytes | None = None,
        bundles: dict[tuple[str, int], PrekeyBundle] | None = None,
    ) -> f.Send:  # fmt: skip
        """:meth:`_encrypt_now`, one at a time per peer: the first send to a new contact
        claims and makes the sessions, the ones waiting behind it find them."""
        lock = self._peer_locks.setdefault(peer_id, asyncio.Lock())
        async with lock:
            return await self._encrypt_now(
                peer_id, text, client_id, name=name, refresh=refresh,
                accept_new_identity=accept_new_identity, payload=payload, claimed=bundles,
            )  # fmt: skip

    async def _encrypt_now(
        self, peer_id: str, text: str, client_id: str, *, name: str | None = None,
        refresh: bool = False, accept_new_identity: bool = False, payload: bytes | None = None,
        claimed: dict[tuple[str, int], PrekeyBundle] | None = None,
    ) -> f.Send:  # fmt: skip
        """Encrypt one message for every device it goes to and queue it in the outbox
        (replacing an earlier version of it: a resend after ``devices_changed``).
        With ``payload`` (a control payload) that is what is encrypted, and no
        history entry is made. ``claimed``: bundles claimed already (the devices
        without a session that it has are not claimed again)."""
        me = self.account.user_id
        assert me is not None
        my_device = self.keys.known_device_id()
        read = self._store().read()
        if peer_id != me and (refresh or not self._peer(read, peer_id).devices):
            await self._refresh_peer(peer_id)
        mine = set(self._peer(read, me).devices)
        if refresh or not mine or (peer_id == me and not mine - {my_device}):
            await self._refresh_peer(me)  # (a note to self: a device linked since?)
        await self._identity_gate(peer_id, name, accept_new_identity)
        users = (me,) if peer_id == me else (peer_id, me)  # a note to self: our devices
        bundles: dict[tuple[str, int], PrekeyBundle] = {}
        given = claimed or {}
        for user in users if given else ():  # the few it needs, not a copy of them all
            for d in self._peer(read, user).devices:
                if (got := given.get((user, d))) is not None:
                    bundles[(user, d)] = got
        for user in users:
            # A claim's answer carries the current list, which may name devices we
            # did not know of yet: claim for those too (a few rounds at most).
            for _round in range(3):
                state = self._peer(self._store().read(), user)
                missing = [
                    d for d in state.missing_sessions()
                    if (user, d) != (me, my_device) and (user, d) not in bundles
                ]  # fmt: skip
                if not missing:
                    break
                answer = await self.keys.claim(user, missing)
                try:
                    state = await self._refresh_peer(user, answer)
                    for raw in answer.get("bundles", []):
                        bundle = PrekeyBundle.from_json(raw)
                        state.check_device(int(raw["device_id"]), bundle.identity)
                        bundles[(user, int(raw["device_id"]))] = bundle
                except CryptoError as exc:
                    raise UntrustedKeys(
                        "The key directory served keys that the account's signed device "
                        f"list does not vouch for ({exc}): nothing was sent."
                    ) from exc
        plaintext = text.encode() if payload is None else payload
        copies: list[f.Copy] = []
        async with self._store().transaction() as tx:
            if refresh and not tx.is_queued(client_id):
                raise NotQueued(client_id)  # dropped or failed while its redo read keys
            # Parsed only if a session starts (the common message needs no device keys).
            device: Device | None = None
            # Checked again inside the transaction that encrypts: a key change seen
            # by a claim above (or by another process) stops the message here.
            self._check_identity(self._peer(tx, peer_id), name)
            for user in users:
                state = self._peer(tx, user)
                if user == peer_id and name is not None:
                    state.username = name
                for did in sorted(state.devices):
                    if (user, did) == (me, my_device):
                        continue
                    if state.has_session(did):
                        wire = state.encrypt(did, plaintext)
                    elif (user, did) in bundles:
                        device = device or self.keys.device_to_send(tx)
                        session, wire = Session.initiate(
                            device, bundles[(user, did)], plaintext,
                            binding=Binding(me, my_device, user, did),
                        )  # fmt: skip
                        state.start(did, session)
                    else:
                        raise ParleyError(f"No keys for device {did} of {user}: try again.")
                    copies.append(
                        f.Copy(user=user, device=did, body=b64encode(wire),
                               commitment=b64encode(commitment_from_message(wire)))
                    )  # fmt: skip
                self._put_peer(tx, state)
            if not any(c.user == peer_id for c in copies):
                raise ParleyError(
                    "A note to yourself goes to your other devices, and this is the only one."
                    if peer_id == me
                    else "That contact has no device to send to."
                )
            frame = f.Send(id=client_id, to=peer_id, copies=copies)
            size, limit = len(f.encode(frame)), self.max_frame_bytes
            if size > limit:
                # Raised inside the transaction: the ratchet steps above are undone and
                # nothing is queued (the server would refuse the frame).
                per_copy = (size - limit) * 3 // (4 * len(copies)) + 1
                raise MessageTooLarge(size, limit, len(plaintext) - per_copy)
            if payload is None and not tx.has_message(client_id):
                entry = {
                    "dir": "out",
                    "kind": "message",
                    "peer": peer_id,
                    "text": text,
                    "at": int(time.time() * 1000),
                    "client_id": client_id,
                    "status": "queued",
                }
                server_id = message_server_id(me, client_id)
                tx.add_message(peer_id, entry, ref=client_id, ids=(server_id,))
                tx.put(alias_key(server_id), client_id)
            queued: dict[str, Any] = {"send": msgspec.to_builtins(frame), "peer": peer_id,
                                      "text": text}  # fmt: skip
            if payload is not None:
                queued.update(text=None, control=b64encode(payload))
            tx.queue(client_id, queued)
        return frame


SELF_PEER = "self_peer"


class UntrustedKeys(ParleyError):
    """The directory's answer failed the checks against the signed device list."""


class NotQueued(ParleyError):
    """A resend's message left the outbox while it was encrypted again (dropped, or
    failed): not queued again, not sent."""


def _frame_bytes(send: dict[str, Any], op: str = "send") -> bytes:
    """The encoded size of a queued ``send`` (``room_send``) frame, as the socket would
    send it."""
    kind: type[f.Send | f.RoomSend] = f.Send if op == "send" else f.RoomSend
    with contextlib.suppress(msgspec.ValidationError, TypeError):
        return f.encode(msgspec.convert({**send, "op": op}, kind))
    return b""


CONTROL_MARK = "\x00"
CONTROL_PREFIX = b"\x00parley-control\x00"
"""Plaintexts that start with this are control payloads (JSON after it), never chat
lines: the SDK refuses texts that start with NUL, so no message can look like one."""
CONTROL_CONV = "control:"
"""The hidden history "conversation" that records control payloads' server ids (dedup)."""


def encode_control(obj: dict[str, Any]) -> bytes:
    return CONTROL_PREFIX + json.dumps(obj, separators=(",", ":")).encode()


def parse_control(plaintext: bytes) -> dict[str, Any] | None:
    """The control payload in a decrypted plaintext, or None for a chat message."""
    if not plaintext.startswith(CONTROL_PREFIX):
        return None
    try:
        # orjson stops at 1,024 levels: a peer's deeply nested payload is invalid,
        # where ``json`` raised RecursionError and the frame was never acknowledged.
        obj = orjson.loads(plaintext[len(CONTROL_PREFIX) :])
    except ValueError:
        return {"t": "invalid"}
    return obj if isinstance(obj, dict) else {"t": "invalid"}


class RoomHook(Protocol):
    """What the messenger hands to the rooms part (:class:`parley.rooms.Rooms`)."""

    async def on_room_message(self, frame: f.RoomMessage) -> None: ...

    async def sync_rooms(self) -> int: ...

    async def on_room_frame(self, frame: RoomFrame) -> None: ...

    async def redo_room_send(
        self, client_id: str, queued: dict[str, Any], lists: list[f.DeviceList]
    ) -> f.RoomSend: ...

    def on_control(
        self, tx: Transaction, sender: str, device: int, control: dict[str, Any]
    ) -> list[Event]: ...


def _other_party(conversation: str | None, me: str) -> str | None:
    """The contact of a 1:1 conversation id ``dm:<a>:<b>``."""
    if not conversation or not conversation.startswith("dm:"):
        return None
    parts = conversation.split(":")
    if len(parts) != 3 or me not in parts[1:]:
        return None
    return parts[2] if parts[1] == me else parts[1]
