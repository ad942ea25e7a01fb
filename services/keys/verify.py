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
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from parley_contract.keys import ed25519_small_order

from services.common.errors import ApiError, ErrorCode
from services.keys import models

LABEL_IDENTITY_DH = b"parley-v1/identity-dh"
LABEL_SIGNED_PREKEY = b"parley-v1/signed-prekey"
LABEL_KEM_ONE_TIME = b"parley-v1/kem-prekey/one-time"
LABEL_KEM_LAST_RESORT = b"parley-v1/kem-prekey/last-resort"
LABEL_KEYS_CHECK = b"parley-v1/keys-check"
LABEL_DEVICE_LIST = b"parley-v1/device-list"

ED25519_KEY_LEN = 32
ED25519_SIG_LEN = 64
X25519_KEY_LEN = 32
MLKEM768_KEY_LEN = 1184
DIGEST_LEN = 32
LINK_ID_LEN = 8
# A sealed link blob: F_pub (32) || nonce (12) || ciphertext with its 16-byte tag.
SEALED_MIN_LEN = 60
SEALED_MAX_LEN = 8192

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


def verify_signature(
    signing_key: bytes, sig: bytes, message: bytes, field: str, by: str = "the identity signing key"
) -> None:
    try:
        if ed25519_small_order(signing_key):
            # Any signature "verifies" under such a key: nobody holds its private half.
            raise InvalidSignature
        Ed25519PublicKey.from_public_bytes(signing_key).verify(sig, message)
    except (InvalidSignature, ValueError):
        raise ApiError(
            ErrorCode.INVALID_SIGNATURE,
            f"{field}: the signature does not verify with {by}.",
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


# Device lists (docs/devices.md; the bytes of docs/crypto.md, "Device lists and linking").


def _invalid(field: str, problem: str) -> ApiError:
    return ApiError(
        ErrorCode.VALIDATION_FAILED,
        f"{field}: {problem}.",
        details=[{"field": field, "problem": problem}],
    )


def check_text(value: str, field: str) -> str:
    """A device name or user id of a device list: no control character, no surrogate
    (pydantic checked the type and the length in code points)."""
    for ch in value:
        o = ord(ch)
        if o < 0x20 or 0x7F <= o <= 0x9F or 0xD800 <= o <= 0xDFFF:
            raise _invalid(field, "control characters are not allowed")
    return value


def canonical_json(value: Any) -> bytes:
    """UTF-8 JSON, keys sorted, no whitespace: what the account key signs (after the label)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


@dataclass(frozen=True, slots=True)
class VerifiedDeviceList:
    """A device list whose structure was checked (not yet its signature)."""

    user_id: str
    version: int
    # device id -> (name, signing key b64, DH key b64), in ascending id order
    devices: dict[int, tuple[str, str, str]]
    canonical: bytes

    @property
    def signed_bytes(self) -> bytes:
        return LABEL_DEVICE_LIST + self.canonical

    @property
    def device_ids(self) -> list[int]:
        return list(self.devices)

    def text(self) -> str:
        return self.canonical.decode("utf-8")


def device_list(body: models.DeviceList, field: str = "device_list") -> VerifiedDeviceList:
    """Check a device list's structure and compute its canonical bytes.

    ``invalid_key`` for a badly encoded key, ``validation_failed`` for names with
    control characters and devices out of order or repeated.
    """
    check_text(body.user_id, f"{field}.user_id")
    devices: dict[int, tuple[str, str, str]] = {}
    entries = []
    previous = 0
    for i, entry in enumerate(body.devices):
        where = f"{field}.devices[{i}]"
        if entry.device_id <= previous:
            raise _invalid(where, "devices must be in ascending device_id order, each once")
        previous = entry.device_id
        check_text(entry.name, f"{where}.name")
        b64decode(entry.signing_key, f"{where}.signing_key", ED25519_KEY_LEN)
        b64decode(entry.dh_key, f"{where}.dh_key", X25519_KEY_LEN)
        devices[entry.device_id] = (entry.name, entry.signing_key, entry.dh_key)
        entries.append(
            {
                "device_id": entry.device_id,
                "name": entry.name,
                "signing_key": entry.signing_key,
                "dh_key": entry.dh_key,
            }
        )
    canonical = canonical_json(
        {"user_id": body.user_id, "version": body.version, "devices": entries}
    )
    return VerifiedDeviceList(body.user_id, body.version, devices, canonical)


def account_key(text: str, field: str = "account_key") -> bytes:
    return b64decode(text, field, ED25519_KEY_LEN)


def list_signature(
    listed: VerifiedDeviceList, account_public: bytes, signature: str, field: str = "signature"
) -> None:
    """``invalid_key`` for a badly encoded signature, ``invalid_signature`` if the
    account key did not sign this list."""
    sig = b64decode(signature, field, ED25519_SIG_LEN)
    verify_signature(account_public, sig, listed.signed_bytes, field, by="the account key")


def link_id(text: str, field: str = "link_id") -> str:
    """A link id (8 bytes, base64url): ``validation_failed`` otherwise (an identifier,
    not a key). Returns the canonical text."""
    try:
        b64decode(text, field, LINK_ID_LEN)
    except ApiError:
        raise _invalid(field, "not a link id (8 bytes, base64url without padding)") from None
    return text


def link_e_pub(text: str, field: str = "e_pub") -> str:
    """The X25519 key of a link code (32 bytes, base64url, not of small order), as the
    new device posts it with its link: ``validation_failed`` otherwise (the server
    only keeps it for the approver's typo check). Returns the canonical text."""
    try:
        raw = b64decode(text, field, X25519_KEY_LEN)
    except ApiError:
        problem = "not an X25519 public key (32 bytes, base64url without padding)"
        raise _invalid(field, problem) from None
    try:
        check_x25519(raw, field)
    except ApiError:
        raise _invalid(field, "not a usable X25519 public key (small order)") from None
    return text


def sealed(text: str, field: str = "sealed") -> bytes:
    """A sealed link blob: opaque to the server, but well encoded and of a sane size."""
    if _B64URL.fullmatch(text) is None or len(text) % 4 == 1:
        raise _bad_key(field, "not unpadded base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64encode(data) != text:
        raise _bad_key(field, "non-canonical base64url")
    if not SEALED_MIN_LEN <= len(data) <= SEALED_MAX_LEN:
        raise _bad_key(field, f"expected {SEALED_MIN_LEN} to {SEALED_MAX_LEN} bytes")
    return data
