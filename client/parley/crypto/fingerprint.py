"""Safety numbers (Signal's numeric fingerprint, version 0).

For each party: ``h = u16_be(0) || signing_key || user_id_utf8``, then 5200
times ``h = SHA-512(h || signing_key)``; the first 30 bytes, in six 5-byte
big-endian chunks, each reduced mod 100000 and printed as 5 digits, give 30
digits.  The safety number is the two 30-digit halves in sorted order (so both
parties see the same 60 digits), shown as 12 groups of 5.

Differences from Signal: the key is the raw 32-byte Ed25519 identity signing
key (Signal hashes its 33-byte ``0x05 || Curve25519`` encoding) and the stable
identifier is Parley's user id.  The DH identity key need not be included: it is
signed by the signing key.
"""

from __future__ import annotations

import hashlib

from parley.crypto.errors import InvalidSafetyNumber
from parley.crypto.primitives import ED25519_KEY_LEN, require_bytes

__all__ = [
    "FINGERPRINT_ITERATIONS",
    "FINGERPRINT_VERSION",
    "fingerprint_digits",
    "format_safety_number",
    "safety_number",
]

FINGERPRINT_VERSION = 0
FINGERPRINT_ITERATIONS = 5200


def fingerprint_digits(signing_key: bytes, user_id: str) -> str:
    """One party's 30 digits."""
    require_bytes("signing_key", signing_key, ED25519_KEY_LEN)
    if not isinstance(user_id, str):
        raise TypeError("user_id must be str")
    digest = FINGERPRINT_VERSION.to_bytes(2, "big") + signing_key + user_id.encode("utf-8")
    for _ in range(FINGERPRINT_ITERATIONS):
        digest = hashlib.sha512(digest + signing_key).digest()
    return "".join(
        f"{int.from_bytes(digest[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5)
    )


def safety_number(
    local_signing_key: bytes, local_user_id: str, remote_signing_key: bytes, remote_user_id: str
) -> str:
    """The 60-digit safety number; identical on both sides."""
    local = fingerprint_digits(local_signing_key, local_user_id)
    remote = fingerprint_digits(remote_signing_key, remote_user_id)
    return local + remote if local <= remote else remote + local


def format_safety_number(number: str) -> str:
    """``'12345 67890 ...'``: 12 groups of 5 digits; raises :class:`InvalidSafetyNumber`
    unless ``number`` is 60 digits (``TypeError`` if it is not a ``str``)."""
    if not isinstance(number, str):
        raise TypeError(f"safety number must be str, not {type(number).__name__}")
    if len(number) != 60 or not number.isdigit():
        raise InvalidSafetyNumber("a safety number has exactly 60 digits")
    return " ".join(number[i : i + 5] for i in range(0, 60, 5))
