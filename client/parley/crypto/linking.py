"""Linking a new device: the link code and the sealed provisioning blob (docs/devices.md).

The new device makes an ephemeral X25519 key pair ``E`` and an 8-byte
``link_id`` and shows the **link code**, ``base64url(link_id ‖ E_pub)``
(54 characters). An existing device that read the code seals the account
identity key (and whatever else the client sends: the payload is opaque here)
for the new device::

    F        = a fresh X25519 key pair
    K        = HKDF-SHA256(ikm = X25519(F, E_pub), salt = link_id,
                           info = "parley-v1/link", L = 32)
    AD       = link_id ‖ E_pub ‖ F_pub ‖ the new device's identity signing key
    sealed   = F_pub (32) ‖ nonce (12) ‖ AES-256-GCM(K, nonce, payload, AD)

Only the holder of ``E`` can open it; only someone who saw the code knew
``E_pub``; and the new device's signing key in the AD means the blob was made
for the device the approver looked at (the server cannot substitute its own
pending device). ``F`` is used once, so ``K`` is too.
"""

from __future__ import annotations

from parley.crypto.encoding import b64decode, b64encode
from parley.crypto.errors import (
    InvalidKey,
    MalformedBundle,
    MalformedLinkCode,
    MalformedMessage,
)
from parley.crypto.primitives import (
    AES_KEY_LEN,
    ED25519_KEY_LEN,
    GCM_NONCE_LEN,
    GCM_TAG_LEN,
    X25519_KEY_LEN,
    RandomSource,
    X25519KeyPair,
    aead_decrypt,
    aead_encrypt,
    hkdf_sha256,
    require_bytes,
    system_random,
)

__all__ = [
    "LINK_CODE_LEN",
    "LINK_ID_LEN",
    "LINK_INFO",
    "SEALED_MIN_LEN",
    "LinkRequest",
    "link_associated_data",
    "link_code",
    "link_key",
    "open_on_new_device",
    "parse_link_code",
    "seal_for_new_device",
]

LINK_ID_LEN = 8
LINK_CODE_LEN = 54
"""Characters of a link code: 40 bytes in unpadded base64url."""
LINK_INFO = b"parley-v1/link"
SEALED_MIN_LEN = X25519_KEY_LEN + GCM_NONCE_LEN + GCM_TAG_LEN
"""The shortest sealed blob (an empty payload): 60 bytes."""


def link_code(link_id: bytes, e_pub: bytes) -> str:
    """``base64url(link_id ‖ E_pub)`` without padding: 54 characters."""
    require_bytes("link_id", link_id, LINK_ID_LEN)
    require_bytes("E_pub", e_pub, X25519_KEY_LEN)
    return b64encode(link_id + e_pub)


def parse_link_code(code: str) -> tuple[bytes, bytes]:
    """``(link_id, E_pub)`` from a link code; :class:`MalformedLinkCode` unless it is
    exactly 54 characters of canonical unpadded base64url (no spaces, no padding)."""
    if not isinstance(code, str):
        raise TypeError(f"a link code is a str, not {type(code).__name__}")
    if len(code) != LINK_CODE_LEN:
        raise MalformedLinkCode(f"a link code has {LINK_CODE_LEN} characters, not {len(code)}")
    try:
        raw = b64decode(code, field="link code", length=LINK_ID_LEN + X25519_KEY_LEN)
    except MalformedBundle as exc:
        raise MalformedLinkCode(str(exc)) from exc
    return raw[:LINK_ID_LEN], raw[LINK_ID_LEN:]


def link_key(shared_secret: bytes, link_id: bytes) -> bytes:
    """``K = HKDF-SHA256(ikm = shared_secret, salt = link_id, info = "parley-v1/link", 32)``."""
    return hkdf_sha256(shared_secret, salt=link_id, info=LINK_INFO, length=AES_KEY_LEN)


def link_associated_data(
    link_id: bytes, e_pub: bytes, f_pub: bytes, new_device_signing_key: bytes
) -> bytes:
    """``link_id ‖ E_pub ‖ F_pub ‖ signing key``: 104 bytes."""
    return (
        require_bytes("link_id", link_id, LINK_ID_LEN)
        + require_bytes("E_pub", e_pub, X25519_KEY_LEN)
        + require_bytes("F_pub", f_pub, X25519_KEY_LEN)
        + require_bytes("new device signing key", new_device_signing_key, ED25519_KEY_LEN)
    )


def seal_for_new_device(
    e_pub: bytes,
    link_id: bytes,
    new_device_signing_key: bytes,
    payload: bytes,
    rng: RandomSource = system_random,
) -> bytes:
    """``F_pub ‖ nonce ‖ ciphertext`` of ``payload`` for the holder of ``E`` (approver side).

    Draws from ``rng``: F's private key (32), then the nonce (12). A low-order
    ``e_pub`` raises :class:`~parley.crypto.errors.InvalidKey`.
    """
    # Every input checked before anything is drawn.
    require_bytes("link_id", link_id, LINK_ID_LEN)
    require_bytes("E_pub", e_pub, X25519_KEY_LEN)
    require_bytes("new device signing key", new_device_signing_key, ED25519_KEY_LEN)
    require_bytes("payload", payload)
    f = X25519KeyPair.generate(rng)
    key = link_key(f.dh(e_pub), link_id)
    nonce = rng(GCM_NONCE_LEN)
    ad = link_associated_data(link_id, e_pub, f.public, new_device_signing_key)
    return f.public + nonce + aead_encrypt(key, nonce, payload, ad)


def open_on_new_device(
    e_priv: bytes, link_id: bytes, own_signing_key: bytes, sealed: bytes
) -> bytes:
    """The payload sealed by :func:`seal_for_new_device` (new device side).

    Raises :class:`~parley.crypto.errors.MalformedMessage` for a blob too short
    to hold ``F_pub``, a nonce and a tag or whose ``F_pub`` is unusable, and
    :class:`~parley.crypto.errors.DecryptionFailed` if it was not sealed to
    this ``E``, this ``link_id`` and this signing key, or was changed.
    """
    e = X25519KeyPair.from_private_bytes(require_bytes("E private key", e_priv, X25519_KEY_LEN))
    require_bytes("sealed", sealed)
    if len(sealed) < SEALED_MIN_LEN:
        raise MalformedMessage(f"a sealed link blob has at least {SEALED_MIN_LEN} bytes")
    f_pub = sealed[:X25519_KEY_LEN]
    nonce = sealed[X25519_KEY_LEN : X25519_KEY_LEN + GCM_NONCE_LEN]
    ad = link_associated_data(link_id, e.public, f_pub, own_signing_key)
    try:
        shared = e.dh(f_pub)
    except InvalidKey as exc:
        raise MalformedMessage("the sealed blob's F_pub is a low-order point") from exc
    key = link_key(shared, link_id)
    return aead_decrypt(key, nonce, sealed[X25519_KEY_LEN + GCM_NONCE_LEN :], ad)


class LinkRequest:
    """The new device's side of a link: ``link_id`` and the ephemeral key pair ``E``.

    Show :attr:`code`, post :attr:`link_id` to the directory, then :meth:`open`
    the approval. Forget the object afterwards (``E`` must not outlive the link).
    """

    __slots__ = ("_e", "link_id")

    def __init__(self, link_id: bytes, e: X25519KeyPair) -> None:
        self.link_id: bytes = require_bytes("link_id", link_id, LINK_ID_LEN)
        self._e = e

    @classmethod
    def generate(cls, rng: RandomSource = system_random) -> LinkRequest:
        """Draws the link id (8) then E's private key (32) from ``rng``."""
        link_id = rng(LINK_ID_LEN)
        return cls(link_id, X25519KeyPair.generate(rng))

    @classmethod
    def from_private(cls, link_id: bytes, e_priv: bytes) -> LinkRequest:
        return cls(link_id, X25519KeyPair.from_private_bytes(e_priv))

    def private_bytes(self) -> bytes:
        """E's private key (secret; only to keep a pending link across restarts)."""
        return self._e.private_bytes()

    @property
    def e_public(self) -> bytes:
        return self._e.public

    @property
    def code(self) -> str:
        return link_code(self.link_id, self._e.public)

    def open(self, own_signing_key: bytes, sealed: bytes) -> bytes:
        """:func:`open_on_new_device` with this request's ``E`` and ``link_id``."""
        return open_on_new_device(self._e.private_bytes(), self.link_id, own_signing_key, sealed)

    def __repr__(self) -> str:  # never print E's private key
        return f"LinkRequest(link_id={self.link_id.hex()}, e_public={self._e.public.hex()})"
