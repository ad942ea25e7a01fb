"""Exceptions raised by :mod:`parley.crypto`.

Every failure is an exception; no function of this package signals failure by
returning ``False`` or ``None``.  All of them derive from :class:`CryptoError`,
so a caller that only wants "did it work" catches that one class, while tests
and careful callers catch the narrow ones.
"""

from __future__ import annotations


class CryptoError(Exception):
    """Base class of every error raised by parley.crypto."""


class InvalidKey(CryptoError):
    """A key is unusable: wrong type, wrong encoding or a low-order point."""


class InvalidKeyLength(InvalidKey):
    """A key (or nonce, seed, signature) has the wrong number of bytes."""


class InvalidSignature(CryptoError):
    """An Ed25519 signature does not verify."""


class DecryptionFailed(CryptoError):
    """AEAD authentication failed: wrong key, or header/body/associated data changed."""


class ReplayedMessage(CryptoError):
    """The message was already decrypted (or its key was deliberately discarded)."""


class TooManySkippedMessages(CryptoError):
    """The message would need more skipped message keys than the bound allows."""


class CounterExhausted(CryptoError):
    """A 32-bit counter ran out: a sending chain's message number, a sender key's
    iteration (rotate it) or a device's prekey ids."""


class PrekeyReused(CryptoError):
    """An initial message names a one-time prekey that was already consumed."""


class UnknownPrekey(CryptoError):
    """An initial message names a prekey id this device never issued (or dropped)."""


class MalformedMessage(CryptoError):
    """A binary message does not parse (length, version, type or field ranges)."""


class UnsupportedVersion(MalformedMessage):
    """The message's version byte is not one this library speaks."""


class MalformedBundle(CryptoError):
    """A JSON key bundle is missing fields or has fields of the wrong type/encoding."""


class IdentityChanged(CryptoError):
    """A contact presented an identity key different from the one we know.

    ``old_safety_number`` and ``new_safety_number`` are filled in when the
    caller supplied enough information to compute them.
    """

    def __init__(
        self,
        message: str,
        *,
        old_safety_number: str | None = None,
        new_safety_number: str | None = None,
    ) -> None:
        super().__init__(message)
        self.old_safety_number = old_safety_number
        self.new_safety_number = new_safety_number


class SessionMismatch(CryptoError):
    """The message belongs to a different session (other initial message or peer)."""


class UnknownSenderKey(CryptoError):
    """A group message uses a sender key we have not received (or have dropped)."""


class RetiredSenderKey(ReplayedMessage):
    """A sender-key distribution message for a chain we already dropped (evicted by
    newer chains of that member, or the member was removed): taking it again would
    rewind the chain and let old group messages be replayed."""


class FrankingMismatch(CryptoError):
    """A report's plaintext and franking key do not open its franking commitment."""


class InvalidSafetyNumber(CryptoError):
    """A string given as a safety number is not 60 decimal digits."""


class MalformedState(CryptoError):
    """Serialized private state (device, session, group) does not parse."""


class BadCommitment(DecryptionFailed):
    """A decrypted message's franking commitment does not match its content.

    Such a message could not be reported, so the recipient rejects it.  (Checking
    a report raises :class:`FrankingMismatch` instead.)
    """


class MalformedDeviceList(CryptoError):
    """A device list breaks a structural rule: missing or mistyped members, an id,
    version or name out of range, devices not in ascending id order or repeated,
    badly encoded keys, unknown members."""


class UnlistedDevice(CryptoError):
    """A device is not in the account's signed device list: nothing may be
    encrypted to it, whatever the directory says."""


class DeviceMismatch(CryptoError):
    """A device's identity (signing key or DH key) differs from its entry in the
    signed device list, or a bundle is for another user than the list."""


class MalformedLinkCode(CryptoError):
    """A link code is not 54 characters of canonical base64url (``link_id ‖ E_pub``)."""
