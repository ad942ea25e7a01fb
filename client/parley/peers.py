"""What a client keeps per contact: the identity it trusts and its pairwise sessions.

Plain synchronous logic over :mod:`parley.crypto` (the async client runs it
inside store transactions; the Locust scenario runs it in memory).

Several sessions per contact, newest first, as in Signal: when both sides
start a session at the same moment, each receives the other's initial
message. Each then keeps both sessions, sends on the one it used last, and
tries every session when a message arrives; the one that decrypts becomes
current, so the two converge on one session as soon as messages stop
crossing. At most :data:`MAX_SESSIONS` are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from parley.crypto import (
    CryptoError,
    DecryptedMessage,
    Device,
    IdentityChanged,
    PrekeyReused,
    PublicIdentity,
    ReplayedMessage,
    Session,
    check_identity,
    format_safety_number,
    is_initial_message,
    safety_number,
)
from parley.crypto.encoding import b64decode, b64encode

__all__ = ["MAX_SESSIONS", "Incoming", "PeerState"]

MAX_SESSIONS = 4


@dataclass
class Incoming:
    """The result of :meth:`PeerState.decrypt`."""

    message: DecryptedMessage
    new_session: bool
    identity_changed: IdentityChanged | None = None


@dataclass
class PeerState:
    user_id: str
    username: str | None = None
    identity: dict[str, str] | None = None  # the identity we trust (TOFU)
    sessions: list[bytes] = field(default_factory=list)  # serialised, newest first

    # -- persistence ------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "username": self.username,
            "identity": self.identity,
            "sessions": [b64encode(s) for s in self.sessions],
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> PeerState:
        return cls(
            user_id=obj["user_id"],
            username=obj.get("username"),
            identity=obj.get("identity"),
            sessions=[b64decode(s) for s in obj.get("sessions", [])],
        )

    # -- identity ---------------------------------------------------------------
    def known_identity(self) -> PublicIdentity | None:
        return None if self.identity is None else PublicIdentity.from_json(self.identity)

    def check(
        self, presented: PublicIdentity, local: PublicIdentity, local_user_id: str
    ) -> IdentityChanged | None:
        """Trust on first use: remember ``presented``; if it replaces a different known
        identity, return the :class:`IdentityChanged` (with both safety numbers)."""
        try:
            check_identity(
                self.known_identity(),
                presented,
                local_identity=local,
                local_user_id=local_user_id,
                remote_user_id=self.user_id,
            )
            changed = None
        except IdentityChanged as exc:
            changed = exc
        self.identity = presented.to_json()
        return changed

    def replace_identity(self, presented: PublicIdentity) -> bool:
        """A key change announced by the directory: trust ``presented`` and drop the
        sessions with the old identity.  False if it is the identity we already trust."""
        known = self.known_identity()
        if (
            known is not None
            and known.signing_key == presented.signing_key
            and (known.dh_key == presented.dh_key)
        ):
            return False
        self.identity = presented.to_json()
        self.sessions = [
            s
            for s in self.sessions
            if Session.from_bytes(s).peer_identity.signing_key == presented.signing_key
        ]
        return True

    def safety_number(self, local: PublicIdentity, local_user_id: str) -> str | None:
        known = self.known_identity()
        if known is None:
            return None
        return format_safety_number(
            safety_number(local.signing_key, local_user_id, known.signing_key, self.user_id)
        )

    # -- messages ---------------------------------------------------------------
    @property
    def has_session(self) -> bool:
        return bool(self.sessions)

    def start(self, session: Session) -> None:
        self._push(session)

    def encrypt(self, plaintext: bytes) -> bytes:
        """Encrypt with the current session (the caller makes one first if there is none)."""
        session = Session.from_bytes(self.sessions[0])
        wire = session.encrypt(plaintext)
        self.sessions[0] = session.to_bytes()
        return wire

    def decrypt(self, device: Device, wire: bytes, local_user_id: str) -> Incoming:
        """Decrypt a message from this contact with whichever session it belongs to;
        an initial message of a new session makes one (and changes ``device``).

        Raises :class:`ReplayedMessage` for a message already decrypted, another
        :class:`CryptoError` if no session can read it; nothing changes then.
        """
        replayed: CryptoError | None = None
        last: CryptoError | None = None
        for index, raw in enumerate(self.sessions):
            session = Session.from_bytes(raw)
            try:
                message = session.decrypt_message(wire)
            except ReplayedMessage as exc:
                replayed = exc
                continue
            except CryptoError as exc:
                last = exc
                continue
            del self.sessions[index]
            self.sessions.insert(0, session.to_bytes())
            return Incoming(message, new_session=False)
        if replayed is not None:
            raise replayed
        if not is_initial_message(wire):
            raise last or CryptoError("no session with this contact")
        try:
            session, message = Session.respond_message(device, wire)
        except PrekeyReused as exc:
            # Our prekey went to an earlier copy of this message, which made a
            # session we have since dropped, or which we already read.
            raise ReplayedMessage(str(exc)) from exc
        changed = self.check(session.peer_identity, device.identity, local_user_id)
        if changed is not None:
            self.sessions = []
        self._push(session)
        return Incoming(message, new_session=True, identity_changed=changed)

    def _push(self, session: Session) -> None:
        self.sessions.insert(0, session.to_bytes())
        del self.sessions[MAX_SESSIONS:]
