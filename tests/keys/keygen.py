"""Real device keys for the key directory's tests, built with ``cryptography`` directly.

The format is the fixed wire format of docs/keys.md; the client protocol
library is deliberately not imported (servers and their tests never do).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

LABEL_IDENTITY_DH = b"parley-v1/identity-dh"
LABEL_SIGNED_PREKEY = b"parley-v1/signed-prekey"
LABEL_KEM_ONE_TIME = b"parley-v1/kem-prekey/one-time"
LABEL_KEM_LAST_RESORT = b"parley-v1/kem-prekey/last-resort"
LABEL_KEYS_CHECK = b"parley-v1/keys-check"
LABEL_DEVICE_LIST = b"parley-v1/device-list"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def x25519_pub() -> bytes:
    return X25519PrivateKey.generate().public_key().public_bytes_raw()


def mlkem_pub() -> bytes:
    return MLKEM768PrivateKey.generate().public_key().public_bytes_raw()


@dataclass
class DeviceKeys:
    """One device's identity and a counter for fresh prekey ids."""

    signing: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    dh: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    next_id: int = 1

    @property
    def signing_pub(self) -> bytes:
        return self.signing.public_key().public_bytes_raw()

    @property
    def dh_pub(self) -> bytes:
        return self.dh.public_key().public_bytes_raw()

    def sign(self, message: bytes) -> bytes:
        return self.signing.sign(message)

    def identity(self) -> dict[str, str]:
        return {
            "signing_key": b64(self.signing_pub),
            "dh_key": b64(self.dh_pub),
            "dh_sig": b64(self.sign(LABEL_IDENTITY_DH + self.dh_pub)),
        }

    def _ids(self, n: int, start: int | None) -> list[int]:
        if start is None:
            start = self.next_id
        self.next_id = max(self.next_id, start + n)
        return list(range(start, start + n))

    def signed_prekey(self, prekey_id: int = 1) -> dict[str, Any]:
        key = x25519_pub()
        sig = self.sign(LABEL_SIGNED_PREKEY + u32(prekey_id) + key)
        return {"id": prekey_id, "key": b64(key), "sig": b64(sig)}

    def one_time(self, n: int, start: int | None = None) -> list[dict[str, Any]]:
        return [{"id": i, "key": b64(x25519_pub())} for i in self._ids(n, start)]

    def kem(
        self, n: int, start: int | None = None, *, last_resort: bool = False
    ) -> list[dict[str, Any]]:
        label = LABEL_KEM_LAST_RESORT if last_resort else LABEL_KEM_ONE_TIME
        out = []
        for i in self._ids(n, start):
            key = mlkem_pub()
            out.append({"id": i, "key": b64(key), "sig": b64(self.sign(label + u32(i) + key))})
        return out

    def last_resort(self, prekey_id: int = 0) -> dict[str, Any]:
        return self.kem(1, prekey_id, last_resort=True)[0]


def keys_digest(identity: dict[str, str], spk: dict[str, Any], lr: dict[str, Any]) -> str:
    """The client's side of the keys check (docs/keys.md)."""
    h = hashlib.sha256(LABEL_KEYS_CHECK)
    h.update(unb64(identity["signing_key"]) + unb64(identity["dh_key"]))
    h.update(u32(spk["id"]) + unb64(spk["key"]))
    h.update(u32(lr["id"]) + unb64(lr["key"]))
    return b64(h.digest())


def verify_bundle(bundle: dict[str, Any]) -> None:
    """Check every signature of a claimed bundle, as a client would."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    ident = bundle["identity"]
    pub = Ed25519PublicKey.from_public_bytes(unb64(ident["signing_key"]))
    pub.verify(unb64(ident["dh_sig"]), LABEL_IDENTITY_DH + unb64(ident["dh_key"]))
    spk = bundle["signed_prekey"]
    pub.verify(unb64(spk["sig"]), LABEL_SIGNED_PREKEY + u32(spk["id"]) + unb64(spk["key"]))
    kem = bundle["kem_prekey"]
    label = LABEL_KEM_LAST_RESORT if kem["last_resort"] else LABEL_KEM_ONE_TIME
    pub.verify(unb64(kem["sig"]), label + u32(kem["id"]) + unb64(kem["key"]))


def canonical(value: Any) -> bytes:
    """The canonical JSON a device list is signed as (docs/crypto.md), spelled out again."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry(device_id: int, dev: DeviceKeys, name: str | None = None) -> dict[str, Any]:
    """A device list entry naming ``dev``'s identity."""
    return {
        "device_id": device_id,
        "name": name if name is not None else f"device {device_id}",
        "signing_key": b64(dev.signing_pub),
        "dh_key": b64(dev.dh_pub),
    }


@dataclass
class AccountKeys:
    """An account identity key: signs device lists (as the client library does)."""

    signing: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def public(self) -> str:
        return b64(self.signing.public_key().public_bytes_raw())

    def sign_list(self, device_list: dict[str, Any]) -> dict[str, Any]:
        """``{"device_list", "signature"}`` (the body of PUT /keys/v1/device-list)."""
        sig = self.signing.sign(LABEL_DEVICE_LIST + canonical(device_list))
        return {"device_list": device_list, "signature": b64(sig)}

    def signed(self, user_id: str, version: int, entries: list[dict[str, Any]]) -> dict[str, Any]:
        ordered = sorted(entries, key=lambda e: int(e["device_id"]))
        return self.sign_list({"user_id": user_id, "version": version, "devices": ordered})

    def registration(
        self, user_id: str, entries: list[dict[str, Any]], version: int = 1
    ) -> dict[str, Any]:
        """The body of PUT /keys/v1/account."""
        return {"account_key": self.public, **self.signed(user_id, version, entries)}
