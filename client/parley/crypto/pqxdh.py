"""PQXDH key agreement (Signal's PQXDH specification, X25519 + ML-KEM-768).

Identity DH keys are the X25519 identity keys signed by the Ed25519 identity
signing keys (the Olm layout; no XEdDSA).  With A the initiator and B the
responder::

    DH1 = DH(IK_A, SPK_B)    DH2 = DH(EK_A, IK_B)    DH3 = DH(EK_A, SPK_B)
    DH4 = DH(EK_A, OPK_B)    (only when a one-time prekey was handed out)
    (CT, SS) = ML-KEM-768.Encaps(PQPK_B)
    SK = HKDF-SHA256(salt = 32 zero bytes,
                     ikm  = 32 x 0xFF || DH1 || DH2 || DH3 [|| DH4] || SS,
                     info = "Parley_PQXDH_CURVE25519_SHA-256_ML-KEM-768", L = 32)
    AD = signing_key_A || dh_key_A || signing_key_B || dh_key_B
         || ids(user_A, device_A) || ids(user_B, device_B)
    ids(user, device) = u16be(len(utf8(user))) || utf8(user) || u32be(device)

The ids bind each device to the account it speaks for (:class:`Binding`): without
them an account could list another user's device keys (public, self-signed) as a
device of its own, and a server lying about device lists could relabel what one user
sends as another's (unknown key-share; docs/crypto.md).  Sessions begun before the
ids were bound keep the 128-byte AD they were made with (it is stored with them).

The caller must have verified the bundle's signatures (``PrekeyBundle.from_json``
does) before calling :func:`initiate`; the responder verifies the initiator's
``dh_sig`` before :func:`respond` uses anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from parley.crypto.bundle import PrekeyBundle, PublicIdentity
from parley.crypto.encoding import check_u32, u32
from parley.crypto.errors import InvalidKeyLength, MalformedBundle
from parley.crypto.primitives import (
    MLKEM768_CT_LEN,
    MLKEM768_SS_LEN,
    MLKEM768KeyPair,
    RandomSource,
    X25519KeyPair,
    hkdf_sha256,
)
from parley.crypto.wire import PrekeySection

__all__ = [
    "INFO",
    "Binding",
    "Encapsulate",
    "InitiatorHandshake",
    "associated_data",
    "derive_secret",
    "initiate",
    "respond",
]

INFO = b"Parley_PQXDH_CURVE25519_SHA-256_ML-KEM-768"
_F = b"\xff" * 32
_SALT = bytes(32)

Encapsulate = Callable[[bytes], tuple[bytes, bytes]]
"""``encapsulate(encapsulation_key) -> (shared_secret, ciphertext)``."""


_MAX_USER = 0xFFFF


def _ids(user: str, device: int, side: str) -> bytes:
    if not isinstance(user, str) or not user:
        raise MalformedBundle(f"{side}_user: expected a non-empty string")
    try:
        raw = user.encode()
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 for it
        raise MalformedBundle(f"{side}_user: not valid Unicode") from None
    if len(raw) > _MAX_USER:
        raise MalformedBundle(f"{side}_user: longer than {_MAX_USER} bytes")
    return len(raw).to_bytes(2, "big") + raw + u32(check_u32(device, field=f"{side}_device"))


@dataclass(frozen=True, slots=True)
class Binding:
    """Who a handshake is between: the account (user) and device ids of both sides.

    The initiator gives its own ids and the ones it asked the key directory for;
    the responder, the sender ids on the envelope (stamped by the server from the
    sender's token) and its own.  When the two do not agree, the first message does
    not decrypt."""

    initiator_user: str
    initiator_device: int
    responder_user: str
    responder_device: int

    def encode(self) -> bytes:
        """``ids(initiator) || ids(responder)``; MalformedBundle for an empty user, one
        over 65,535 UTF-8 bytes, or a device id that is not a u32."""
        return _ids(self.initiator_user, self.initiator_device, "initiator") + _ids(
            self.responder_user, self.responder_device, "responder"
        )


def associated_data(
    initiator: PublicIdentity, responder: PublicIdentity, binding: Binding
) -> bytes:
    return initiator.encode() + responder.encode() + binding.encode()


def derive_secret(
    dh1: bytes, dh2: bytes, dh3: bytes, dh4: bytes | None, kem_secret: bytes
) -> bytes:
    ikm = _F + dh1 + dh2 + dh3 + (dh4 if dh4 is not None else b"") + kem_secret
    return hkdf_sha256(ikm, salt=_SALT, info=INFO, length=32)


@dataclass(frozen=True, slots=True)
class InitiatorHandshake:
    secret: bytes
    associated_data: bytes
    section: PrekeySection


def initiate(
    identity_dh: X25519KeyPair,
    local_identity: PublicIdentity,
    bundle: PrekeyBundle,
    *,
    binding: Binding,
    rng: RandomSource,
    encapsulate: Encapsulate,
) -> InitiatorHandshake:
    """Run the initiator side on an already verified bundle (``binding``: see
    :class:`Binding`; checked before any key is used).

    The ephemeral private key lives only in this function's frame: only its
    public half leaves (in the prekey section).
    """
    ad = associated_data(local_identity, bundle.identity, binding)
    ephemeral = X25519KeyPair.generate(rng)
    spk = bundle.signed_prekey
    otp = bundle.one_time_prekey
    dh1 = identity_dh.dh(spk.key)
    dh2 = ephemeral.dh(bundle.identity.dh_key)
    dh3 = ephemeral.dh(spk.key)
    dh4 = ephemeral.dh(otp.key) if otp is not None else None
    ephemeral_public = ephemeral.public
    del ephemeral  # erase our only reference to EK_A's private key
    kem_secret, kem_ciphertext = encapsulate(bundle.kem_prekey.key)
    if len(kem_secret) != MLKEM768_SS_LEN or len(kem_ciphertext) != MLKEM768_CT_LEN:
        raise InvalidKeyLength("ML-KEM-768 encapsulation returned wrong lengths")
    secret = derive_secret(dh1, dh2, dh3, dh4, kem_secret)
    section = PrekeySection(
        identity=local_identity,
        ephemeral_key=ephemeral_public,
        signed_prekey_id=spk.id,
        one_time_prekey_id=None if otp is None else otp.id,
        kem_prekey_id=bundle.kem_prekey.id,
        kem_ciphertext=kem_ciphertext,
    )
    return InitiatorHandshake(secret, ad, section)


def respond(
    identity_dh: X25519KeyPair,
    local_identity: PublicIdentity,
    section: PrekeySection,
    signed_prekey: X25519KeyPair,
    one_time_prekey: X25519KeyPair | None,
    kem_prekey: MLKEM768KeyPair,
    *,
    binding: Binding,
) -> tuple[bytes, bytes]:
    """Responder side; returns ``(SK, AD)``.  The caller has verified ``section.identity``."""
    ad = associated_data(section.identity, local_identity, binding)
    ek = section.ephemeral_key
    dh1 = signed_prekey.dh(section.identity.dh_key)
    dh2 = identity_dh.dh(ek)
    dh3 = signed_prekey.dh(ek)
    dh4 = one_time_prekey.dh(ek) if one_time_prekey is not None else None
    kem_secret = kem_prekey.decapsulate(section.kem_ciphertext)
    secret = derive_secret(dh1, dh2, dh3, dh4, kem_secret)
    return secret, ad
