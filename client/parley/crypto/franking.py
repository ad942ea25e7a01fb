"""Message franking: commitments that make abuse reports verifiable.

This module is deliberately standalone: it imports nothing from the rest of
``parley`` (only the standard library), so a server can use it, or copy it,
to check a report without touching protocol code.

Scheme (see docs/crypto.md, "Message franking"):

* for every message the sender draws a fresh 32-byte franking key ``fk``;
* ``commitment = HMAC-SHA256(fk, CONTEXT || plaintext)``;
* ``fk`` travels inside the end-to-end encrypted payload, ``commitment`` in the
  clear: it is bytes ``[2:34]`` of every Parley ciphertext (1:1 and group),
  and it is also bound into the AEAD associated data, so nobody can swap it;
* the recipient checks the commitment after decrypting (the library rejects a
  message whose commitment does not match);
* to report, the recipient reveals ``plaintext`` and ``fk``; the server, which
  stored ``commitment`` when it relayed the message, calls :func:`verify_report`.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = [
    "COMMITMENT_LEN",
    "COMMITMENT_OFFSET",
    "CONTEXT",
    "FRANKING_KEY_LEN",
    "FrankingMismatch",
    "commit",
    "commitment_from_message",
    "verify_report",
]

FRANKING_KEY_LEN = 32
COMMITMENT_LEN = 32
CONTEXT = b"parley-v1/franking\x00"
"""Domain-separation prefix hashed in front of the plaintext."""
COMMITMENT_OFFSET = 2
"""Every Parley ciphertext starts with version (1 byte), type (1 byte), commitment."""
_SUPPORTED_VERSIONS = frozenset({1})


class FrankingMismatch(ValueError):
    """The revealed plaintext and franking key do not open the commitment.

    It derives from ``ValueError`` (not from ``parley.crypto.CryptoError``)
    because this module must stay free of library imports.
    """


def _require_bytes(name: str, value: object, length: int | None = None) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    if length is not None and len(value) != length:
        raise FrankingMismatch(f"{name} must be {length} bytes, got {len(value)}")
    return value


def commit(plaintext: bytes, franking_key: bytes) -> bytes:
    """Return the 32-byte commitment to ``plaintext`` under ``franking_key``."""
    _require_bytes("plaintext", plaintext)
    _require_bytes("franking_key", franking_key, FRANKING_KEY_LEN)
    return hmac.digest(franking_key, CONTEXT + plaintext, hashlib.sha256)


def verify_report(plaintext: bytes, franking_key: bytes, commitment: bytes) -> None:
    """Check a report; return ``None`` if it is genuine, raise ``FrankingMismatch`` if not."""
    _require_bytes("plaintext", plaintext)
    _require_bytes("franking_key", franking_key, FRANKING_KEY_LEN)
    _require_bytes("commitment", commitment, COMMITMENT_LEN)
    expected = hmac.digest(franking_key, CONTEXT + plaintext, hashlib.sha256)
    if not hmac.compare_digest(expected, commitment):
        raise FrankingMismatch("the plaintext and franking key do not match the commitment")


def commitment_from_message(message: bytes) -> bytes:
    """Extract the clear-text commitment from a Parley ciphertext (any message type).

    Raises ``ValueError`` if ``message`` is too short or has an unknown version.
    """
    _require_bytes("message", message)
    if len(message) < COMMITMENT_OFFSET + COMMITMENT_LEN:
        raise ValueError("message too short to carry a franking commitment")
    if message[0] not in _SUPPORTED_VERSIONS:
        raise ValueError(f"unsupported message version {message[0]}")
    return message[COMMITMENT_OFFSET : COMMITMENT_OFFSET + COMMITMENT_LEN]
