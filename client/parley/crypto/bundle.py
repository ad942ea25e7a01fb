"""Public key formats: identity, prekeys and the claimed prekey bundle.

This is the JSON the key-directory service stores and verifies (without
importing this package), so the format is fixed and documented in
docs/crypto.md, "Public key formats".  All binary values are base64url without
padding; all signatures are Ed25519 by the device's identity signing key over
``label || fields``:

=================  ==========================================================
identity           ``b"parley-v1/identity-dh" || dh_key``
signed prekey      ``b"parley-v1/signed-prekey" || u32_be(id) || key``
KEM one-time       ``b"parley-v1/kem-prekey/one-time" || u32_be(id) || key``
KEM last resort    ``b"parley-v1/kem-prekey/last-resort" || u32_be(id) || key``
=================  ==========================================================

``from_json`` functions verify every signature before returning anything, so
an object of these classes obtained from JSON is always verified.  Unknown
JSON members are ignored (they are not covered by any signature).

Verified signatures are remembered: the identity and signed-prekey signatures
of a contact repeat in every bundle and session state, so a bounded cache of
exact ``(signing key, signature, signed bytes)`` triples that verified saves
an Ed25519 verification each time one recurs (see
:func:`verify_remembered`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from parley.crypto.encoding import b64decode, b64encode, check_u32, u32
from parley.crypto.errors import MalformedBundle
from parley.crypto.primitives import (
    ED25519_KEY_LEN,
    ED25519_SIG_LEN,
    MLKEM768_EK_LEN,
    X25519_KEY_LEN,
    Ed25519KeyPair,
    ed25519_verify,
)

__all__ = [
    "LABEL_IDENTITY_DH",
    "LABEL_KEM_LAST_RESORT",
    "LABEL_KEM_ONE_TIME",
    "LABEL_SIGNED_PREKEY",
    "KemPrekey",
    "OneTimePrekey",
    "PrekeyBundle",
    "PublicIdentity",
    "SignedPrekey",
    "forget_verified_signatures",
    "kem_prekey_label",
    "sign_identity_dh",
    "sign_kem_prekey",
    "sign_signed_prekey",
    "verify_remembered",
]

LABEL_IDENTITY_DH = b"parley-v1/identity-dh"
LABEL_SIGNED_PREKEY = b"parley-v1/signed-prekey"
LABEL_KEM_ONE_TIME = b"parley-v1/kem-prekey/one-time"
LABEL_KEM_LAST_RESORT = b"parley-v1/kem-prekey/last-resort"


VERIFIED_CACHE_SIZE = 8192
"""How many verified ``(signing key, signature, signed bytes)`` triples are remembered:
a private room's key distribution checks each member device's bundle (its identity,
signed prekey and ML-KEM prekey signatures) when it is claimed and again when its
session starts, and each member's device list when it is read and again with the
claim: four remembered signatures a member, up to a thousand members apart (512
forgot them in between: every one verified twice; at most ~12 MB, public data)."""
_verified: OrderedDict[tuple[bytes, bytes, bytes], None] = OrderedDict()
_verified_lock = threading.Lock()


def verify_remembered(signing_key: bytes, signature: bytes, message: bytes) -> None:
    """:func:`~parley.crypto.primitives.ed25519_verify` with a memory of successes.

    A triple that verified before (byte for byte: same key, same signature,
    same signed bytes) is accepted without verifying it again; anything else is
    verified.  This is sound because Ed25519 verification is a deterministic
    function of exactly these bytes, and only successes are remembered, so
    nothing that did not verify is ever accepted.  Only exact ``bytes`` are
    looked up (a ``bytes`` subclass could lie about equality).  The memory is
    per process, bounded (:data:`VERIFIED_CACHE_SIZE`, least recently used
    evicted) and holds only public data.
    """
    entry = (signing_key, signature, message)
    exact = type(signing_key) is bytes and type(signature) is bytes and type(message) is bytes
    if exact:
        with _verified_lock:
            if entry in _verified:
                _verified.move_to_end(entry)
                return
    ed25519_verify(signing_key, signature, message)
    if exact:
        with _verified_lock:
            _verified[entry] = None
            while len(_verified) > VERIFIED_CACHE_SIZE:
                _verified.popitem(last=False)


def forget_verified_signatures() -> None:
    """Empty the memory of :func:`verify_remembered` (tests, benchmarks)."""
    with _verified_lock:
        _verified.clear()


def kem_prekey_label(last_resort: bool) -> bytes:
    return LABEL_KEM_LAST_RESORT if last_resort else LABEL_KEM_ONE_TIME


def sign_identity_dh(signing: Ed25519KeyPair, dh_key: bytes) -> bytes:
    return signing.sign(LABEL_IDENTITY_DH + dh_key)


def sign_signed_prekey(signing: Ed25519KeyPair, prekey_id: int, key: bytes) -> bytes:
    return signing.sign(LABEL_SIGNED_PREKEY + u32(prekey_id) + key)


def sign_kem_prekey(
    signing: Ed25519KeyPair, prekey_id: int, key: bytes, last_resort: bool
) -> bytes:
    return signing.sign(kem_prekey_label(last_resort) + u32(prekey_id) + key)


def _object(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MalformedBundle(f"{field}: expected a JSON object")
    return value


def _member(obj: Mapping[str, Any], name: str, field: str) -> Any:
    if name not in obj:
        raise MalformedBundle(f"{field}.{name}: missing")
    return obj[name]


@dataclass(frozen=True, slots=True)
class PublicIdentity:
    """A device's public identity: Ed25519 signing key + X25519 DH key signed by it."""

    signing_key: bytes
    dh_key: bytes
    dh_sig: bytes

    def verify(self) -> None:
        """Raise InvalidSignature unless ``dh_sig`` signs ``dh_key`` (lengths checked too)."""
        if len(self.dh_key) != X25519_KEY_LEN:
            raise MalformedBundle("identity.dh_key: expected 32 bytes")
        verify_remembered(self.signing_key, self.dh_sig, LABEL_IDENTITY_DH + self.dh_key)

    def encode(self) -> bytes:
        """``signing_key || dh_key`` (64 bytes): the identity's part of the AD."""
        return self.signing_key + self.dh_key

    def to_json(self) -> dict[str, str]:
        return {
            "signing_key": b64encode(self.signing_key),
            "dh_key": b64encode(self.dh_key),
            "dh_sig": b64encode(self.dh_sig),
        }

    @classmethod
    def from_json(cls, value: Any, *, field: str = "identity") -> PublicIdentity:
        obj = _object(value, field)
        identity = cls(
            signing_key=b64decode(
                _member(obj, "signing_key", field),
                field=f"{field}.signing_key",
                length=ED25519_KEY_LEN,
            ),
            dh_key=b64decode(
                _member(obj, "dh_key", field), field=f"{field}.dh_key", length=X25519_KEY_LEN
            ),
            dh_sig=b64decode(
                _member(obj, "dh_sig", field), field=f"{field}.dh_sig", length=ED25519_SIG_LEN
            ),
        )
        identity.verify()
        return identity


@dataclass(frozen=True, slots=True)
class SignedPrekey:
    id: int
    key: bytes
    sig: bytes

    def verify(self, signing_key: bytes) -> None:
        check_u32(self.id, field="signed_prekey.id")
        if len(self.key) != X25519_KEY_LEN:
            raise MalformedBundle("signed_prekey.key: expected 32 bytes")
        verify_remembered(signing_key, self.sig, LABEL_SIGNED_PREKEY + u32(self.id) + self.key)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "key": b64encode(self.key), "sig": b64encode(self.sig)}

    @classmethod
    def from_json(
        cls, value: Any, signing_key: bytes, *, field: str = "signed_prekey"
    ) -> SignedPrekey:
        obj = _object(value, field)
        prekey = cls(
            id=check_u32(_member(obj, "id", field), field=f"{field}.id"),
            key=b64decode(_member(obj, "key", field), field=f"{field}.key", length=X25519_KEY_LEN),
            sig=b64decode(_member(obj, "sig", field), field=f"{field}.sig", length=ED25519_SIG_LEN),
        )
        prekey.verify(signing_key)
        return prekey


@dataclass(frozen=True, slots=True)
class OneTimePrekey:
    """An unsigned one-time X25519 prekey (as in Signal)."""

    id: int
    key: bytes

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "key": b64encode(self.key)}

    @classmethod
    def from_json(cls, value: Any, *, field: str = "one_time_prekey") -> OneTimePrekey:
        obj = _object(value, field)
        return cls(
            id=check_u32(_member(obj, "id", field), field=f"{field}.id"),
            key=b64decode(_member(obj, "key", field), field=f"{field}.key", length=X25519_KEY_LEN),
        )


@dataclass(frozen=True, slots=True)
class KemPrekey:
    """A signed ML-KEM-768 prekey; ``last_resort`` selects the signature label."""

    id: int
    key: bytes
    sig: bytes
    last_resort: bool

    def verify(self, signing_key: bytes) -> None:
        check_u32(self.id, field="kem_prekey.id")
        if len(self.key) != MLKEM768_EK_LEN:
            raise MalformedBundle("kem_prekey.key: expected 1184 bytes")
        message = kem_prekey_label(self.last_resort) + u32(self.id) + self.key
        # A one-time prekey's signature recurs once: checked when it is claimed and
        # again when its session starts.
        verify_remembered(signing_key, self.sig, message)

    def to_json(self, *, with_flag: bool = True) -> dict[str, Any]:
        """Upload form (``with_flag=False``) or claimed-bundle form (with ``last_resort``)."""
        out: dict[str, Any] = {
            "id": self.id,
            "key": b64encode(self.key),
            "sig": b64encode(self.sig),
        }
        if with_flag:
            out["last_resort"] = self.last_resort
        return out

    @classmethod
    def from_json(
        cls,
        value: Any,
        signing_key: bytes,
        *,
        last_resort: bool | None = None,
        field: str = "kem_prekey",
    ) -> KemPrekey:
        """Parse and verify.  ``last_resort`` comes from the JSON unless given."""
        obj = _object(value, field)
        if last_resort is None:
            flag = _member(obj, "last_resort", field)
            if not isinstance(flag, bool):
                raise MalformedBundle(f"{field}.last_resort: expected true or false")
            last_resort = flag
        prekey = cls(
            id=check_u32(_member(obj, "id", field), field=f"{field}.id"),
            key=b64decode(_member(obj, "key", field), field=f"{field}.key", length=MLKEM768_EK_LEN),
            sig=b64decode(_member(obj, "sig", field), field=f"{field}.sig", length=ED25519_SIG_LEN),
            last_resort=last_resort,
        )
        prekey.verify(signing_key)
        return prekey


@dataclass(frozen=True, slots=True)
class PrekeyBundle:
    """What the key directory hands an initiator for one device of a contact."""

    user_id: str
    device_id: int
    identity: PublicIdentity
    signed_prekey: SignedPrekey
    one_time_prekey: OneTimePrekey | None
    kem_prekey: KemPrekey

    def verify(self) -> None:
        """Verify every signature (identity, signed prekey, KEM prekey)."""
        if not isinstance(self.user_id, str) or not self.user_id:
            raise MalformedBundle("user_id: expected a non-empty string")
        check_u32(self.device_id, field="device_id")
        self.identity.verify()
        self.signed_prekey.verify(self.identity.signing_key)
        self.kem_prekey.verify(self.identity.signing_key)
        if self.one_time_prekey is not None:
            check_u32(self.one_time_prekey.id, field="one_time_prekey.id")
            if len(self.one_time_prekey.key) != X25519_KEY_LEN:
                raise MalformedBundle("one_time_prekey.key: expected 32 bytes")

    def to_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "device_id": self.device_id,
            "identity": self.identity.to_json(),
            "signed_prekey": self.signed_prekey.to_json(),
            "one_time_prekey": (
                None if self.one_time_prekey is None else self.one_time_prekey.to_json()
            ),
            "kem_prekey": self.kem_prekey.to_json(with_flag=True),
        }

    @classmethod
    def from_json(cls, value: Any) -> PrekeyBundle:
        """Parse a claimed bundle and verify all its signatures.

        Raises MalformedBundle for shape/encoding errors and InvalidSignature
        for any bad signature; nothing from the bundle is used before then.
        """
        obj = _object(value, "bundle")
        user_id = _member(obj, "user_id", "bundle")
        if not isinstance(user_id, str) or not user_id:
            raise MalformedBundle("user_id: expected a non-empty string")
        device_id = check_u32(_member(obj, "device_id", "bundle"), field="device_id")
        identity = PublicIdentity.from_json(_member(obj, "identity", "bundle"))
        signed = SignedPrekey.from_json(
            _member(obj, "signed_prekey", "bundle"), identity.signing_key
        )
        otp_json = obj.get("one_time_prekey")
        one_time = None if otp_json is None else OneTimePrekey.from_json(otp_json)
        kem = KemPrekey.from_json(_member(obj, "kem_prekey", "bundle"), identity.signing_key)
        return cls(user_id, device_id, identity, signed, one_time, kem)
