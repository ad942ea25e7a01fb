"""A socket's access token, kept in two thirds of the memory.

A socket keeps the token it authenticated with for its calls to the other
services on its user's behalf (sync, acks, the directory, device lists, rooms):
they check it on every call. As text it is ~500 characters, ~550 bytes of every
idle socket (docs/BENCHMARKS.md, "Idle connections"). Kept instead as

- its header (the first part, the same for every token signed with one key)
  in one string shared by the pod's sockets, and
- its payload and signature decoded from base64url into one ``bytes``,

it costs ~360 bytes, and the exact same text is rebuilt (about a microsecond)
for each call that sends it. A token whose text would not come back exactly
(anything but canonical, unpadded base64url) is kept as it is.
"""

from __future__ import annotations

import base64
import binascii

_HEADERS: dict[str, str] = {}
_HEADERS_MAX = 16  # signing keys in use at once are a handful (they rotate)


def pack(token: str) -> tuple[str, bytes]:
    """``token`` as ``(head, body)`` for :func:`unpack`; ``(token, b"")`` if it does not
    pack (``head`` is shared between the tokens of one signing key)."""
    header, _, rest = token.partition(".")
    payload, _, signature = rest.partition(".")
    try:
        raw_payload, raw_signature = _decode(payload), _decode(signature)
    except (binascii.Error, ValueError):
        return token, b""
    if len(raw_payload) >= 1 << 16:
        return token, b""
    head = header + "."
    if head not in _HEADERS and len(_HEADERS) >= _HEADERS_MAX:
        _HEADERS.clear()  # keys were rotated: the sockets keep the strings they have
    head = _HEADERS.setdefault(head, head)
    body = len(raw_payload).to_bytes(2, "big") + raw_payload + raw_signature
    if unpack(head, body) != token:
        return token, b""
    return head, body


def unpack(head: str, body: bytes) -> str:
    """The token's text, as it was given to :func:`pack`."""
    if not body:
        return head
    n = int.from_bytes(body[:2], "big")
    view = memoryview(body)
    return head + _encode(view[2 : 2 + n]) + "." + _encode(view[2 + n :])


def _decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _encode(raw: memoryview) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
