"""Message franking: commitments that make abuse reports verifiable.

Scheme (see docs/crypto.md, "Message franking"):

* for every message the sender draws a fresh 32-byte franking key ``fk``;
* ``commitment = HMAC-SHA256(fk, CONTEXT || plaintext)``;
* ``fk`` travels inside the end-to-end encrypted payload, ``commitment`` in the
  clear: it is bytes ``[2:34]`` of every Parley ciphertext (1:1 and group),
  and it is also bound into the AEAD associated data, so nobody can swap it;
* the recipient checks the commitment after decrypting (the session rejects a
  message whose commitment does not match);
* to report, the recipient reveals ``plaintext`` and ``fk``; whoever stored
  ``commitment`` when the message was relayed calls :func:`verify_report`.

A protocol module: it builds on :mod:`parley.crypto.primitives` (HMAC-SHA256)
and raises the errors of :mod:`parley.crypto.errors`.
"""

from __future__ import annotations

import hmac

from parley.crypto.errors import FrankingMismatch, MalformedMessage, UnsupportedVersion
from parley.crypto.primitives import hmac_sha256_key32, require_bytes

__all__ = [
    "COMMITMENT_LEN",
    "COMMITMENT_OFFSET",
    "CONTEXT",
    "FRANKING_KEY_LEN",
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
_COMMITMENT_END = COMMITMENT_OFFSET + COMMITMENT_LEN
_SUPPORTED_VERSIONS = frozenset({1})


def commit(plaintext: bytes, franking_key: bytes) -> bytes:
    """Return the 32-byte commitment to ``plaintext`` under ``franking_key``.

    Raises ``TypeError`` for non-bytes and :class:`InvalidKeyLength` for a key
    that is not 32 bytes.
    """
    require_bytes("plaintext", plaintext)
    require_bytes("franking_key", franking_key, FRANKING_KEY_LEN)
    return hmac_sha256_key32(franking_key, CONTEXT + plaintext)


def verify_report(plaintext: bytes, franking_key: bytes, commitment: bytes) -> None:
    """Check a report; return ``None`` if it is genuine, raise :class:`FrankingMismatch` if not
    (a franking key or commitment of the wrong length cannot open it either)."""
    require_bytes("plaintext", plaintext)
    require_bytes("franking_key", franking_key)
    require_bytes("commitment", commitment)
    if len(franking_key) != FRANKING_KEY_LEN:
        raise FrankingMismatch(f"franking_key must be {FRANKING_KEY_LEN} bytes")
    if len(commitment) != COMMITMENT_LEN:
        raise FrankingMismatch(f"commitment must be {COMMITMENT_LEN} bytes")
    expected = hmac_sha256_key32(franking_key, CONTEXT + plaintext)
    if not hmac.compare_digest(expected, commitment):
        raise FrankingMismatch("the plaintext and franking key do not match the commitment")


def commitment_from_message(message: bytes) -> bytes:
    """Extract the clear-text commitment from a Parley ciphertext (any message type).

    Raises :class:`MalformedMessage` if ``message`` is too short to carry one and
    :class:`UnsupportedVersion` (a MalformedMessage) for an unknown version.
    """
    require_bytes("message", message)
    if len(message) < _COMMITMENT_END:
        raise MalformedMessage("message too short to carry a franking commitment")
    if message[0] not in _SUPPORTED_VERSIONS:
        raise UnsupportedVersion(f"unsupported message version {message[0]}")
    return message[COMMITMENT_OFFSET:_COMMITMENT_END]
