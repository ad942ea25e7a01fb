"""Byte encodings shared by the protocol modules: base64url and fixed integers."""

from __future__ import annotations

import base64
import binascii
import re
import struct
from typing import Any

import orjson

from parley.crypto.errors import MalformedBundle, MalformedState

__all__ = [
    "U32_MAX",
    "b64decode",
    "b64encode",
    "check_u32",
    "load_state",
    "u32",
]

U32_MAX = 2**32 - 1
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_U32 = struct.Struct(">I")


def b64encode(data: bytes) -> str:
    """base64url without padding (RFC 4648 section 5, '=' stripped)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: Any, *, field: str = "value", length: int | None = None) -> bytes:
    """Strictly decode unpadded base64url; raise :class:`MalformedBundle` otherwise.

    Strict means: a ``str``, only the url-safe alphabet, no padding, no
    whitespace, canonical (unused trailing bits zero) and, if given, exactly
    ``length`` decoded bytes.
    """
    if not isinstance(text, str):
        raise MalformedBundle(f"{field}: expected a base64url string")
    if _B64URL.fullmatch(text) is None or len(text) % 4 == 1:
        raise MalformedBundle(f"{field}: not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - regex filters these
        raise MalformedBundle(f"{field}: not unpadded base64url") from exc
    if b64encode(data) != text:
        raise MalformedBundle(f"{field}: non-canonical base64url")
    if length is not None and len(data) != length:
        raise MalformedBundle(f"{field}: expected {length} bytes, got {len(data)}")
    return data


def check_u32(value: Any, *, field: str = "id") -> int:
    """Return ``value`` if it is an int (not bool) in 0..2^32-1, else raise MalformedBundle."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= U32_MAX:
        raise MalformedBundle(f"{field}: expected an integer in 0..2^32-1")
    return value


def u32(value: int) -> bytes:
    """4-byte big-endian encoding (the only integer width on the wire)."""
    return _U32.pack(value)


def load_state(data: Any) -> Any:
    """Parse serialised private state (UTF-8 JSON); raise MalformedState if it is not.

    orjson, not ``json``: it refuses nesting deeper than 1,024 levels at once, where
    ``json`` recurses until the interpreter's recursion limit, and anything else
    (a ``gc`` callback, a logging handler) that runs that deep fails too."""
    if not isinstance(data, bytes | bytearray | str):
        raise TypeError("state must be bytes")
    try:
        return orjson.loads(data)
    except ValueError as exc:
        raise MalformedState("state is not JSON") from exc
