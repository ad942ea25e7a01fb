"""Encryption at rest for the auth service's own secrets (signing keys, TOTP seeds,
sessions' refresh keys).

With ``PARLEY_KEY_ENCRYPTION_SECRET`` set, values are sealed with AES-256-GCM
under a key derived from the secret by HKDF-SHA256, and bound (as associated
data) to what they belong to, so a sealed value cannot be moved to another
record. Without it (the embedded default) they are stored base64url-encoded
and marked as such; a sealed value then cannot be opened and loading fails
loudly rather than silently.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

_INFO = b"parley-auth secret-at-rest v1"


class SecretBoxError(Exception):
    """A stored secret cannot be opened (wrong or missing encryption secret)."""


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SecretBox:
    def __init__(self, secret: SecretStr | None) -> None:
        self._aead: AESGCM | None = None
        if secret is not None and secret.get_secret_value():
            key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
                secret.get_secret_value().encode()
            )
            self._aead = AESGCM(key)

    @property
    def encrypts(self) -> bool:
        return self._aead is not None

    def seal(self, plaintext: bytes, context: str) -> dict[str, Any]:
        if self._aead is None:
            return {"enc": "none", "data": b64u(plaintext)}
        nonce = os.urandom(12)
        ct = self._aead.encrypt(nonce, plaintext, context.encode())
        return {"enc": "A256GCM", "nonce": b64u(nonce), "data": b64u(ct)}

    def open(self, sealed: dict[str, Any], context: str) -> bytes:
        enc = sealed.get("enc")
        if enc == "none":
            return unb64u(str(sealed["data"]))
        if enc != "A256GCM":
            raise SecretBoxError(f"unknown encoding {enc!r}")
        if self._aead is None:
            raise SecretBoxError("stored encrypted, but PARLEY_KEY_ENCRYPTION_SECRET is not set")
        try:
            return self._aead.decrypt(
                unb64u(str(sealed["nonce"])), unb64u(str(sealed["data"])), context.encode()
            )
        except InvalidTag:
            raise SecretBoxError("cannot decrypt: wrong PARLEY_KEY_ENCRYPTION_SECRET") from None
