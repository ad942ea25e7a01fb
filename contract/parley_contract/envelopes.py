"""What travels between Parley's processes: Kafka records and Redis messages.

Kafka ``<prefix>messages`` (key: the recipient, the inbox owner; value:
:data:`Envelope`) carries what delivery stores in inboxes: a message from a
client (made by the gateway) or a ``key_changed`` notice for one contact
(made by delivery's events consumer). ``<prefix>events`` (key: the user)
carries :data:`Event` records from the key directory. ``<prefix>rooms``
(key: the room) carries :data:`RoomEvent` records from the rooms service:
every change of a room's membership or state, in the room's order. ``<prefix>dead-letters``
carries records a consumer could not process, unchanged, with ``dlq_*``
headers (docs/delivery.md).

Redis: a gateway pod's channel carries :class:`Routed` (a server frame for
one user's sockets on that pod); the revocation channel carries
:data:`Revocation`.

Envelopes are versioned (``v``); a consumer refuses a version it does not
know (dead-letter) rather than guess.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct
from parley_contract.frames import (
    Body,
    ClientId,
    Commitment,
    DeviceId,
    KeyChanged,
    Message,
    Millis,
    RoomId,
    ServerFrames,
    Tombstone,
    UserId,
)

ENVELOPE_VERSION = 1
Version = Annotated[int, Meta(ge=1, le=ENVELOPE_VERSION)]


class _Envelope(Struct, tag_field="kind", kw_only=True):
    v: Version = ENVELOPE_VERSION
    server_id: Annotated[str, Meta(min_length=1, max_length=64)]
    to: UserId
    to_device: DeviceId
    """``to``'s device whose inbox this is: the inbox is ``(to, to_device)``."""
    from_: UserId = msgspec.field(name="from")
    client_id: Annotated[str, Meta(min_length=1, max_length=200)]
    conversation: str | None = None
    sent_at: Millis | None = None

    @property
    def inbox(self) -> str:
        return inbox_id(self.to, self.to_device)


class MessageEnvelope(_Envelope, tag="message", kw_only=True):
    """One device's copy of a client's message, as the gateway produced it."""

    client_id: ClientId
    from_device: DeviceId
    from_sid: str | None = None
    body: Body
    commitment: Commitment | None = None


class KeyChangedNotice(_Envelope, tag="key_changed", kw_only=True):
    """A ``key_changed`` notice for one device inbox of a contact (``from`` reset
    their account identity key)."""

    account_key: str | None = None


class TombstoneNotice(_Envelope, tag="tombstone", kw_only=True):
    """A removed message's tombstone for one device inbox (made by delivery when the
    sender or an admin removes the message; docs/delivery.md, "Tombstones").

    ``server_id`` and ``from`` are the removed message's; ``client_id`` is
    ``tombstone:<server_id>`` (delivery's dedup record keys it as ``"tombstone
    tombstone:<server_id>"``: no client id a user sends has a space, so no message can
    take it); ``target_seq`` is where the message's
    copy was stored in this inbox (None: the inbox never held one, e.g. the sending
    device). The consumer deletes that copy, then stores the tombstone."""

    by: Literal["sender", "admin"]
    kid: Annotated[str, Meta(min_length=1, max_length=32)]
    signature: Annotated[str, Meta(min_length=1, max_length=200)]
    target_seq: Annotated[int, Meta(ge=1)] | None = None


class RoomCopies(Struct, tag="room_copies", tag_field="kind", kw_only=True):
    """Protocol 2's copies of a private room's message for several device inboxes, on
    ``messages``: no longer made (a room's message is stored once, in its room's
    log), still read, so that records produced before an upgrade reach the log
    (:func:`room_envelope_of`)."""

    v: Version = ENVELOPE_VERSION
    server_id: Annotated[str, Meta(min_length=1, max_length=64)]
    room: RoomId
    from_: UserId = msgspec.field(name="from")
    from_device: DeviceId
    client_id: Annotated[str, Meta(min_length=1, max_length=200)]
    conversation: str
    sent_at: Millis | None = None
    body: Body
    commitment: Commitment | None = None
    mentions: list[UserId] = []
    inboxes: list[str]


Envelope = MessageEnvelope | KeyChangedNotice | TombstoneNotice | RoomCopies


class RoomEnvelope(Struct, kw_only=True):
    """A private room's message on ``<prefix>room-messages`` (key: the room): one
    record per message whatever the room's size. ``targets`` are the device inboxes
    it goes to, resolved by the gateway from the membership and the device lists
    when the message was accepted (the sending device excluded)."""

    v: Version = ENVELOPE_VERSION
    server_id: Annotated[str, Meta(min_length=1, max_length=64)]
    room: RoomId
    from_: UserId = msgspec.field(name="from")
    from_device: DeviceId
    from_sid: str | None = None
    client_id: ClientId
    body: Body
    commitment: Commitment | None = None
    mentions: list[UserId] = []
    sent_at: Millis
    targets: list[str]


def room_conversation(room: str) -> str:
    return f"room:{room}"


def room_server_id(room: str, sender: str, client_id: str) -> str:
    """A room message's server id: the same for every copy and every resend."""
    return hashlib.sha256(f"room|{room}|{sender}|{client_id}".encode()).hexdigest()[:32]


def room_envelope_of(copies: RoomCopies) -> RoomEnvelope:
    """The room message a protocol 2 :class:`RoomCopies` record carries (its inboxes
    as targets; its client id without the ``room:<room>:`` it was given)."""
    prefix = f"room:{copies.room}:"
    client_id = copies.client_id.removeprefix(prefix)
    return RoomEnvelope(
        server_id=copies.server_id, room=copies.room, from_=copies.from_,
        from_device=copies.from_device, client_id=client_id or copies.client_id,
        body=copies.body, commitment=copies.commitment, mentions=list(copies.mentions),
        sent_at=copies.sent_at or now_ms(), targets=list(copies.inboxes),
    )  # fmt: skip


def room_targets(env: RoomEnvelope) -> list[str]:
    """The target inboxes, once each, in order; malformed ids dropped."""
    out = []
    for inbox in dict.fromkeys(env.targets):
        user, _, device = inbox.rpartition(".")
        if user and device.isdigit() and int(device) >= 1:
            out.append(inbox)
    return out


def conversation_id(a: str, b: str) -> str:
    """A 1:1 conversation's id: the same for both sides."""
    lo, hi = sorted((a, b))
    return f"dm:{lo}:{hi}"


def inbox_id(user: str, device: int) -> str:
    """A device inbox's id (user ids never contain ``.``): the Kafka key of its records."""
    return f"{user}.{device}"


def new_server_id() -> str:
    """Time-ordered unique id: 12 hex digits of ms since epoch + 16 random hex digits."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(8)}"


def message_server_id(sender: str, client_id: str) -> str:
    """A message's server id, the same for every copy and every resend of it.

    Derived from (sender, client id), which the server stores once: a client
    that sends the same id again gets the same server id back, and recipients
    recognise a copy they already have.
    """
    digest = hashlib.sha256(f"{sender}|{client_id}".encode()).hexdigest()
    return digest[:32]


def now_ms() -> int:
    return int(time.time() * 1000)


def message_envelope(
    *, sender: str, sender_device: int, sender_sid: str, peer: str, user: str, device: int,
    client_id: str, body: str, commitment: str | None, sent_at: int | None = None,
) -> MessageEnvelope:  # fmt: skip
    """The copy of a message from ``sender`` to ``peer`` for the inbox ``(user, device)``.

    ``user`` is ``peer`` (a recipient device) or ``sender`` (one of the
    sender's other devices); the conversation is always sender↔peer.
    """
    return MessageEnvelope(
        server_id=message_server_id(sender, client_id),
        conversation=conversation_id(sender, peer),
        from_=sender,
        from_device=sender_device,
        from_sid=sender_sid,
        to=user,
        to_device=device,
        client_id=client_id,
        body=body,
        commitment=commitment,
        sent_at=sent_at if sent_at is not None else now_ms(),
    )


def key_changed_notice(
    *, sender: str, recipient: str, recipient_device: int, client_id: str,
    account_key: str | None,
) -> KeyChangedNotice:  # fmt: skip
    return KeyChangedNotice(
        server_id=new_server_id(),
        from_=sender,
        to=recipient,
        to_device=recipient_device,
        client_id=client_id,
        account_key=account_key,
        sent_at=now_ms(),
    )


def item_frame(
    env: MessageEnvelope | KeyChangedNotice | TombstoneNotice, seq: int
) -> Message | KeyChanged | Tombstone:
    """The frame an inbox item is pushed or synced as."""
    if isinstance(env, TombstoneNotice):
        return Tombstone(
            seq=seq, server_id=env.server_id, from_=env.from_, conversation=env.conversation,
            by=env.by, at=env.sent_at or 0, kid=env.kid, signature=env.signature,
        )  # fmt: skip
    if isinstance(env, MessageEnvelope):
        return Message(
            seq=seq, server_id=env.server_id, from_=env.from_, from_device=env.from_device,
            body=env.body, conversation=env.conversation, commitment=env.commitment,
            sent_at=env.sent_at,
        )  # fmt: skip
    return KeyChanged(
        seq=seq, server_id=env.server_id, user_id=env.from_, account_key=env.account_key,
        sent_at=env.sent_at, from_=env.from_,
    )  # fmt: skip


# -- parley.events (from the key directory) ---------------------------------------------


class _Event(Struct, tag_field="type", kw_only=True):
    user_id: str
    event_id: str | None = None


class PrekeysLowEvent(_Event, tag="prekeys_low", kw_only=True):
    device_id: int
    one_time: int
    kem_one_time: int
    threshold: int


class KeyChangedEvent(_Event, tag="key_changed", kw_only=True):
    """The user registered a new account identity key (docs/devices.md)."""

    account_key: str


class DeviceRemovedEvent(_Event, tag="device_removed", kw_only=True):
    """A device left the account's device list: its inbox is dropped."""

    device_id: int


Event = PrekeysLowEvent | KeyChangedEvent | DeviceRemovedEvent


# -- parley.rooms (from the rooms service) ---------------------------------------------

RoomKind = Literal["private", "public"]
RoomRole = Literal["owner", "moderator", "member"]


class _RoomEvent(Struct, tag_field="type", kw_only=True):
    """A change of a room (docs/rooms.md, "Events"). ``version`` is the room's
    membership version after the change: it grows by one with each event of the
    room, so a consumer applies a room's events in order and skips what it has
    already applied (redelivery repeats an event with its ``event_id``)."""

    room_id: str
    kind: RoomKind
    version: Annotated[int, Meta(ge=1)]
    actor: str
    """Who made the change (the member themself for joins and leaves)."""
    at: Millis
    event_id: str | None = None


class RoomCreated(_RoomEvent, tag="room_created", kw_only=True):
    """A new room; ``actor`` is its owner and first member."""


class MemberJoined(_RoomEvent, tag="member_joined", kw_only=True):
    """``user_id`` is a member now: joined a public room, or accepted an invitation."""

    user_id: str
    role: RoomRole
    via: Literal["join", "invitation"]


class MemberInvited(_RoomEvent, tag="member_invited", kw_only=True):
    """``actor`` invited ``user_id`` (not a member until they accept)."""

    user_id: str


class InvitationDeclined(_RoomEvent, tag="invitation_declined", kw_only=True):
    """``user_id`` declined an invitation (nothing changes for the members)."""

    user_id: str


class MemberLeft(_RoomEvent, tag="member_left", kw_only=True):
    """``user_id`` left. In a private room every remaining device rotates its sender key."""

    user_id: str


class MemberRemoved(_RoomEvent, tag="member_removed", kw_only=True):
    """``actor`` (owner or moderator) removed ``user_id``; rotate as for ``member_left``."""

    user_id: str


class RoleChanged(_RoomEvent, tag="role_changed", kw_only=True):
    """``user_id`` has ``role`` now (promotion, demotion, transfer of ownership)."""

    user_id: str
    role: RoomRole


class RoomStateChanged(_RoomEvent, tag="room_state_changed", kw_only=True):
    """The room was closed (no new messages; history stays readable) or opened again."""

    state: Literal["open", "closed"]


class RoomKindChanged(_RoomEvent, tag="room_kind_changed", kw_only=True):
    """An admin switched the room's kind; ``kind`` is the new one. Public → private:
    from now on messages are end-to-end encrypted (members' devices make and share
    sender keys); private → public: new messages go to the server's timeline, and no
    past ciphertext becomes readable (the server never had its keys)."""

    previous: RoomKind


class RoomDeleted(_RoomEvent, tag="room_deleted", kw_only=True):
    """An admin deleted the room: it exists for nobody any more (admins aside)."""


RoomEvent = (
    RoomCreated
    | MemberJoined
    | MemberInvited
    | InvitationDeclined
    | MemberLeft
    | MemberRemoved
    | RoleChanged
    | RoomStateChanged
    | RoomKindChanged
    | RoomDeleted
)


# -- Redis: routed frames and revocations -----------------------------------------------


class Routed(Struct):
    """A server frame for the sockets of ``to`` (of its device ``device``, or all
    of them when it is None) on the pod whose channel carries it.

    ``op`` repeats the frame's op so that a pod can count and forward the
    frame without decoding it (:class:`RoutedRaw`).
    """

    to: str
    device: int | None
    op: str
    frame: ServerFrames


class RoutedRaw(Struct):
    """The gateway's view of :class:`Routed`: the frame stays encoded, sent as is."""

    to: str
    device: int | None
    op: str
    frame: msgspec.Raw


class Multicast(Struct):
    """One frame for every socket of each user in ``to``, on the room channel every pod
    subscribes to (services/common/routing.py): a room-wide frame (a public room's
    post, a room's change) published once for all pods, whatever the room's size,
    and with no presence read. A pod pushes it to the users of ``to`` it holds a
    socket of."""

    op: str
    to: list[str]
    frame: ServerFrames


class MulticastRaw(Struct):
    """The gateway's view of :class:`Multicast`: the frame stays encoded, sent as is."""

    op: str
    to: list[str]
    frame: msgspec.Raw


def multicast(to: list[str], frame: ServerFrames) -> Multicast:
    return Multicast(op=str(type(frame).__struct_config__.tag), to=to, frame=frame)


def routed(to: str, device: int | None, frame: ServerFrames) -> Routed:
    return Routed(to=to, device=device, op=str(type(frame).__struct_config__.tag), frame=frame)


class _Revocation(Struct, tag_field="type", kw_only=True):
    user_id: str


class SessionRevoked(_Revocation, tag="session_revoked", kw_only=True):
    """One session ended (logout, revoked): close its sockets."""

    sid: str


class UserBlocked(_Revocation, tag="user_blocked"):
    """The account was blocked: close every socket of the user."""


class DeviceRevoked(_Revocation, tag="device_revoked", kw_only=True):
    """A device was removed from the account: close its sockets."""

    device: int


class DevicesChanged(_Revocation, tag="devices_changed"):
    """The user's device list changed (not a revocation): forget cached lists."""


Revocation = SessionRevoked | UserBlocked | DeviceRevoked | DevicesChanged

# -- codecs --------------------------------------------------------------------------------

# -- notifications (rooms -> notifier, ``<prefix>notifications``, key: the user) --------


class MentionNotice(Struct, kw_only=True, frozen=True):
    """A mention notification: the rooms service produces one per notification it
    creates (through its outbox: at least once, never for one that was not stored);
    the notifier e-mails digests to users with no connected device (docs/notifier.md).
    Decoding is strict: an unknown version is refused, not guessed."""

    v: Literal[1] = 1
    user: str
    """Who was mentioned (the record's key)."""
    n: int
    """The notification's number in the user's list (``GET /rooms/v1/notifications``):
    ``(user, n)`` names it, so a redelivered notice is recognised."""
    room_id: str
    room_name: str
    kind: Literal["public", "private"]
    sender: str
    excerpt: str
    """The start of a public room's message; a fixed text for a private room (the
    server cannot read its messages)."""
    at: int
    """When the message was sent (Unix ms)."""
    message_seq: int | None = None
    server_id: str | None = None
    live: bool = False
    """The user had a connected device when the notification was made (its
    ``notification`` frame went to it): the notifier mails nothing for it, however late
    it reads the notice (a notifier catching up after a restart took the user for away
    once they had disconnected, and mailed a mention they had seen). Absent in notices
    made before 2026-12-08: False."""


_encoder = msgspec.json.Encoder()
_envelope_decoder = msgspec.json.Decoder(Envelope)
_event_decoder = msgspec.json.Decoder(Event)
_routed_decoder = msgspec.json.Decoder(list[RoutedRaw] | RoutedRaw)
_room_push_decoder = msgspec.json.Decoder(MulticastRaw)
_room_envelope_decoder = msgspec.json.Decoder(RoomEnvelope)
_revocation_decoder = msgspec.json.Decoder(Revocation)
_room_event_decoder = msgspec.json.Decoder(RoomEvent)
_notice_decoder = msgspec.json.Decoder(MentionNotice)

DecodeError = (msgspec.ValidationError, msgspec.DecodeError)
"""What the decoders below raise for a record that does not fit the contract."""


def encode(model: Any) -> bytes:
    return _encoder.encode(model)


def decode_envelope(data: bytes) -> Envelope:
    return _envelope_decoder.decode(data)


def decode_event(data: bytes) -> Event:
    return _event_decoder.decode(data)


def decode_routed(data: bytes) -> list[RoutedRaw] | RoutedRaw:
    """One routed frame, or a list of them (a batch for one pod: one publish)."""
    return _routed_decoder.decode(data)


def decode_room_push(data: bytes) -> MulticastRaw:
    """What the room channel carries: one room-wide frame for a list of users."""
    return _room_push_decoder.decode(data)


def decode_room_envelope(data: bytes) -> RoomEnvelope:
    return _room_envelope_decoder.decode(data)


def decode_revocation(data: bytes) -> Revocation:
    return _revocation_decoder.decode(data)


def decode_room_event(data: bytes) -> RoomEvent:
    return _room_event_decoder.decode(data)


def decode_notice(data: bytes) -> MentionNotice:
    return _notice_decoder.decode(data)


__all__ = [
    "ENVELOPE_VERSION",
    "DecodeError",
    "DeviceRemovedEvent",
    "DeviceRevoked",
    "DevicesChanged",
    "Envelope",
    "Event",
    "InvitationDeclined",
    "KeyChangedEvent",
    "KeyChangedNotice",
    "MemberInvited",
    "MemberJoined",
    "MemberLeft",
    "MemberRemoved",
    "MentionNotice",
    "MessageEnvelope",
    "Multicast",
    "MulticastRaw",
    "PrekeysLowEvent",
    "Revocation",
    "RoleChanged",
    "RoomCopies",
    "RoomCreated",
    "RoomDeleted",
    "RoomEnvelope",
    "RoomEvent",
    "RoomKind",
    "RoomKindChanged",
    "RoomRole",
    "RoomStateChanged",
    "Routed",
    "RoutedRaw",
    "SessionRevoked",
    "TombstoneNotice",
    "UserBlocked",
    "conversation_id",
    "decode_envelope",
    "decode_event",
    "decode_notice",
    "decode_revocation",
    "decode_room_envelope",
    "decode_room_event",
    "decode_room_push",
    "decode_routed",
    "encode",
    "inbox_id",
    "item_frame",
    "key_changed_notice",
    "message_envelope",
    "message_server_id",
    "multicast",
    "new_server_id",
    "room_conversation",
    "room_envelope_of",
    "room_server_id",
    "room_targets",
    "routed",
]
