"""What a client keeps per contact: the account key it trusts, the contact's verified
device list, and one set of pairwise sessions per device (docs/devices.md).

Plain synchronous logic over :mod:`parley.crypto` (the async client runs it
inside store transactions; the Locust scenario runs it in memory).

Trust: the contact's **account identity key** is trusted on first use (it is
what the safety number is made of); every device is trusted only if the
device list signed by that key names it with exactly the identity it
presents. A device the list does not name, or a list that does not verify,
is refused whatever the key directory says.

Identity-change policy (docs/client.md, "Identity changes"): a changed
account key is recorded as a *pending change* (with the safety number of the
last key the user accepted) and sending to the contact stops until the user
accepts the new key (:meth:`PeerState.accept`) or compares safety numbers and
marks it verified (:meth:`PeerState.mark_verified`). A contact whose
previous key the user had verified is flagged so, and user interfaces ask
for more than a "yes" then.

Several sessions per device, newest first, as in Signal: when both sides
start a session at the same moment, each receives the other's initial
message. Each then keeps both sessions, sends on the one it used last, and
tries every session when a message arrives; the one that decrypts becomes
current. At most :data:`MAX_SESSIONS` are kept per device. A session is used only
with the identity the verified list names for its device id: a list that gives a
device id new keys ends that device's sessions (docs/crypto.md, "Device lists and
linking").

An initial message naming a one-time prekey already consumed (``PrekeyReused``)
is a replay only if it repeats a handshake this device answered
(:data:`ANSWERED_KEPT` remembered per contact); otherwise it is another
initiator's message that cannot be read (a directory handed the prekey out
twice), and fails as such (docs/crypto.md, "PQXDH").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from parley.crypto import (
    Binding,
    CryptoError,
    DecryptedMessage,
    Device,
    PrekeyReused,
    PublicIdentity,
    ReplayedMessage,
    Session,
    SignedDeviceList,
    format_safety_number,
    initial_message_digest,
    is_initial_message,
    safety_number,
)
from parley.crypto.encoding import b64decode, b64encode

__all__ = [
    "ANSWERED_KEPT",
    "MAX_SESSIONS",
    "AccountChanged",
    "Incoming",
    "PeerState",
    "UnknownDevice",
]

MAX_SESSIONS = 4
ANSWERED_KEPT = 32
"""Handshakes (digests of their PQXDH fields) remembered per contact, to tell a replayed
initial message from another initiator's: more than the sessions kept for a contact's
devices; a replay of an older one fails as ``PrekeyReused`` (a "could not decrypt"
line), never decrypts."""


class UnknownDevice(CryptoError):
    """A device the contact's verified device list does not name (or names with
    another identity)."""


@dataclass
class AccountChanged:
    """The contact's account identity key is not the one we trusted (a reset, or
    someone in the middle): the old and new safety numbers, for the warning."""

    old_safety_number: str | None
    new_safety_number: str


@dataclass
class Incoming:
    """The result of :meth:`PeerState.decrypt`."""

    message: DecryptedMessage
    new_session: bool


KEY_VERSIONS_KEPT = 8


@dataclass
class PeerState:
    user_id: str
    username: str | None = None
    account_key: str | None = None  # the account key we trust (TOFU), base64url
    list_version: int = 0
    devices: dict[int, dict[str, str]] = field(default_factory=dict)
    """device id -> {"name", "signing_key", "dh_key"} from the verified device list."""
    sessions: dict[int, list[bytes]] = field(default_factory=dict)  # per device, newest first
    verified_key: str | None = None
    """The account key the user compared safety numbers for (``parley verify``)."""
    pending_change: dict[str, Any] | None = None
    """An account key change the user has not accepted yet:
    ``{"old_key", "old_safety_number", "was_verified"}``; sending waits for it."""
    key_versions: dict[str, int] = field(default_factory=dict)
    """The newest list version taken under each account key this contact has had (the
    last ``KEY_VERSIONS_KEPT``): a directory that switches to another key and back must
    not bring back an older list of the first (a removed device) with it."""
    answered: list[str] = field(default_factory=list)
    """Base64url digests of the PQXDH fields of the last ``ANSWERED_KEPT`` initial
    messages from this contact that started a session here, oldest first."""

    # -- persistence ------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "username": self.username,
            "account_key": self.account_key,
            "list_version": self.list_version,
            "devices": {str(d): e for d, e in self.devices.items()},
            "sessions": {str(d): [b64encode(s) for s in ss] for d, ss in self.sessions.items()},
            "verified_key": self.verified_key,
            "pending_change": self.pending_change,
            "key_versions": self.key_versions,
            "answered": self.answered,
            "sessions_checked": True,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> PeerState:
        sessions = obj.get("sessions") or {}
        if not isinstance(sessions, dict):  # a 0.1 store: one device, sessions as a list
            sessions = {}
        state = cls(
            user_id=obj["user_id"],
            username=obj.get("username"),
            account_key=obj.get("account_key"),
            list_version=int(obj.get("list_version") or 0),
            devices={int(d): dict(e) for d, e in (obj.get("devices") or {}).items()},
            sessions={int(d): [b64decode(s) for s in ss] for d, ss in sessions.items()},
            verified_key=obj.get("verified_key"),
            pending_change=obj.get("pending_change"),
            key_versions={str(k): int(v) for k, v in (obj.get("key_versions") or {}).items()}
            # A store from before: the trusted key's is its list's version.
            or ({obj["account_key"]: int(obj.get("list_version") or 0)}
                if obj.get("account_key") else {}),
            answered=[str(a) for a in obj.get("answered") or []],
        )  # fmt: skip
        if not obj.get("sessions_checked"):
            # Written before sessions were checked against their list entries: one
            # kept after the list gave its device id new keys goes now (once: the
            # state is written back with the flag).
            state._drop_unlisted_sessions(set(state.sessions))
            # ``answered`` was not kept then: the handshakes of the sessions kept are
            # known from their initial digests, so a later initial-type message of one
            # (sent before our answer reached its initiator) stays a replay once that
            # session is evicted, as it was before, not a "could not decrypt" line.
            state._answer_kept_sessions()
        return state

    def _answer_kept_sessions(self) -> None:
        """Add the initial digest of every kept session that has one (those the contact
        started) to ``answered``, each once, oldest first, the last ``ANSWERED_KEPT``."""
        for sessions in self.sessions.values():
            for raw in reversed(sessions):  # newest first: the oldest is answered first
                try:
                    digest = Session.from_bytes(raw).initial_digest
                except CryptoError:
                    continue  # unreadable: it started nothing this device can tell
                if digest is not None and (entry := b64encode(digest)) not in self.answered:
                    self.answered.append(entry)
        del self.answered[:-ANSWERED_KEPT]

    # -- trust ------------------------------------------------------------------
    def safety_number(self, local_account_key: bytes, local_user_id: str) -> str | None:
        if self.account_key is None:
            return None
        return format_safety_number(
            safety_number(
                local_account_key, local_user_id, b64decode(self.account_key), self.user_id
            )
        )

    @property
    def verified(self) -> bool:
        """The user compared safety numbers for the account key we trust now."""
        return self.account_key is not None and self.verified_key == self.account_key

    def accept(self) -> None:
        """Accept the current account key without comparing safety numbers: sending
        resumes; the contact is not verified (any more)."""
        self.pending_change = None

    def mark_verified(self, account_key: str) -> None:
        """The user compared the safety number of ``account_key`` with the contact's:
        it must still be the key we trust (not one that changed meanwhile)."""
        if self.account_key is None or account_key != self.account_key:
            raise UnknownDevice("the contact's identity changed while it was being verified")
        self.verified_key = account_key
        self.pending_change = None

    def trust(
        self,
        account_key: str,
        signed: SignedDeviceList,
        local_account_key: bytes,
        local_user_id: str,
    ) -> AccountChanged | None:
        """Take a device list from the directory.

        The list must verify with ``account_key`` and name this contact. A
        first account key is trusted on first use; a different one replaces
        the trusted one and is returned as :class:`AccountChanged` (every
        session is dropped: they were with devices of the old account). A list
        older than the one we hold is refused (a replayed list could bring back
        a removed device), also under a key the contact had before: a directory
        switching to another key and back must not bring back an older list of
        the first (``key_versions``). Sessions with devices no longer listed are
        dropped, and so are those whose peer identity is not the one the list
        now names for their device id (the account gave that id new keys: the
        old ones are no longer its device).
        """
        listing = signed.verify(b64decode(account_key), user_id=self.user_id)
        same = self.account_key in (None, account_key)
        if listing.version < (self.list_version if same else self.key_versions.get(account_key, 0)):
            raise UnknownDevice("the directory served an older device list than we hold")
        changed: AccountChanged | None = None
        if self.account_key is not None and self.account_key != account_key:
            old = self.safety_number(local_account_key, local_user_id)
            previous = self.account_key
            self.account_key = account_key
            new = self.safety_number(local_account_key, local_user_id)
            assert new is not None
            changed = AccountChanged(old, new)
            self.sessions = {}
            if self.pending_change is None:
                self.pending_change = {
                    "old_key": previous,
                    "old_safety_number": old,
                    "was_verified": previous == self.verified_key,
                }
            elif self.pending_change.get("old_key") == account_key:
                self.pending_change = None  # back to the key the user had accepted
        elif self.account_key is None:
            self.account_key = account_key
        self.list_version = listing.version
        self.key_versions.pop(account_key, None)  # the newest last
        self.key_versions[account_key] = listing.version
        while len(self.key_versions) > KEY_VERSIONS_KEPT:
            del self.key_versions[next(iter(self.key_versions))]
        before = self.devices
        self.devices = {
            d.device_id: {
                "name": d.name,
                "signing_key": b64encode(d.signing_key),
                "dh_key": b64encode(d.dh_key),
            }
            for d in listing.devices
        }
        self.sessions = {d: s for d, s in self.sessions.items() if d in self.devices}
        # A session is only ever kept with the identity its device's entry names, so
        # only the devices whose entry changed need their sessions read.
        self._drop_unlisted_sessions(
            {d for d in self.sessions if _keys(before.get(d)) != _keys(self.devices[d])}
        )
        return changed

    def _lists(self, device_id: int, identity: PublicIdentity) -> bool:
        """The verified list names ``device_id`` with exactly ``identity``."""
        entry = self.devices.get(device_id)
        return (
            entry is not None
            and b64decode(entry["signing_key"]) == identity.signing_key
            and b64decode(entry["dh_key"]) == identity.dh_key
        )

    def _drop_unlisted_sessions(self, device_ids: set[int]) -> None:
        """Drop the sessions of these devices whose peer is not the identity the list
        names for the device, or cannot be read (and the devices' lists of sessions
        left empty)."""

        def listed(device_id: int, raw: bytes) -> bool:
            try:
                return self._lists(device_id, Session.peer_identity_of(raw))
            except CryptoError:
                return False  # unreadable: it could never encrypt or decrypt

        for d in device_ids:
            kept = [s for s in self.sessions[d] if listed(d, s)]
            if kept:
                self.sessions[d] = kept
            else:
                del self.sessions[d]

    def check_device(self, device_id: int, identity: PublicIdentity) -> None:
        """Raise :class:`UnknownDevice` unless the verified list names this device with
        exactly this identity."""
        if not self._lists(device_id, identity):
            raise UnknownDevice(f"device {device_id} of {self.user_id} is not in its device list")

    # -- messages ---------------------------------------------------------------
    def has_session(self, device_id: int) -> bool:
        return bool(self.sessions.get(device_id))

    def missing_sessions(self) -> list[int]:
        return sorted(d for d in self.devices if not self.has_session(d))

    def start(self, device_id: int, session: Session) -> None:
        self.check_device(device_id, session.peer_identity)
        self._push(device_id, session)

    def encrypt(self, device_id: int, plaintext: bytes) -> bytes:
        """Encrypt for one device with its current session (make one first); raise
        :class:`UnknownDevice` if its peer is not the identity the verified list names
        for that device (:meth:`trust` drops such sessions: this is a second check)."""
        sessions = self.sessions[device_id]
        session = Session.from_bytes(sessions[0])
        self.check_device(device_id, session.peer_identity)
        wire = session.encrypt(plaintext)
        sessions[0] = session.to_bytes()
        return wire

    def decrypt(
        self, device: Device | Callable[[], Device], from_device: int, wire: bytes, *,
        me: tuple[str, int],
    ) -> Incoming:  # fmt: skip
        """Decrypt a message from one of this contact's devices with whichever session
        it belongs to; an initial message makes a new session (and changes ``device``)
        bound to this contact's ``from_device`` and ``me`` (our user and device ids:
        :class:`parley.crypto.Binding`).

        ``device`` may be a loader, called only for an initial message that no session
        reads (the device's private state is a parse of its every prekey, which a
        message in an existing session does not need); the caller keeps what it
        returned (changed by a new session) to store it.

        Raises :class:`ReplayedMessage` for a message already decrypted (or a repeat
        of an initial message whose session we answered and have since dropped),
        :class:`UnknownDevice` for a device the verified list does not name (or
        names with another identity), :class:`PrekeyReused` for another initiator's
        initial message naming a one-time prekey an earlier one consumed, another
        :class:`CryptoError` if no session can read it; nothing changes then.
        """
        replayed: CryptoError | None = None
        last: CryptoError | None = None
        sessions = self.sessions.get(from_device, [])
        for index, raw in enumerate(sessions):
            session = Session.from_bytes(raw)
            if not self._lists(from_device, session.peer_identity):
                # Not the identity the list names for this device (:meth:`trust`
                # drops such sessions: this is a second check).
                last = UnknownDevice(
                    f"device {from_device} of {self.user_id} is not in its device list"
                    " with this session's identity"
                )
                continue
            try:
                message = session.decrypt_message(wire)
            except ReplayedMessage as exc:
                replayed = exc
                continue
            except CryptoError as exc:
                last = exc
                continue
            del sessions[index]
            sessions.insert(0, session.to_bytes())
            return Incoming(message, new_session=False)
        if replayed is not None:
            raise replayed
        if not is_initial_message(wire):
            raise last or CryptoError("no session with this device")
        try:
            session, message = Session.respond_message(
                device() if callable(device) else device, wire,
                binding=Binding(self.user_id, from_device, *me),
            )  # fmt: skip
        except PrekeyReused as exc:
            if b64encode(initial_message_digest(wire)) in self.answered:
                # A handshake we answered: a copy of a message we read, or a later
                # message of its session, which we have since dropped.
                raise ReplayedMessage(str(exc)) from exc
            # Another initiator's: the directory handed our one-time prekey out
            # twice. Its message cannot be read; the caller says so.
            raise
        self.check_device(from_device, session.peer_identity)
        self._push(from_device, session)
        if session.initial_digest is not None:
            self.answered.append(b64encode(session.initial_digest))
            del self.answered[:-ANSWERED_KEPT]
        return Incoming(message, new_session=True)

    def _push(self, device_id: int, session: Session) -> None:
        sessions = self.sessions.setdefault(device_id, [])
        sessions.insert(0, session.to_bytes())
        del sessions[MAX_SESSIONS:]


def _keys(entry: dict[str, str] | None) -> tuple[str, str] | None:
    """A device list entry's identity (signing key, DH key), base64url."""
    return None if entry is None else (entry["signing_key"], entry["dh_key"])
