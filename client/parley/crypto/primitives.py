"""Thin, strict wrappers over ``cryptography`` (and hashlib for SHA-256).

Nothing here knows about Parley's protocols; the protocol modules build on
these functions only.  Inputs are checked for type and length; failures raise
the narrow exceptions of :mod:`parley.crypto.errors`.

Primitives: X25519 (RFC 7748), Ed25519 (RFC 8032), HKDF-SHA256 (RFC 5869),
HMAC-SHA256 (RFC 2104), AES-256-GCM, ML-KEM-768 (FIPS 203).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.mlkem import (
    MLKEM768PrivateKey,
    MLKEM768PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from parley_contract.keys import ed25519_small_order

from parley.crypto.errors import (
    DecryptionFailed,
    InvalidKey,
    InvalidKeyLength,
    InvalidSignature,
)

__all__ = [
    "AES_KEY_LEN",
    "ED25519_KEY_LEN",
    "ED25519_SIG_LEN",
    "GCM_NONCE_LEN",
    "GCM_TAG_LEN",
    "MLKEM768_CT_LEN",
    "MLKEM768_EK_LEN",
    "MLKEM768_SEED_LEN",
    "MLKEM768_SS_LEN",
    "X25519_KEY_LEN",
    "Ed25519KeyPair",
    "MLKEM768KeyPair",
    "MessageKeyDeriver",
    "RandomSource",
    "X25519KeyPair",
    "aead_decrypt",
    "aead_encrypt",
    "chain_key_step",
    "ed25519_small_order",
    "ed25519_verify",
    "hkdf_sha256",
    "hmac_sha256",
    "hmac_sha256_key32",
    "mlkem768_encapsulate",
    "require_bytes",
    "system_random",
]

X25519_KEY_LEN = 32
ED25519_KEY_LEN = 32
ED25519_SIG_LEN = 64
AES_KEY_LEN = 32
GCM_NONCE_LEN = 12
GCM_TAG_LEN = 16
MLKEM768_EK_LEN = 1184
MLKEM768_CT_LEN = 1088
MLKEM768_SEED_LEN = 64
MLKEM768_SS_LEN = 32
_HASH_LEN = 32
_BLOCK = 64
_SHA256 = hashes.SHA256()

RandomSource = Callable[[int], bytes]
"""Where randomness comes from: ``rng(n)`` returns ``n`` fresh random bytes."""

system_random: RandomSource = os.urandom


def require_bytes(name: str, value: object, length: int | None = None) -> bytes:
    """Return ``value`` if it is ``bytes`` of the given length.

    Raises ``TypeError`` for a non-bytes value (a programming error) and
    :class:`InvalidKeyLength` for a wrong length.
    """
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    if length is not None and len(value) != length:
        raise InvalidKeyLength(f"{name} must be {length} bytes, got {len(value)}")
    return value


# --------------------------------------------------------------------------- X25519


class X25519KeyPair:
    """An X25519 private key and its 32-byte public key."""

    __slots__ = ("_private", "public")

    def __init__(self, private: X25519PrivateKey) -> None:
        self._private = private
        self.public: bytes = private.public_key().public_bytes_raw()

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> X25519KeyPair:
        require_bytes("X25519 private key", raw, X25519_KEY_LEN)
        return cls(X25519PrivateKey.from_private_bytes(raw))

    @classmethod
    def generate(cls, rng: RandomSource = system_random) -> X25519KeyPair:
        if rng is system_random:
            return cls(X25519PrivateKey.generate())
        return cls.from_private_bytes(rng(X25519_KEY_LEN))

    def private_bytes(self) -> bytes:
        return self._private.private_bytes_raw()

    def dh(self, peer_public: bytes) -> bytes:
        """X25519(self, peer); raises :class:`InvalidKey` for low-order peer points."""
        require_bytes("X25519 public key", peer_public, X25519_KEY_LEN)
        try:
            return self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:  # all-zero output: small-order point
            raise InvalidKey("X25519 exchange with a low-order public key") from exc

    def __repr__(self) -> str:  # never print private material
        return f"X25519KeyPair(public={self.public.hex()})"


# --------------------------------------------------------------------------- Ed25519


class Ed25519KeyPair:
    """An Ed25519 signing key (from a 32-byte seed) and its 32-byte public key."""

    __slots__ = ("_private", "public")

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public: bytes = private.public_key().public_bytes_raw()

    @classmethod
    def from_seed(cls, seed: bytes) -> Ed25519KeyPair:
        require_bytes("Ed25519 seed", seed, ED25519_KEY_LEN)
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def generate(cls, rng: RandomSource = system_random) -> Ed25519KeyPair:
        return cls.from_seed(rng(ED25519_KEY_LEN))

    def seed(self) -> bytes:
        return self._private.private_bytes_raw()

    def sign(self, message: bytes) -> bytes:
        require_bytes("message", message)
        return self._private.sign(message)

    def __repr__(self) -> str:
        return f"Ed25519KeyPair(public={self.public.hex()})"


def ed25519_verify(public_key: bytes, signature: bytes, message: bytes) -> None:
    """Verify or raise :class:`InvalidSignature` (bad lengths raise InvalidKeyLength).

    A public key of small order is refused whatever the signature."""
    require_bytes("Ed25519 public key", public_key, ED25519_KEY_LEN)
    require_bytes("Ed25519 signature", signature, ED25519_SIG_LEN)
    require_bytes("message", message)
    if ed25519_small_order(public_key):
        raise InvalidSignature("Ed25519 public key is of small order")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except _CryptoInvalidSignature as exc:
        raise InvalidSignature("Ed25519 signature does not verify") from exc
    except ValueError as exc:  # not a point on the curve
        raise InvalidSignature("Ed25519 public key is not a valid point") from exc


# --------------------------------------------------------------------------- HKDF / HMAC


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869) extract-then-expand."""
    require_bytes("ikm", ikm)
    require_bytes("salt", salt)
    require_bytes("info", info)
    if not 0 < length <= 255 * _HASH_LEN:
        raise ValueError("HKDF output length out of range")
    return HKDF(_SHA256, length, salt, info).derive(ikm)


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 (one-shot, OpenSSL-backed)."""
    require_bytes("HMAC key", key)
    require_bytes("HMAC data", data)
    return hmac.digest(key, data, hashlib.sha256)


_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_sha256 = hashlib.sha256
_ZERO_PAD = bytes(_BLOCK - _HASH_LEN)


def hmac_sha256_key32(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 for a 32-byte key, spelled out over hashlib (hot path).

    Same result as :func:`hmac_sha256` (checked by the tests) at about 2/3 of
    the cost for short messages, because it avoids OpenSSL's per-call MAC setup.
    """
    if len(key) != _HASH_LEN:
        raise InvalidKeyLength("key must be 32 bytes")
    padded = key + _ZERO_PAD
    return _sha256(
        padded.translate(_OPAD) + _sha256(padded.translate(_IPAD) + data).digest()
    ).digest()


def chain_key_step(chain_key: bytes) -> tuple[bytes, bytes]:
    """Double Ratchet KDF_CK: ``(HMAC(ck, 0x01), HMAC(ck, 0x02))`` = (message key, next ck).

    Hot path: the HMAC construction of RFC 2104 spelled out over hashlib
    SHA-256; both HMACs share the hash states of the two key pads (copied, not
    recomputed).  Equality with :func:`hmac_sha256` is checked by the test suite.
    """
    if len(chain_key) != _HASH_LEN:
        raise InvalidKeyLength("chain key must be 32 bytes")
    padded = chain_key + _ZERO_PAD
    inner = _sha256(padded.translate(_IPAD))
    inner_2 = inner.copy()
    outer = _sha256(padded.translate(_OPAD))
    outer_2 = outer.copy()
    inner.update(b"\x01")
    outer.update(inner.digest())
    inner_2.update(b"\x02")
    outer_2.update(inner_2.digest())
    return outer.digest(), outer_2.digest()


class MessageKeyDeriver:
    """``HKDF-SHA256(salt = 32 zero bytes, ikm = mk, info)`` -> AES key (32) + nonce (12).

    The HMAC state for the all-zero salt is computed once per deriver (the
    sound part of "cache HKDF objects"); the two expand blocks share the hash
    states of the PRK's key pads.  :meth:`step` fuses ``KDF_CK`` with this
    derivation for the per-message path.  Equality with :func:`hkdf_sha256`
    and :func:`chain_key_step` is checked by the tests.

    Why spelled out: each hashlib call costs ~0.25 us of OpenSSL setup, far
    more than a SHA-256 compression, so the cost is the number of calls;
    ``hmac.digest`` and ``cryptography``'s HMAC/HKDF objects are slower still.
    """

    __slots__ = ("_info1", "_info2", "_zero_inner", "_zero_outer")

    def __init__(self, info: bytes) -> None:
        require_bytes("info", info)
        zero = bytes(_BLOCK)
        self._zero_inner = _sha256(zero.translate(_IPAD))
        self._zero_outer = _sha256(zero.translate(_OPAD))
        self._info1 = info + b"\x01"
        self._info2 = info + b"\x02"

    def derive(self, message_key: bytes) -> tuple[bytes, bytes]:
        if len(message_key) != _HASH_LEN:
            raise InvalidKeyLength("message key must be 32 bytes")
        # PRK = HMAC(32 zero bytes, mk); T1 = HMAC(PRK, info || 1); T2 = HMAC(PRK, T1 || info || 2)
        inner = self._zero_inner.copy()
        inner.update(message_key)
        outer = self._zero_outer.copy()
        outer.update(inner.digest())
        prk = outer.digest() + _ZERO_PAD
        inner = _sha256(prk.translate(_IPAD))
        inner_2 = inner.copy()
        outer = _sha256(prk.translate(_OPAD))
        outer_2 = outer.copy()
        inner.update(self._info1)
        outer.update(inner.digest())
        t1 = outer.digest()
        inner_2.update(t1)
        inner_2.update(self._info2)
        outer_2.update(inner_2.digest())
        return t1, outer_2.digest()[:GCM_NONCE_LEN]

    def step(self, chain_key: bytes) -> tuple[bytes, bytes, bytes]:
        """``KDF_CK`` then :meth:`derive`, in one call (the per-message hot path):
        ``(aes_key, nonce, next_chain_key)``, the same values as
        :func:`chain_key_step` followed by :meth:`derive` (checked by the tests)."""
        if len(chain_key) != _HASH_LEN:
            raise InvalidKeyLength("chain key must be 32 bytes")
        padded = chain_key + _ZERO_PAD
        inner = _sha256(padded.translate(_IPAD))
        inner_2 = inner.copy()
        outer = _sha256(padded.translate(_OPAD))
        outer_2 = outer.copy()
        inner.update(b"\x01")
        outer.update(inner.digest())
        inner_2.update(b"\x02")
        outer_2.update(inner_2.digest())
        # HKDF of the message key, inlined (a call costs as much as a hash here).
        inner = self._zero_inner.copy()
        inner.update(outer.digest())
        outer = self._zero_outer.copy()
        outer.update(inner.digest())
        prk = outer.digest() + _ZERO_PAD
        inner = _sha256(prk.translate(_IPAD))
        inner_3 = inner.copy()
        outer = _sha256(prk.translate(_OPAD))
        outer_3 = outer.copy()
        inner.update(self._info1)
        outer.update(inner.digest())
        t1 = outer.digest()
        inner_3.update(t1)
        inner_3.update(self._info2)
        outer_3.update(inner_3.digest())
        return t1, outer_3.digest()[:GCM_NONCE_LEN], outer_2.digest()


# --------------------------------------------------------------------------- AES-256-GCM


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """AES-256-GCM; returns ciphertext || 16-byte tag."""
    if len(key) != AES_KEY_LEN:
        raise InvalidKeyLength("AES-256-GCM key must be 32 bytes")
    if len(nonce) != GCM_NONCE_LEN:
        raise InvalidKeyLength("AES-GCM nonce must be 12 bytes")
    return AESGCM(key).encrypt(nonce, plaintext, associated_data)


def aead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    """AES-256-GCM open; raises :class:`DecryptionFailed` on a bad tag."""
    if len(key) != AES_KEY_LEN:
        raise InvalidKeyLength("AES-256-GCM key must be 32 bytes")
    if len(nonce) != GCM_NONCE_LEN:
        raise InvalidKeyLength("AES-GCM nonce must be 12 bytes")
    if len(ciphertext) < GCM_TAG_LEN:
        raise DecryptionFailed("ciphertext shorter than the GCM tag")
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, associated_data)
    except InvalidTag as exc:
        raise DecryptionFailed("AES-GCM tag does not verify") from exc


# --------------------------------------------------------------------------- ML-KEM-768


class MLKEM768KeyPair:
    """An ML-KEM-768 decapsulation key, kept as its 64-byte seed (d || z)."""

    __slots__ = ("_private", "public")

    def __init__(self, private: MLKEM768PrivateKey) -> None:
        self._private = private
        self.public: bytes = private.public_key().public_bytes_raw()

    @classmethod
    def from_seed(cls, seed: bytes) -> MLKEM768KeyPair:
        require_bytes("ML-KEM-768 seed", seed, MLKEM768_SEED_LEN)
        return cls(MLKEM768PrivateKey.from_seed_bytes(seed))

    @classmethod
    def generate(cls, rng: RandomSource = system_random) -> MLKEM768KeyPair:
        return cls.from_seed(rng(MLKEM768_SEED_LEN))

    def seed(self) -> bytes:
        return self._private.private_bytes_raw()

    def decapsulate(self, ciphertext: bytes) -> bytes:
        """Shared secret (32 bytes).  ML-KEM has implicit rejection: a wrong
        ciphertext yields a pseudo-random secret, caught later by the AEAD."""
        require_bytes("ML-KEM-768 ciphertext", ciphertext, MLKEM768_CT_LEN)
        return self._private.decapsulate(ciphertext)

    def __repr__(self) -> str:
        return "MLKEM768KeyPair(...)"


def mlkem768_encapsulate(encapsulation_key: bytes) -> tuple[bytes, bytes]:
    """Encapsulate to a 1184-byte key; returns ``(shared_secret, ciphertext)``.

    The encapsulation randomness comes from OpenSSL and cannot be injected, so
    our composed vectors record (ciphertext, shared secret) instead.
    """
    require_bytes("ML-KEM-768 encapsulation key", encapsulation_key, MLKEM768_EK_LEN)
    try:
        public = MLKEM768PublicKey.from_public_bytes(encapsulation_key)
    except ValueError as exc:  # FIPS 203 modulus check failed
        raise InvalidKey("ML-KEM-768 encapsulation key is not well formed") from exc
    shared, ciphertext = public.encapsulate()
    return shared, ciphertext
