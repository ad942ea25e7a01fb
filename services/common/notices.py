"""``MentionNotice``: a mention notification on ``<prefix>notifications`` (key: the user).

The rooms service produces one per notification it creates (through its
outbox: at least once, and never for a notification that was not stored);
the notifier consumes them to e-mail digests to users with no connected
device (docs/notifier.md).

It belongs in ``parley_contract.envelopes`` with the other Kafka envelopes
(one contract for what crosses a process boundary); it lives here until the
contract's owners move it there, unchanged (the same fields, the same JSON).
Decoding is strict: an unknown version is refused, not guessed.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import Struct

NOTICE_VERSION: Literal[1] = 1


class MentionNotice(Struct, kw_only=True, frozen=True):
    v: Literal[1] = NOTICE_VERSION
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


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(MentionNotice)


def encode_notice(notice: MentionNotice) -> bytes:
    return _encoder.encode(notice)


def decode_notice(data: bytes) -> MentionNotice:
    """Raises ``msgspec.ValidationError`` / ``DecodeError`` on anything else."""
    return _decoder.decode(data)
