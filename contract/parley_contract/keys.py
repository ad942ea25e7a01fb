"""Key validity rules both sides apply: the clients (``parley.crypto``) when they
verify, the key directory when it takes a key (services/keys/verify.py)."""

from __future__ import annotations

__all__ = ["ed25519_small_order"]

# The encodings of the 8 points of small order (orders 1, 2, 4 and 8), sign bit
# cleared: y = 0, 1, p - 1, the two y of the order-8 points, and the non-canonical
# y = p and p + 1 (libsodium's ``has_small_order`` blocklist).  With such a public
# key [h]A takes at most 8 values, so a signature can be made without any private
# key (R = identity, S = 0 verifies every message under the identity point in
# OpenSSL's check); :func:`ed25519_verify` refuses them, sign bit set or not.
_ED25519_SMALL_ORDER = frozenset(
    bytes.fromhex(h)
    for h in (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    )
)


def ed25519_small_order(public_key: bytes) -> bool:
    """Whether a 32-byte Ed25519 public key encodes a point of small order."""
    return public_key[:31] + bytes((public_key[31] & 0x7F,)) in _ED25519_SMALL_ORDER
