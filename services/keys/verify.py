"""Format and signature checks for uploaded keys (docs/keys.md, "Wire format").

The server never imports the client's protocol code; it checks the same
fixed format with ``cryptography`` directly. Every check raises an
:class:`ApiError` naming the offending field: ``invalid_key`` for encoding,
length or key-validity problems, ``invalid_signature`` for a signature that
does not verify. Nothing is stored unless every item of a request passes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from services.common.errors import ApiError, ErrorCode
from services.keys import models

LABEL_IDENTITY_DH = b"parley-v1/identity-dh"
LABEL_SIGNED_PREKEY = b"parley-v1/signed-prekey"
LABEL_KEM_ONE_TIME = b"parley-v1/kem-prekey/one-time"
LABEL_KEM_LAST_RESORT = b"parley-v1/kem-prekey/last-resort"
LABEL_KEYS_CHECK = b"parley-v1/keys-check"

ED25519_KEY_LEN = 32
ED25519_SIG_LEN = 64
X25519_KEY_LEN = 32
MLKEM768_KEY_LEN = 1184
DIGEST_LEN = 32

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
# Any clamped X25519 scalar maps every small-order point to zero, which
# cryptography refuses; one process-wide key is enough to detect them.
_PROBE = X25519PrivateKey.generate()


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _bad_key(field: str, problem: str) -> ApiError:
    return ApiError(ErrorCode.INVALID_KEY, f"{field}: {problem}.", details={"field": field})


def b64decode(text: str, field: str, length: int) -> bytes:
    """Strict unpadded base64url of exactly ``length`` bytes, canonical encoding only."""
    if _B64URL.fullmatch(text) is None or len(text) % 4 == 1:
        raise _bad_key(field, "not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):  # pragma: no cover - the pattern rules these out
        raise _bad_key(field, "not unpadded base64url") from None
    if b64encode(data) != text:
        raise _bad_key(field, "non-canonical base64url")
    if len(data) != length:
        raise _bad_key(field, f"expected {length} bytes, got {len(data)}")
    return data


def check_x25519(raw: bytes, field: str) -> None:
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(raw))
    except ValueError:
        raise _bad_key(field, "not a usable X25519 public key (small order)") from None


def check_mlkem768(raw: bytes, field: str) -> None:
    try:
        MLKEM768PublicKey.from_public_bytes(raw)
    except ValueError:
        raise _bad_key(field, "not a valid ML-KEM-768 encapsulation key") from None


def verify_signature(signing_key: bytes, sig: bytes, message: bytes, field: str) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(signing_key).verify(sig, message)
    except (InvalidSignature, ValueError):
        raise ApiError(
            ErrorCode.INVALID_SIGNATURE,
            f"{field}: the signature does not verify with the identity signing key.",
            details={"field": field},
        ) from None


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


@dataclass(frozen=True, slots=True)
class VerifiedIdentity:
    signing_key: bytes
    dh_key: bytes
    dh_sig: bytes

    def doc(self) -> dict[str, str]:
        return {
            "signing_key": b64encode(self.signing_key),
            "dh_key": b64encode(self.dh_key),
            "dh_sig": b64encode(self.dh_sig),
        }


@dataclass(frozen=True, slots=True)
class VerifiedPrekey:
    """A checked prekey; ``sig`` is empty for unsigned one-time X25519 prekeys."""

    id: int
    key: bytes
    sig: bytes = b""

    def doc(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "key": b64encode(self.key)}
        if self.sig:
            out["sig"] = b64encode(self.sig)
        return out


def identity(body: models.Identity, field: str = "identity") -> VerifiedIdentity:
    signing_key = b64decode(body.signing_key, f"{field}.signing_key", ED25519_KEY_LEN)
    dh_key = b64decode(body.dh_key, f"{field}.dh_key", X25519_KEY_LEN)
    dh_sig = b64decode(body.dh_sig, f"{field}.dh_sig", ED25519_SIG_LEN)
    check_x25519(dh_key, f"{field}.dh_key")
    verify_signature(signing_key, dh_sig, LABEL_IDENTITY_DH + dh_key, f"{field}.dh_sig")
    return VerifiedIdentity(signing_key, dh_key, dh_sig)


def signing_key_of(identity_doc: dict[str, Any]) -> bytes:
    """The stored identity's signing key (stored values were checked on upload)."""
    return _raw(identity_doc["signing_key"])


def signed_prekey(
    body: models.SignedPrekey, signing_key: bytes, field: str = "signed_prekey"
) -> VerifiedPrekey:
    key = b64decode(body.key, f"{field}.key", X25519_KEY_LEN)
    sig = b64decode(body.sig, f"{field}.sig", ED25519_SIG_LEN)
    check_x25519(key, f"{field}.key")
    verify_signature(signing_key, sig, LABEL_SIGNED_PREKEY + u32(body.id) + key, f"{field}.sig")
    return VerifiedPrekey(body.id, key, sig)


def one_time_prekeys(
    batch: Sequence[models.OneTimePrekey], field: str = "prekeys"
) -> list[VerifiedPrekey]:
    out = []
    for i, item in enumerate(batch):
        key = b64decode(item.key, f"{field}[{i}].key", X25519_KEY_LEN)
        check_x25519(key, f"{field}[{i}].key")
        out.append(VerifiedPrekey(item.id, key))
    return out


def kem_prekey(
    body: models.KemPrekey, signing_key: bytes, *, last_resort: bool, field: str
) -> VerifiedPrekey:
    key = b64decode(body.key, f"{field}.key", MLKEM768_KEY_LEN)
    sig = b64decode(body.sig, f"{field}.sig", ED25519_SIG_LEN)
    check_mlkem768(key, f"{field}.key")
    label = LABEL_KEM_LAST_RESORT if last_resort else LABEL_KEM_ONE_TIME
    verify_signature(signing_key, sig, label + u32(body.id) + key, f"{field}.sig")
    return VerifiedPrekey(body.id, key, sig)


def kem_prekeys(
    batch: Sequence[models.KemPrekey], signing_key: bytes, field: str = "prekeys"
) -> list[VerifiedPrekey]:
    return [
        kem_prekey(item, signing_key, last_resort=False, field=f"{field}[{i}]")
        for i, item in enumerate(batch)
    ]


def duplicate_ids(prekeys: Sequence[VerifiedPrekey]) -> list[int]:
    seen: set[int] = set()
    dups: set[int] = set()
    for p in prekeys:
        (dups if p.id in seen else seen).add(p.id)
    return sorted(dups)


def keys_digest(device: dict[str, Any]) -> bytes | None:
    """SHA-256 of what the server holds for a device, or None if it lacks a part.

    ``SHA-256("parley-v1/keys-check" || signing_key || dh_key
    || u32_be(signed_prekey.id) || signed_prekey.key
    || u32_be(last_resort.id) || last_resort.key)`` over the raw bytes.
    """
    ident, spk, lr = device.get("identity"), device.get("signed_prekey"), device.get("last_resort")
    if not ident or not spk or not lr:
        return None
    h = hashlib.sha256(LABEL_KEYS_CHECK)
    for part in (
        _raw(ident["signing_key"]),
        _raw(ident["dh_key"]),
        u32(spk["id"]),
        _raw(spk["key"]),
        u32(lr["id"]),
        _raw(lr["key"]),
    ):
        h.update(part)
    return h.digest()


def _raw(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
