"""WebSocket protocol v1: every frame, as a typed model (docs/protocol.md).

A frame is one JSON object with an ``op``; the ``op`` selects the model
(msgspec tagged unions: ``op`` is the tag). Client → server frames refuse
unknown fields, so a typo is an error instead of being ignored; server →
client frames are built only through these classes.

Reading: :func:`decode_client_frame` (the gateway) and
:func:`decode_server_frame` (clients) turn bytes into a model or raise
:class:`FrameError` with a stable :class:`ErrorCode` and, for
``validation_failed``, the fields at fault. Writing: :func:`encode`.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal, get_args

import msgspec
from msgspec import Meta, Struct
from parley_contract.errors import ErrorCode

# -- field types (limits are part of the contract) --------------------------------------
# Character-class rules are checked in ``__post_init__`` with C-speed string
# methods (loadtest/bench_contract.py: msgspec's ``pattern`` runs a Python
# regex per value, which cost more than the rest of the parse); they still
# appear in the JSON Schema through ``extra_json_schema``.

B64URL_PATTERN = "^[A-Za-z0-9_-]*$"
_B64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"

ClientId = Annotated[
    str, Meta(min_length=1, max_length=64, extra_json_schema={"pattern": "^[\\x21-\\x7e]+$"},
              description="A client-chosen id: 1-64 printable ASCII characters, no spaces.")
]  # fmt: skip
UserId = Annotated[
    str, Meta(min_length=1, max_length=64, extra_json_schema={"pattern": "^[A-Za-z0-9_-]+$"})
]
Body = Annotated[
    str, Meta(min_length=1, extra_json_schema={"pattern": "^[A-Za-z0-9_-]+$"},
              description="Ciphertext, base64url without padding: opaque to the server.")
]  # fmt: skip
Commitment = Annotated[
    str, Meta(max_length=128, extra_json_schema={"pattern": B64URL_PATTERN},
              description="Franking commitment, base64url.")
]  # fmt: skip
Token = Annotated[str, Meta(min_length=1, max_length=4096)]
Seq = Annotated[int, Meta(ge=0, le=2**63 - 1)]
PageLimit = Annotated[int, Meta(ge=1, le=1000)]
Millis = Annotated[int, Meta(ge=0, le=2**63 - 1)]
DeviceId = Annotated[int, Meta(ge=1, le=2**31 - 1)]
RoomId = Annotated[
    str, Meta(min_length=24, max_length=24, extra_json_schema={"pattern": "^[0-9a-f]{24}$"},
              description="A room's id: 24 lowercase hex digits (docs/rooms.md).")
]  # fmt: skip
MAX_ROOM_MENTIONS = 20
_HEX = frozenset("0123456789abcdef")
DeviceDigest = Annotated[
    str, Meta(min_length=22, max_length=22, extra_json_schema={"pattern": "^[A-Za-z0-9_-]+$"},
              description="device_digest(): 16 bytes of SHA-256, base64url without padding.")
]  # fmt: skip


def device_digest(devices: Iterable[tuple[str, int]]) -> str:
    """A private room's member devices as one short string (``room_send.device_digest``):
    SHA-256 over the sorted ``"<user id>:<device id>"`` lines (joined by ``\n``, UTF-8),
    its first 16 bytes in base64url without padding. Every member device but the
    sending one, the sender's own other devices included."""
    lines = sorted(f"{user}:{int(device)}" for user, device in devices)
    digest = hashlib.sha256("\n".join(lines).encode()).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def is_b64url(value: str) -> bool:
    """base64url characters only (no padding): C-speed, whatever the length."""
    return value.isascii() and not value.encode().translate(None, _B64URL)


def body_commitment(body: str) -> str | None:
    """The franking commitment a Parley ciphertext carries at bytes [2:34] (every
    message starts ``version | type | commitment``: docs/crypto.md), base64url without
    padding; None for a body too short to hold one."""
    if len(body) < 48:  # 48 base64url characters are 36 bytes
        return None
    head = base64.urlsafe_b64decode(body[:48])
    return base64.urlsafe_b64encode(head[2:34]).rstrip(b"=").decode("ascii")


def _check_commitment(commitment: str | None, body: str) -> None:
    """A commitment sent beside a body is the one inside it: the server tags what is
    sent beside, and a sender who sent another (or none) made the message impossible
    to report (the recipient's client checks only the one inside)."""
    if commitment is not None:
        _check(is_b64url(commitment), "commitment", "base64url expected")
        _check(commitment == body_commitment(body), "commitment", "not the body's own")


def is_client_id(value: str) -> bool:
    return value.isascii() and value.isprintable() and " " not in value


def _check(ok: bool, field: str, problem: str) -> None:
    if not ok:
        raise ValueError(f"{field}: {problem}")


class ClientFrame(Struct, tag_field="op", forbid_unknown_fields=True):
    """Base of every client → server frame."""


class ServerFrame(Struct, tag_field="op"):
    """Base of every server → client frame."""


# -- client → server ----------------------------------------------------------------------


class Auth(ClientFrame, tag="auth"):
    """First frame of a socket (and later, a fresh token for the same user)."""

    token: Token
    id: ClientId | None = None

    def __post_init__(self) -> None:
        _check_id(self.id)


class Copy(Struct, forbid_unknown_fields=True):
    """One device's ciphertext of a message."""

    user: UserId
    """The recipient (``to``) or the sender (a copy for one of the sender's other devices)."""
    device: DeviceId
    body: Body
    commitment: Commitment | None = None

    def __post_init__(self) -> None:
        _check(is_b64url(self.user), "user", "letters, digits, '_' and '-' expected")
        _check(is_b64url(self.body), "body", "base64url expected")
        _check_commitment(self.commitment, self.body)


MAX_COPIES = 32


class Send(ClientFrame, tag="send"):
    """A message to one user, encrypted once per device: one copy for every device
    of ``to`` and one for each of the sender's other devices (docs/devices.md)."""

    id: ClientId
    to: UserId
    copies: Annotated[list[Copy], Meta(min_length=1, max_length=MAX_COPIES)]

    def __post_init__(self) -> None:
        _check(is_client_id(self.id), "id", "printable ASCII without spaces expected")
        _check(is_b64url(self.to), "to", "letters, digits, '_' and '-' expected")
        seen = {(c.user, c.device) for c in self.copies}
        _check(len(seen) == len(self.copies), "copies", "one copy per device")


class RoomSend(ClientFrame, tag="room_send"):
    """A message to a private room: one sender-key ciphertext (``GroupSession``) for
    every member device but the sending one (docs/rooms.md, "Private rooms")."""

    id: ClientId
    room: RoomId
    body: Body
    commitment: Commitment | None = None
    mentions: Annotated[list[UserId], Meta(max_length=MAX_ROOM_MENTIONS)] = []
    """Members the message mentions: routing metadata, visible to the server (docs/crypto.md)."""
    device_digest: DeviceDigest | None = None
    """:func:`device_digest` of the member devices the sender gave its sender key to:
    the gateway refuses the message (``devices_changed``) when the room's member
    devices are others, so a device linked a moment ago is never sent a message it
    cannot read (docs/rooms.md, "Private rooms")."""

    def __post_init__(self) -> None:
        _check(is_client_id(self.id), "id", "printable ASCII without spaces expected")
        _check(set(self.room) <= _HEX, "room", "24 lowercase hex digits expected")
        if self.device_digest is not None:
            _check(is_b64url(self.device_digest), "device_digest", "base64url expected")
        _check(is_b64url(self.body), "body", "base64url expected")
        _check_commitment(self.commitment, self.body)
        for user in self.mentions:
            _check(is_b64url(user), "mentions", "user ids expected")
        _check(len(set(self.mentions)) == len(self.mentions), "mentions", "each user once")


class Ack(ClientFrame, tag="ack"):
    """Cumulative: every item of mine up to ``seq`` is processed."""

    seq: Seq
    id: ClientId | None = None

    def __post_init__(self) -> None:
        _check_id(self.id)


class Sync(ClientFrame, tag="sync"):
    """Page through my inbox after ``after`` (exclusive)."""

    after: Seq = 0
    limit: PageLimit = 100
    id: ClientId | None = None

    def __post_init__(self) -> None:
        _check_id(self.id)


class Ping(ClientFrame, tag="ping"):
    id: ClientId | None = None

    def __post_init__(self) -> None:
        _check_id(self.id)


TYPING_EVERY_S = 2
"""The fastest one device may say again that it is typing in one room
(``rate_limited``): clients repeat ``typing`` every 3 s or so while typing."""
TYPING_TTL_S = 6
"""How long a client shows a member typing after their last ``typing`` notice."""


class Typing(ClientFrame, tag="typing"):
    """I am typing in ``room`` (``typing``), or stopped (the draft was sent or cleared):
    a hint for the room's members, not stored, seen by the server (docs/crypto.md).
    Sent again every few seconds while typing, at most every ``TYPING_EVERY_S``."""

    room: RoomId
    typing: bool = True
    id: ClientId | None = None

    def __post_init__(self) -> None:
        _check(set(self.room) <= _HEX, "room", "24 lowercase hex digits expected")
        _check_id(self.id)


def _check_id(value: str | None) -> None:
    if value is not None:
        _check(is_client_id(value), "id", "printable ASCII without spaces expected")


ClientFrames = Auth | Send | RoomSend | Ack | Sync | Ping | Typing


# -- server → client ----------------------------------------------------------------------


class Limits(Struct):
    max_frame_bytes: int
    sends_per_s: float
    send_burst: int


class Ready(ServerFrame, tag="ready"):
    """Authenticated."""

    protocol: int
    user_id: str
    session_id: str
    gateway: str
    id: str | None = None
    limits: Limits | None = None


class Accepted(ServerFrame, tag="accepted"):
    """Every copy of the message is durably in the broker."""

    id: str
    server_id: str
    conversation: str


class Stored(ServerFrame, tag="stored"):
    """One copy is in its device's inbox (``to``'s device ``device``)."""

    id: str
    server_id: str
    conversation: str | None
    to: str
    device: int


class Delivered(ServerFrame, tag="delivered"):
    """One device (``to``'s device ``device``) acknowledged its copy."""

    id: str
    server_id: str
    conversation: str | None
    to: str
    device: int


class Identity(Struct):
    """A device identity as the key directory publishes it (base64url)."""

    signing_key: str
    dh_key: str
    dh_sig: str


class Message(ServerFrame, tag="message"):
    """An incoming message (pushed, or in a sync page)."""

    seq: int
    server_id: str
    from_: str = msgspec.field(name="from")
    from_device: int
    body: str
    conversation: str | None = None
    commitment: str | None = None
    sent_at: int | None = None
    room: str | None = None
    """A private room's message (``conversation`` is ``room:<room>``): ``body`` is a
    sender-key ciphertext, the same for every member device."""
    mentions: list[str] | None = None
    franking_tag: str | None = None
    """The server's reporting tag (``<key id>.<base64url HMAC>``, docs/crypto.md "Message
    franking"): set when the copy carries a ``commitment``. Keep it with the message to
    report it (``POST /delivery/v1/reports``)."""
    kind: Literal["message"] = "message"


class RoomMessage(ServerFrame, tag="room_message"):
    """A private room's message (protocol 3): pushed to every socket of every member,
    and read again from the room's log (``GET /delivery/v1/rooms/{room}/log``).
    ``seq`` is its number in the room's log, the same for every member device and
    never an inbox's: it is not acknowledged (a device keeps its own place in each
    room's log). ``body`` is a sender-key ciphertext."""

    room: str
    seq: int
    server_id: str
    from_: str = msgspec.field(name="from")
    from_device: int
    body: str
    sent_at: int
    commitment: str | None = None
    mentions: list[str] | None = None
    franking_tag: str | None = None
    """The server's reporting tag of the message as delivered to the room (not to
    one member: docs/crypto.md "Message franking")."""


class KeyChanged(ServerFrame, tag="key_changed"):
    """A contact's account identity key changed (a reset, not a new device): warn,
    show the new safety number."""

    seq: int
    server_id: str
    user_id: str
    account_key: str | None = None
    """The new account identity key (Ed25519, base64url); verify it before trusting."""
    sent_at: int | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    conversation: str | None = None
    kind: Literal["key_changed"] = "key_changed"


class Tombstone(ServerFrame, tag="tombstone"):
    """A message was removed (by its sender or by an admin): hide it and show "removed".

    Stored in the inbox like a message and acknowledged with ``ack``. ``signature`` is
    the delivery service's Ed25519 signature (key ``kid``, published at ``GET
    /delivery/v1/moderation/keys``) over :func:`tombstone_signed_bytes`; a client
    ignores a tombstone that does not verify (docs/crypto.md, "Tombstones")."""

    seq: int
    server_id: str
    """The removed message's ``server_id``."""
    from_: str = msgspec.field(name="from")
    """Who sent the removed message."""
    conversation: str | None
    by: Literal["sender", "admin"]
    at: int
    kid: str
    signature: str
    kind: Literal["tombstone"] = "tombstone"


TOMBSTONE_CONTEXT = b"parley-v1/tombstone\x00"


def tombstone_signed_bytes(
    *, kid: str, server_id: str, sender: str, conversation: str | None, by: str, at: int
) -> bytes:
    """What a tombstone's signature covers: a context, then each field as a 4-byte
    big-endian length and its UTF-8 bytes (``at`` in decimal, a missing conversation
    as the empty string)."""
    out = bytearray(TOMBSTONE_CONTEXT)
    for value in (kid, server_id, sender, conversation or "", by, str(int(at))):
        raw = value.encode()
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


class PrekeysLow(ServerFrame, tag="prekeys_low"):
    """Upload more one-time prekeys."""

    user_id: str
    device_id: int
    one_time: int
    kem_one_time: int
    threshold: int
    event_id: str | None = None


class RoomPost(ServerFrame, tag="room_post"):
    """A new message in a public room the user is a member of (live, not stored in the
    inbox: the room's timeline is the record; read it with the rooms API)."""

    room_id: str
    seq: int
    sender: str
    client_id: str
    text: str
    mentions: list[str]
    sent_at: int


class Notification(ServerFrame, tag="notification"):
    """A notification (a mention) was added to the user's list (``GET
    /rooms/v1/notifications``): ``seq`` is its number there."""

    seq: int
    kind: str
    room_id: str
    room_name: str
    sender: str
    excerpt: str
    at: int
    message_seq: int | None = None
    """A public room's message (its timeline ``seq``)."""
    server_id: str | None = None
    """A private room's message (the ``server_id`` of its ``message`` frame)."""


MessageMarker = Literal[
    "edited", "edited_by_moderator", "removed_by_moderator", "deleted_by_author"
]


class RoomMessageChanged(ServerFrame, tag="room_message_changed"):
    """A public room's message changed (docs/moderation.md): show ``text`` (empty once
    removed or deleted) with the ``marker``; ``rev`` grows with every change, so a
    client keeps the highest it has seen. The timeline holds the same (``GET
    /rooms/v1/rooms/{room_id}/messages``). A removal undone (restored) shows the
    message as it was before it: its marker then, null for one never edited."""

    room_id: str
    seq: int
    rev: int
    marker: MessageMarker | None
    text: str
    mentions: list[str]
    at: int


class RoomChanged(ServerFrame, tag="room_changed"):
    """The room changed (docs/rooms.md, docs/moderation.md): ``change`` is ``kind`` (an
    admin made it ``kind``: private means end-to-end encrypted from now on), ``state``
    (closed or opened), ``member_removed`` (``user_id`` is no longer a member),
    ``member_left`` (``user_id`` left), ``role`` (``user_id``'s role is ``role`` now:
    ``owner`` after a hand-over, whose old owner is a moderator now),
    ``deleted``, or ``settings`` (its owner or a moderator, ``user_id``, renamed it or
    set its topic: ``name`` and ``topic`` are the room's now)."""

    room_id: str
    change: Literal["kind", "state", "member_removed", "member_left", "role", "deleted",
                    "settings"]  # fmt: skip
    kind: str
    state: str
    version: int
    at: int
    user_id: str | None = None
    name: str | None = None
    topic: str | None = None
    role: str | None = None


class TypingNotice(ServerFrame, tag="typing"):
    """``user``'s ``device`` is typing in ``room_id`` (``typing``), or stopped: show it
    for ``TYPING_TTL_S`` unless a new notice comes. Every socket of every member
    gets it, the typer's own user's included (a client skips its own)."""

    room_id: str
    user: str
    device: int
    typing: bool


class Synced(ServerFrame, tag="synced"):
    """End of a sync page: ``last`` is the seq of the last item sent (or ``after``)."""

    last: int
    more: bool
    id: str | None = None


class Pong(ServerFrame, tag="pong"):
    id: str | None = None


class Reconnect(ServerFrame, tag="reconnect"):
    """The pod is draining: connect again (another pod), then sync."""

    reason: str


class Resync(ServerFrame, tag="resync"):
    """Frames meant for this socket may have been lost: sync from the last seq."""

    reason: str


class FieldError(Struct):
    field: str
    problem: str


class DeviceList(Struct):
    """A user's current devices (with ``devices_changed``)."""

    user: str
    devices: list[int]


class Error(ServerFrame, tag="error"):
    code: str
    """One of :class:`ErrorCode` (a client meets codes newer than itself: a str)."""
    message: str
    id: str | None = None
    details: list[FieldError] | None = None
    devices: list[DeviceList] | None = None
    """With ``devices_changed``: the current device lists the send must match."""


ServerFrames = (
    Ready
    | Accepted
    | Stored
    | Delivered
    | Message
    | RoomMessage
    | KeyChanged
    | Tombstone
    | PrekeysLow
    | RoomPost
    | Notification
    | RoomMessageChanged
    | RoomChanged
    | TypingNotice
    | Synced
    | Pong
    | Reconnect
    | Resync
    | Error
)
InboxItem = Message | KeyChanged | Tombstone
"""What an inbox holds and a sync page returns (also over HTTP)."""


class InboxPage(Struct):
    """A page of an inbox (delivery's HTTP API; the gateway turns it into frames)."""

    messages: list[InboxItem]
    more: bool


class RoomLogPage(Struct):
    """A page of a private room's log, oldest first (delivery's HTTP API,
    ``GET /delivery/v1/rooms/{room}/log``): the messages after ``after`` that the
    caller may read (removed ones left out), ``next`` the number to read after next
    (the last one the page looked at), and ``more`` when there may be more."""

    room: str
    messages: list[RoomMessage]
    next: int
    more: bool


CLIENT_OPS: tuple[str, ...] = tuple(str(t.__struct_config__.tag) for t in get_args(ClientFrames))
SERVER_OPS: tuple[str, ...] = tuple(str(t.__struct_config__.tag) for t in get_args(ServerFrames))

# -- WebSocket close codes (4000-4999 are the application's) ----------------------------

CLOSE_AUTH_FAILED = 4001
CLOSE_AUTH_TIMEOUT = 4002
CLOSE_REVOKED = 4003
CLOSE_REAUTH = 4005
"""The access token the socket authenticated with expired and was not renewed in place:
connect again with a fresh token (the SDK refreshes and reconnects at once)."""
CLOSE_SLOW_CONSUMER = 4008
CLOSE_FLOOD = 4009
CLOSE_TOO_MANY = 4010
"""Too many sockets for this user or from this address on the pod: close another first."""
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN = 1013

# -- reading and writing ------------------------------------------------------------------


class FrameError(Exception):
    """A frame that cannot be used: a stable code, a message, the fields at fault."""

    def __init__(
        self, code: ErrorCode, message: str, details: list[FieldError] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


_client_decoder = msgspec.json.Decoder(ClientFrames)
_server_decoder = msgspec.json.Decoder(ServerFrames)
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
_PATH = re.compile(r" - at `\$\.?([^`]*)`$")


def encode(frame: Struct) -> bytes:
    """The JSON bytes of a frame (or of any contract model)."""
    return _encoder.encode(frame)


def decode_client_frame(data: bytes | str) -> ClientFrames:
    """Parse a client → server frame, or raise :class:`FrameError`."""
    try:
        return _client_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        raise _classify(data, exc, CLIENT_OPS) from None


def decode_server_frame(data: bytes | str) -> ServerFrames:
    """Parse a server → client frame (clients), or raise :class:`FrameError`."""
    try:
        return _server_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        raise _classify(data, exc, SERVER_OPS) from None


def frame_id(data: bytes | str) -> str | None:
    """The ``id`` of a frame that failed to parse, if it has a usable one (for the reply)."""
    try:
        raw = _any_decoder.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return None
    if isinstance(raw, dict):
        value = raw.get("id")
        if isinstance(value, str) and 0 < len(value) <= 64:
            return value
    return None


def _classify(data: bytes | str, exc: Exception, ops: tuple[str, ...]) -> FrameError:
    """Say why a frame failed, with a stable code (the slow path: errors only)."""
    try:
        raw: Any = _any_decoder.decode(data)
    except msgspec.DecodeError:
        return FrameError(ErrorCode.INVALID_JSON, "The frame is not valid JSON.")
    except RecursionError:
        # msgspec gives up near 1,000 levels (a 2 KB frame): it was an unhandled error,
        # the socket closed with 1011 and a traceback logged per frame.
        return FrameError(ErrorCode.BAD_REQUEST, "The frame is nested too deeply.")
    if not isinstance(raw, dict):
        return FrameError(ErrorCode.BAD_REQUEST, "A frame is one JSON object.")
    if raw.get("op") not in ops:
        return FrameError(ErrorCode.UNKNOWN_OP, f"Unknown op; expected one of {sorted(ops)}.")
    text = str(exc)
    match = _PATH.search(text)
    field = match.group(1) if match else ""
    problem = _PATH.sub("", text)
    own = re.match(r"^([a-z_]+): (.*)$", problem)  # from a __post_init__ check
    if own:
        field = f"{field}.{own.group(1)}" if field else own.group(1)
        problem = own.group(2)
    missing = re.match(r"Object missing required field `([^`]+)`", problem)
    if missing:
        field = f"{field}.{missing.group(1)}" if field else missing.group(1)
        problem = "field required"
    unknown = re.match(r"Object contains unknown field `([^`]+)`", problem)
    if unknown:
        field = f"{field}.{unknown.group(1)}" if field else unknown.group(1)
        problem = "unknown field"
    return FrameError(
        ErrorCode.VALIDATION_FAILED,
        "The frame is not valid.",
        [FieldError(field=field or "(frame)", problem=problem)],
    )
