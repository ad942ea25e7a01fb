"""Access tokens (signed JWTs) and opaque secrets (refresh tokens, codes).

An access token carries ``iss``, ``aud``, ``sub`` (user id), ``sid`` (the
session, i.e. the refresh-token family), ``roles``, ``jti``, ``iat``, ``exp``
and ``amr`` (how the user authenticated, RFC 8176). Refresh tokens, reset
tokens and recovery codes are random and only their SHA-256 is stored: they
carry enough entropy (>= 128 bits for tokens) that a fast hash is safe.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from services.auth.signing import KeyRing
from services.common.config import Settings

# Unambiguous alphabet for codes a person types (no 0/O, 1/I/L).
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"


def new_id() -> str:
    return uuid.uuid4().hex


def new_token() -> str:
    """An opaque bearer secret: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def digest(*parts: str) -> str:
    """SHA-256 (hex) of the parts, unambiguously joined."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode()
        h.update(len(data).to_bytes(4, "big") + data)
    return h.hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def new_recovery_code() -> str:
    """10 characters from a 31-symbol alphabet (~50 bits), shown as XXXXX-XXXXX."""
    chars = "".join(secrets.choice(CODE_ALPHABET) for _ in range(10))
    return f"{chars[:5]}-{chars[5:]}"


def normalize_recovery_code(code: str) -> str:
    return "".join(ch for ch in code.upper() if ch.isalnum())


def new_numeric_code(digits: int = 6) -> str:
    return f"{secrets.randbelow(10**digits):0{digits}d}"


class AccessTokens:
    def __init__(self, settings: Settings, keyring: KeyRing) -> None:
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.ttl_s = settings.access_token_ttl_s
        self.keyring = keyring

    async def issue(
        self,
        user_id: str,
        sid: str,
        roles: Sequence[str],
        amr: Sequence[str],
        now: datetime,
        device_id: int | None = None,
    ) -> str:
        iat = int(now.timestamp())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user_id,
            "sid": sid,
            "roles": list(roles),
            "amr": list(amr),
            "jti": new_id(),
            "iat": iat,
            "exp": iat + self.ttl_s,
        }
        if device_id is not None:
            claims["did"] = device_id  # the device this session is bound to
        return await self.keyring.sign(claims)
