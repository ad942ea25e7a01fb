"""Parley's client-side end-to-end encryption.

Layers: :mod:`~parley.crypto.primitives` (thin wrappers over ``cryptography``,
the only module that imports it) -> protocols (:mod:`~parley.crypto.pqxdh`,
:mod:`~parley.crypto.ratchet`, :mod:`~parley.crypto.sender_keys`,
:mod:`~parley.crypto.franking`, :mod:`~parley.crypto.fingerprint`, ...) -> the
public API of :mod:`~parley.crypto.session`, re-exported here with every error
of :mod:`~parley.crypto.errors`.  See docs/crypto.md, "Layers".
"""

from parley.crypto.bundle import (
    KemPrekey,
    OneTimePrekey,
    PrekeyBundle,
    PublicIdentity,
    SignedPrekey,
)
from parley.crypto.errors import (
    BadCommitment,
    CounterExhausted,
    CryptoError,
    DecryptionFailed,
    FrankingMismatch,
    IdentityChanged,
    InvalidKey,
    InvalidKeyLength,
    InvalidSafetyNumber,
    InvalidSignature,
    MalformedBundle,
    MalformedMessage,
    MalformedState,
    PrekeyReused,
    ReplayedMessage,
    SessionMismatch,
    TooManySkippedMessages,
    UnknownPrekey,
    UnknownSenderKey,
    UnsupportedVersion,
)
from parley.crypto.fingerprint import format_safety_number, safety_number
from parley.crypto.franking import commitment_from_message, verify_report
from parley.crypto.session import (
    DecryptedMessage,
    Device,
    GroupSession,
    Session,
    check_identity,
    is_initial_message,
)

__all__ = [
    "BadCommitment",
    "CounterExhausted",
    "CryptoError",
    "DecryptedMessage",
    "DecryptionFailed",
    "Device",
    "FrankingMismatch",
    "GroupSession",
    "IdentityChanged",
    "InvalidKey",
    "InvalidKeyLength",
    "InvalidSafetyNumber",
    "InvalidSignature",
    "KemPrekey",
    "MalformedBundle",
    "MalformedMessage",
    "MalformedState",
    "OneTimePrekey",
    "PrekeyBundle",
    "PrekeyReused",
    "PublicIdentity",
    "ReplayedMessage",
    "Session",
    "SessionMismatch",
    "SignedPrekey",
    "TooManySkippedMessages",
    "UnknownPrekey",
    "UnknownSenderKey",
    "UnsupportedVersion",
    "check_identity",
    "commitment_from_message",
    "format_safety_number",
    "is_initial_message",
    "safety_number",
    "verify_report",
]
