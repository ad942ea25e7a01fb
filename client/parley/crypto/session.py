"""Public API: devices, pairwise sessions, group sessions, identity checks.

Typical use::

    bob = Device.generate()
    upload = {"identity": bob.public_identity(), "signed_prekey": bob.signed_prekey(),
              "one_time_prekeys": bob.generate_one_time_prekeys(100),
              "kem_prekeys": bob.generate_kem_prekeys(100),
              "last_resort_kem_prekey": bob.last_resort_kem_prekey()}
    # ... Alice claims a bundle from the key directory ...
    ids = Binding("alice", 1, "bob", 1)   # who each side is (account, device)
    alice_session, first = Session.initiate(alice, bundle_json, b"hi", binding=ids)
    bob_session, plaintext = Session.respond(bob, first, binding=ids)  # consumes prekeys
    reply = bob_session.encrypt(b"hello")
    alice_session.decrypt(reply)

Every message a session produces is bytes (see :mod:`parley.crypto.wire`);
:func:`parley.crypto.franking.commitment_from_message` gives its franking
commitment.  States (``Device``, ``Session``, ``GroupSession``) serialise with
``to_bytes``/``from_bytes``; persist them after every call that changes them
(``respond`` changes the device).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from parley.crypto import franking, pqxdh
from parley.crypto.bundle import PrekeyBundle, PublicIdentity
from parley.crypto.device import Device
from parley.crypto.encoding import b64decode, b64encode, load_state
from parley.crypto.errors import (
    BadCommitment,
    FrankingMismatch,
    IdentityChanged,
    MalformedBundle,
    MalformedMessage,
    MalformedState,
    RetiredSenderKey,
    SessionMismatch,
    UnknownSenderKey,
)
from parley.crypto.fingerprint import safety_number
from parley.crypto.primitives import (
    RandomSource,
    mlkem768_encapsulate,
    system_random,
)
from parley.crypto.ratchet import RatchetState
from parley.crypto.sender_keys import (
    MAX_RETIRED_CHAINS,
    ReceiverChain,
    SenderChain,
    group_associated_data,
)
from parley.crypto.wire import (
    HEADER_LEN,
    MESSAGE_PREFIX_LEN,
    TYPE_INITIAL,
    TYPE_MESSAGE,
    VERSION,
    PrekeySection,
    SenderKeyDistribution,
    parse_group,
    parse_pairwise,
)

__all__ = [
    "CHAINS_KEPT_PER_SENDER",
    "SKIPPED_KEYS_PER_SENDER",
    "DecryptedMessage",
    "Device",
    "GroupSession",
    "Session",
    "check_identity",
    "initial_message_digest",
    "is_initial_message",
]

_STATE_VERSION = 1
_FK = franking.FRANKING_KEY_LEN
_PREFIX_MESSAGE = bytes((VERSION, TYPE_MESSAGE))
_PREFIX_INITIAL = bytes((VERSION, TYPE_INITIAL))
_COMMITMENT_AT = franking.COMMITMENT_OFFSET
_COMMITMENT_END = franking.COMMITMENT_OFFSET + franking.COMMITMENT_LEN
_MESSAGE_HEADER_AT = MESSAGE_PREFIX_LEN - HEADER_LEN


class DecryptedMessage(NamedTuple):
    """A decrypted message plus what a report needs (plaintext, key, commitment)."""

    plaintext: bytes
    franking_key: bytes
    commitment: bytes


def _seal_payload(plaintext: bytes, rng: RandomSource) -> tuple[bytes, bytes]:
    """Return ``(commitment, payload)`` with payload = franking key || plaintext, the
    commitment made by :func:`parley.crypto.franking.commit`."""
    if type(plaintext) is not bytes:  # before drawing the franking key
        raise TypeError(f"plaintext must be bytes, not {type(plaintext).__name__}")
    franking_key = rng(_FK)
    return franking.commit(plaintext, franking_key), franking_key + plaintext


def _commitment_check(commitment: bytes) -> Callable[[bytes], None]:
    """The check a decrypted payload must pass before the session commits: its franking
    key and plaintext open ``commitment`` (:func:`parley.crypto.franking.verify_report`)."""

    def check(payload: bytes) -> None:
        if len(payload) < _FK:
            raise MalformedMessage("payload shorter than the franking key")
        try:
            franking.verify_report(payload[_FK:], payload[:_FK], commitment)
        except FrankingMismatch as exc:
            raise BadCommitment("franking commitment does not match the message") from exc

    return check


def is_initial_message(message: bytes) -> bool:
    """True if ``message`` is a PQXDH initial message (give it to :meth:`Session.respond`
    unless a session with that peer already exists)."""
    return len(message) >= 2 and message[0] == VERSION and message[1] == TYPE_INITIAL


def initial_message_digest(message: bytes) -> bytes:
    """SHA-256 of an initial message's PQXDH fields: the same for every initial message
    of one handshake (the initiator repeats them until answered), and what
    :attr:`Session.initial_digest` holds for the session it started.  Raises
    :class:`MalformedMessage` (or :class:`UnsupportedVersion`) for anything else."""
    parsed = parse_pairwise(message)
    if parsed.type != TYPE_INITIAL or parsed.prekey_raw is None:
        raise MalformedMessage("not an initial message")
    return hashlib.sha256(parsed.prekey_raw).digest()


def check_identity(
    known: PublicIdentity | None,
    presented: PublicIdentity,
    *,
    local_identity: PublicIdentity | None = None,
    local_user_id: str | None = None,
    remote_user_id: str | None = None,
) -> None:
    """Trust on first use: raise :class:`IdentityChanged` if ``presented`` differs from
    the ``known`` identity of a contact (``None`` = first contact, always accepted).

    With ``local_identity`` and both user ids, the exception carries the old and
    new safety numbers so the UI can show them.
    """
    if known is None:
        return
    if known.signing_key == presented.signing_key and known.dh_key == presented.dh_key:
        return
    old = new = None
    if local_identity is not None and local_user_id is not None and remote_user_id is not None:
        old = safety_number(
            local_identity.signing_key, local_user_id, known.signing_key, remote_user_id
        )
        new = safety_number(
            local_identity.signing_key, local_user_id, presented.signing_key, remote_user_id
        )
    raise IdentityChanged(
        "the contact's identity key changed", old_safety_number=old, new_safety_number=new
    )


class Session:
    """A pairwise end-to-end encrypted session with one device of a contact."""

    __slots__ = (
        "_initial_digest",
        "_pending_section",
        "_ratchet",
        "local_identity",
        "peer_identity",
    )

    def __init__(
        self,
        *,
        ratchet: RatchetState,
        local_identity: PublicIdentity,
        peer_identity: PublicIdentity,
        pending_section: bytes | None,
        initial_digest: bytes | None,
    ) -> None:
        self._ratchet = ratchet
        self.local_identity = local_identity
        self.peer_identity = peer_identity
        self._pending_section = pending_section
        self._initial_digest = initial_digest

    # ------------------------------------------------------------------ handshake

    @classmethod
    def initiate(
        cls,
        device: Device,
        bundle: PrekeyBundle | Mapping[str, Any],
        plaintext: bytes = b"",
        *,
        binding: pqxdh.Binding,
        expected_identity: PublicIdentity | None = None,
        rng: RandomSource | None = None,
        kem_encapsulate: pqxdh.Encapsulate = mlkem768_encapsulate,
    ) -> tuple[Session, bytes]:
        """Start a session from a claimed bundle; return it and the initial message.

        Every signature in the bundle is verified before any key is used
        (InvalidSignature / MalformedBundle otherwise).  ``expected_identity``
        is the identity we already know for this contact, if any
        (IdentityChanged if the bundle has another).  Until the peer answers,
        every message from :meth:`encrypt` is an initial message carrying the
        same PQXDH fields.  ``binding`` names this device and the one written to
        (:class:`parley.crypto.pqxdh.Binding`: our ids, and the ids we asked the
        directory for).  ``rng`` and ``kem_encapsulate`` exist for test vectors.
        """
        if isinstance(bundle, PrekeyBundle):
            bundle.verify()
            verified = bundle
        else:
            verified = PrekeyBundle.from_json(bundle)
        check_identity(expected_identity, verified.identity)
        rng = rng or device.rng
        handshake = pqxdh.initiate(
            device.dh_keypair,
            device.identity,
            verified,
            binding=binding,
            rng=rng,
            encapsulate=kem_encapsulate,
        )
        ratchet = RatchetState.initiator(
            handshake.secret, handshake.associated_data, verified.signed_prekey.key, rng
        )
        session = cls(
            ratchet=ratchet,
            local_identity=device.identity,
            peer_identity=verified.identity,
            pending_section=handshake.section.encode(),
            initial_digest=None,
        )
        return session, session.encrypt(plaintext)

    @classmethod
    def respond(
        cls,
        device: Device,
        message: bytes,
        *,
        binding: pqxdh.Binding,
        rng: RandomSource | None = None,
    ) -> tuple[Session, bytes]:
        """Accept an initial message; return the new session and the plaintext.

        ``binding``: the sender's ids as the envelope gives them, and ours
        (:class:`parley.crypto.pqxdh.Binding`); when they are not the ones the
        initiator bound, the message does not decrypt (DecryptionFailed) and no
        prekey is consumed.

        Consumes the one-time X25519 and one-time KEM prekeys it names (persist
        ``device`` afterwards).  Raises InvalidSignature (initiator identity),
        PrekeyReused, UnknownPrekey, ReplayedMessage (repeat of an initial
        message that used no one-time material), DecryptionFailed, ...; on any
        error the device is unchanged.
        """
        session, received = cls.respond_message(device, message, binding=binding, rng=rng)
        return session, received.plaintext

    @classmethod
    def respond_message(
        cls,
        device: Device,
        message: bytes,
        *,
        binding: pqxdh.Binding,
        rng: RandomSource | None = None,
    ) -> tuple[Session, DecryptedMessage]:
        """Like :meth:`respond`, returning the franking key and commitment too."""
        parsed = parse_pairwise(message)
        if parsed.type != TYPE_INITIAL or parsed.prekey_raw is None:
            raise MalformedMessage("not an initial message")
        section = PrekeySection.decode(parsed.prekey_raw)
        section.identity.verify()
        signed_prekey = device._lookup_signed_prekey(section.signed_prekey_id)
        one_time = (
            None
            if section.one_time_prekey_id is None
            else device._lookup_one_time_prekey(section.one_time_prekey_id)
        )
        kem = device._lookup_kem_prekey(section.kem_prekey_id)
        if one_time is None and kem.last_resort:
            device._check_base_key(section.signed_prekey_id, section.ephemeral_key)
        secret, ad = pqxdh.respond(
            device.dh_keypair,
            device.identity,
            section,
            signed_prekey,
            one_time,
            kem.pair(),
            binding=binding,
        )
        ratchet = RatchetState.responder(secret, ad, signed_prekey, rng or device.rng)
        payload = ratchet.decrypt(
            parsed.ratchet_key,
            parsed.previous_chain_length,
            parsed.message_number,
            parsed.associated,
            parsed.ciphertext,
            _commitment_check(parsed.commitment),
        )
        device._consume(
            section.one_time_prekey_id, kem, section.signed_prekey_id, section.ephemeral_key
        )
        session = cls(
            ratchet=ratchet,
            local_identity=device.identity,
            peer_identity=section.identity,
            pending_section=None,
            initial_digest=hashlib.sha256(parsed.prekey_raw).digest(),
        )
        return session, DecryptedMessage(payload[_FK:], payload[:_FK], parsed.commitment)

    # ------------------------------------------------------------------ messages

    def encrypt(self, plaintext: bytes) -> bytes:
        """Encrypt one message (a fresh franking key and commitment each time)."""
        commitment, payload = _seal_payload(plaintext, self._ratchet.rng)
        section = self._pending_section
        if section is None:
            prefix = _PREFIX_MESSAGE + commitment
        else:
            prefix = _PREFIX_INITIAL + commitment + section
        return self._ratchet.seal(payload, prefix)

    def decrypt(self, message: bytes) -> bytes:
        """Decrypt one message; raises (and leaves the session unchanged) on any failure."""
        return self._open(message)[_FK:]

    def decrypt_message(self, message: bytes) -> DecryptedMessage:
        """Like :meth:`decrypt`, returning the franking key and commitment too."""
        payload = self._open(message)
        return DecryptedMessage(
            payload[_FK:], payload[:_FK], franking.commitment_from_message(message)
        )

    def _open(self, message: bytes) -> bytes:
        if type(message) is bytes and message[:2] == _PREFIX_MESSAGE:  # the common case
            header_at = _MESSAGE_HEADER_AT
        else:
            parsed = parse_pairwise(message)  # MalformedMessage, UnsupportedVersion
            if parsed.type == TYPE_INITIAL and (
                self._initial_digest is None
                or parsed.prekey_raw is None
                or hashlib.sha256(parsed.prekey_raw).digest() != self._initial_digest
            ):
                raise SessionMismatch("initial message of another session")
            header_at = len(parsed.associated) - HEADER_LEN
        payload = self._ratchet.open(
            message, header_at, _commitment_check(message[_COMMITMENT_AT:_COMMITMENT_END])
        )
        self._pending_section = None  # the peer has our session: stop sending PQXDH fields
        return payload

    # ------------------------------------------------------------------ identity

    @property
    def initial_digest(self) -> bytes | None:
        """For a session started by the peer's initial message, SHA-256 of its PQXDH
        fields (:func:`initial_message_digest`); ``None`` for one we initiated."""
        return self._initial_digest

    @staticmethod
    def peer_identity_of(data: bytes) -> PublicIdentity:
        """The peer identity of a serialised session, without restoring its ratchet
        (``MalformedState`` if it does not parse)."""
        obj = load_state(data)
        try:
            return PublicIdentity.from_json(obj["peer"])
        except (KeyError, TypeError, MalformedBundle) as exc:
            raise MalformedState("session state does not parse") from exc

    def safety_number(self, local_user_id: str, peer_user_id: str) -> str:
        """The 60-digit safety number of this session's two identities."""
        return safety_number(
            self.local_identity.signing_key,
            local_user_id,
            self.peer_identity.signing_key,
            peer_user_id,
        )

    # ------------------------------------------------------------------ persistence

    def to_bytes(self) -> bytes:
        obj = {
            "v": _STATE_VERSION,
            "local": self.local_identity.to_json(),
            "peer": self.peer_identity.to_json(),
            "pending_section": (
                None if self._pending_section is None else b64encode(self._pending_section)
            ),
            "initial_digest": (
                None if self._initial_digest is None else b64encode(self._initial_digest)
            ),
            "ratchet": self._ratchet.to_json(),
        }
        return json.dumps(obj, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, rng: RandomSource = system_random) -> Session:
        obj = load_state(data)
        try:
            if obj["v"] != _STATE_VERSION:
                raise MalformedState("unsupported session state version")
            pending = obj["pending_section"]
            digest = obj["initial_digest"]
            return cls(
                ratchet=RatchetState.from_json(obj["ratchet"], rng),
                local_identity=PublicIdentity.from_json(obj["local"]),
                peer_identity=PublicIdentity.from_json(obj["peer"]),
                pending_section=None if pending is None else b64decode(pending),
                initial_digest=None if digest is None else b64decode(digest, length=32),
            )
        except (KeyError, TypeError, ValueError, MalformedBundle) as exc:
            raise MalformedState("session state does not parse") from exc


SKIPPED_KEYS_PER_SENDER = 2000
"""Skipped message keys kept over all of one member's chains (each chain also keeps at
most ``MAX_SKIPPED_KEYS``): the member's row stays small whatever it sends."""

CHAINS_KEPT_PER_SENDER = 64
"""Chains a receiver keeps per member of a group, the newest first; older ones are
dropped (their ids retired).  A member who was offline while a sender rotated (each
member leaving makes every remaining one rotate at its next message) gets the new
keys from its inbox before the room's log: every chain whose messages it has not read
yet must still be there.  It was 5 until 2026-12-08: six members leaving while one
was offline lost that member the first chain's messages (kept waiting for a key it
would never have again)."""


class GroupSession:
    """Sender-key state for one group: our sending chain and the other members' chains.

    Members are identified by a string chosen by the caller (e.g.
    ``"user_id:device_id"``); it must be the sender the pairwise session that
    carried their distribution message belongs to.

    Stored whole (:meth:`to_bytes` / :meth:`from_bytes`), or in rows (a large group's
    state is many members' chains, and a message changes one member's): :meth:`own_row`
    for our chain, :meth:`member_row` per member; :meth:`from_rows` makes a session
    with only the members a call needs loaded (those it names, row or none), and
    :meth:`own_changed` / :meth:`changed_members` say which rows to write again
    (until :meth:`mark_saved`).
    """

    __slots__ = (
        "_changed",
        "_loaded",
        "_own",
        "_own_changed",
        "_receivers",
        "_retired",
        "_stored",
        "group_id",
        "rng",
    )

    def __init__(
        self,
        group_id: str,
        own: SenderChain,
        receivers: dict[str, list[ReceiverChain]] | None = None,
        rng: RandomSource = system_random,
        retired: dict[str, list[int]] | None = None,
        *,
        loaded: set[str] | None = None,
    ) -> None:
        if not isinstance(group_id, str) or not group_id:
            raise ValueError("group_id must be a non-empty string")
        self.group_id = group_id
        self._own = own
        self._receivers: dict[str, list[ReceiverChain]] = receivers or {}
        # member -> ids of chains dropped (evicted or the member removed), oldest first
        self._retired: dict[str, list[int]] = retired or {}
        self.rng = rng
        # The members whose state is here (None: every member's); another is refused.
        self._loaded = loaded
        self._own_changed = False
        self._changed: set[str] = set()
        self._stored = set(self._receivers) | set(self._retired)  # those with a row

    @classmethod
    def create(cls, group_id: str, *, rng: RandomSource = system_random) -> GroupSession:
        session = cls(group_id, SenderChain.generate(rng), rng=rng)
        session._own_changed = True
        return session

    @property
    def chain_id(self) -> int:
        return self._own.chain_id

    def distribution_message(self) -> bytes:
        """Our current sender key (at its current iteration), to send over pairwise sessions."""
        return self._own.distribution(self.group_id).encode()

    def rotate(self) -> bytes:
        """Start a fresh sender key (new chain id, chain key, signing key); return its
        distribution message.  Call when a member leaves or is removed."""
        self._own = SenderChain.generate(self.rng, avoid={self._own.chain_id})
        self._own_changed = True
        return self.distribution_message()

    def remove_member(self, member: str) -> bytes:
        """Forget ``member``'s sender keys and rotate ours; return the new distribution
        message to send to the remaining members."""
        self._check_loaded(member)
        self._retire(member, self._receivers.pop(member, []))
        self._changed.add(member)
        return self.rotate()

    def members(self) -> list[str]:
        """The members we hold sender keys of (of those loaded, for :meth:`from_rows`)."""
        return list(self._receivers)

    def encrypt(self, plaintext: bytes) -> bytes:
        commitment, payload = _seal_payload(plaintext, self.rng)
        message = self._own.encrypt(payload, commitment, group_associated_data(self.group_id))
        self._own_changed = True
        return message

    def process_distribution(self, member: str, message: bytes) -> None:
        """Store ``member``'s sender key from a distribution message (idempotent).  The
        newest :data:`CHAINS_KEPT_PER_SENDER` chains of a member are kept; older ones
        are dropped and their ids retired."""
        self._check_loaded(member)
        dist = SenderKeyDistribution.decode(message)
        if dist.group_id != self.group_id:
            raise SessionMismatch("distribution message is for another group")
        chains = self._receivers.get(member, [])
        if any(c.chain_id == dist.chain_id for c in chains):
            return
        if dist.chain_id in self._retired.get(member, ()):
            raise RetiredSenderKey(
                f"sender key {dist.chain_id} of {member!r} was retired: refusing to take it "
                "again (it would let old group messages be replayed); the member must "
                "send a new sender key"
            )
        chains.insert(0, ReceiverChain.from_distribution(dist))
        self._receivers[member] = chains
        self._retire(member, chains[CHAINS_KEPT_PER_SENDER:])
        del chains[CHAINS_KEPT_PER_SENDER:]
        self._changed.add(member)

    def _retire(self, member: str, chains: list[ReceiverChain]) -> None:
        if not chains:
            return
        retired = self._retired.setdefault(member, [])
        retired.extend(c.chain_id for c in chains if c.chain_id not in retired)
        del retired[:-MAX_RETIRED_CHAINS]

    @staticmethod
    def _bound_skipped(chains: list[ReceiverChain]) -> None:
        """At most :data:`SKIPPED_KEYS_PER_SENDER` skipped keys over all of one member's
        chains, the oldest chains' (then the oldest iterations) dropped first: a member
        that jumped far on each of 64 chains left 64 x 2,000 keys (~7 MB) in the row
        every one of its messages reads and writes."""
        excess = sum(len(c.skipped) for c in chains) - SKIPPED_KEYS_PER_SENDER
        for chain in reversed(chains):  # newest first: the oldest at the end
            if excess <= 0:
                return
            for i in list(chain.skipped)[:excess]:
                del chain.skipped[i]
                excess -= 1

    def _check_loaded(self, member: str) -> None:
        if self._loaded is not None and member not in self._loaded:
            raise LookupError(f"{member!r}'s sender keys were not loaded (from_rows)")

    def decrypt(self, member: str, message: bytes) -> bytes:
        return self.decrypt_message(member, message).plaintext

    def decrypt_message(self, member: str, message: bytes) -> DecryptedMessage:
        """Verify and decrypt ``member``'s group message (transactional).  A chain we do
        not have raises :class:`UnknownSenderKey` (its key may still come); one we had
        and dropped (retired) raises :class:`RetiredSenderKey`: it never opens here."""
        self._check_loaded(member)
        parsed = parse_group(message)
        for chain in self._receivers.get(member, ()):
            if chain.chain_id == parsed.chain_id:
                payload = chain.decrypt(
                    parsed,
                    group_associated_data(self.group_id),
                    _commitment_check(parsed.commitment),
                )
                self._bound_skipped(self._receivers[member])
                self._changed.add(member)
                return DecryptedMessage(payload[_FK:], payload[:_FK], parsed.commitment)
        if parsed.chain_id in self._retired.get(member, ()):
            raise RetiredSenderKey(
                f"sender key {parsed.chain_id} of {member!r} was dropped (newer ones "
                "replaced it, or the member was removed): its messages cannot be read"
            )
        raise UnknownSenderKey(f"no sender key {parsed.chain_id} for {member!r}")

    # ------------------------------------------------------------------ persistence

    @property
    def own_changed(self) -> bool:
        """Our chain (:meth:`own_row`) changed since the session was made, loaded or
        :meth:`mark_saved`."""
        return self._own_changed

    def changed_members(self) -> list[str]:
        """The members whose :meth:`member_row` changed since the session was made,
        loaded or :meth:`mark_saved` (a key taken, a message decrypted, removed)."""
        return sorted(self._changed)

    def had_row(self, member: str) -> bool:
        """Whether ``member`` had a :meth:`member_row` when the session was loaded (or
        at :meth:`mark_saved`): a changed member without one is new to the group."""
        return member in self._stored

    def row_members(self) -> list[str]:
        """Every loaded member we keep something of (a :meth:`member_row`): those with
        chains, and removed or rotated-away ones whose retired ids are kept."""
        return list(dict.fromkeys([*self._receivers, *self._retired]))

    def mark_saved(self) -> None:
        """The changed rows were written: nothing is changed from here on."""
        self._own_changed = False
        self._changed.clear()
        self._stored = set(self._receivers) | set(self._retired)

    def own_row(self) -> bytes:
        """The group's own row: its id and our sending chain (no member's)."""
        obj = {"v": _STATE_VERSION, "group_id": self.group_id, "own": self._own.to_json()}
        return json.dumps(obj, separators=(",", ":")).encode()

    def member_row(self, member: str) -> bytes | None:
        """``member``'s row: its chains and retired chain ids; None if we keep
        nothing of it."""
        self._check_loaded(member)
        chains, retired = self._receivers.get(member, []), self._retired.get(member, [])
        if not chains and not retired:
            return None
        obj = {
            "v": _STATE_VERSION,
            "member": member,
            "chains": [c.to_json() for c in chains],
            "retired": retired,
        }
        return json.dumps(obj, separators=(",", ":")).encode()

    @staticmethod
    def is_whole(data: bytes) -> bool:
        """Whether ``data`` is a whole state (:meth:`to_bytes`), not an :meth:`own_row`
        (``MalformedState`` if it is neither)."""
        obj = load_state(data)
        if not isinstance(obj, dict) or "own" not in obj or "group_id" not in obj:
            raise MalformedState("group state does not parse")
        return "receivers" in obj

    @classmethod
    def from_rows(
        cls,
        own: bytes,
        members: Mapping[str, bytes | None],
        *,
        every: bool = False,
        rng: RandomSource = system_random,
    ) -> GroupSession:
        """A session from its :meth:`own_row` and the rows of ``members`` (None: a
        member we keep nothing of yet).  Only those members can be used: any other
        raises ``LookupError``, and :meth:`to_bytes` refuses (the state is not whole),
        unless ``every`` says they are every member's rows (then it is whole)."""
        obj = load_state(own)
        try:
            if obj["v"] != _STATE_VERSION or "receivers" in obj:
                raise MalformedState("not a group's own row")
            receivers: dict[str, list[ReceiverChain]] = {}
            retired: dict[str, list[int]] = {}
            for member, raw in members.items():
                if raw is None:
                    continue
                row = load_state(raw)
                if row["v"] != _STATE_VERSION or row["member"] != member:
                    raise MalformedState("a member's row is not that member's")
                chains = [ReceiverChain.from_json(c) for c in row["chains"]]
                if chains:
                    receivers[member] = chains
                ids = [int(i) for i in row["retired"]]
                if ids:
                    retired[member] = ids
            return cls(
                obj["group_id"],
                SenderChain.from_json(obj["own"]),
                receivers,
                rng,
                retired,
                loaded=None if every else set(members),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedState("group state does not parse") from exc

    def to_bytes(self) -> bytes:
        if self._loaded is not None:
            raise ValueError("a session loaded with some members only is not a whole state")
        obj = {
            "v": _STATE_VERSION,
            "group_id": self.group_id,
            "own": self._own.to_json(),
            "receivers": {
                member: [c.to_json() for c in chains] for member, chains in self._receivers.items()
            },
            "retired": self._retired,
        }
        return json.dumps(obj, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, rng: RandomSource = system_random) -> GroupSession:
        obj = load_state(data)
        try:
            if obj["v"] != _STATE_VERSION:
                raise MalformedState("unsupported group state version")
            receivers = {
                str(member): [ReceiverChain.from_json(c) for c in chains]
                for member, chains in obj["receivers"].items()
            }
            retired = {  # absent from states written before #20
                str(member): [int(i) for i in ids]
                for member, ids in (obj.get("retired") or {}).items()
            }
            return cls(obj["group_id"], SenderChain.from_json(obj["own"]), receivers, rng, retired)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedState("group state does not parse") from exc
