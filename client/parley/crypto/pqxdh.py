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
    AD = signing_key_A || dh_key_A || signing_key_B || dh_key_B   (128 bytes)

The caller must have verified the bundle's signatures (``PrekeyBundle.from_json``
does) before calling :func:`initiate`; the responder verifies the initiator's
``dh_sig`` before :func:`respond` uses anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from parley.crypto.bundle import PrekeyBundle, PublicIdentity
from parley.crypto.errors import InvalidKeyLength
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


def associated_data(initiator: PublicIdentity, responder: PublicIdentity) -> bytes:
    return initiator.encode() + responder.encode()


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
    rng: RandomSource,
    encapsulate: Encapsulate,
) -> InitiatorHandshake:
    """Run the initiator side on an already verified bundle.

    The ephemeral private key lives only in this function's frame: only its
    public half leaves (in the prekey section).
    """
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
    return InitiatorHandshake(secret, associated_data(local_identity, bundle.identity), section)


def respond(
    identity_dh: X25519KeyPair,
    local_identity: PublicIdentity,
    section: PrekeySection,
    signed_prekey: X25519KeyPair,
    one_time_prekey: X25519KeyPair | None,
    kem_prekey: MLKEM768KeyPair,
) -> tuple[bytes, bytes]:
    """Responder side; returns ``(SK, AD)``.  The caller has verified ``section.identity``."""
    ek = section.ephemeral_key
    dh1 = signed_prekey.dh(section.identity.dh_key)
    dh2 = identity_dh.dh(ek)
    dh3 = signed_prekey.dh(ek)
    dh4 = one_time_prekey.dh(ek) if one_time_prekey is not None else None
    kem_secret = kem_prekey.decapsulate(section.kem_ciphertext)
    secret = derive_secret(dh1, dh2, dh3, dh4, kem_secret)
    return secret, associated_data(section.identity, local_identity)
