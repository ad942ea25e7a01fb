"""Access tokens (signed JWTs), refresh tokens and opaque secrets (codes).

An access token carries ``iss``, ``aud``, ``sub`` (user id), ``sid`` (the
session, i.e. the refresh-token family), ``roles``, ``jti``, ``iat``, ``exp``
and ``amr`` (how the user authenticated, RFC 8176). Reset tokens, codes and
recovery codes are random and only their SHA-256 is stored: they carry enough
entropy (>= 128 bits for tokens) that a fast hash is safe.

A refresh token (:func:`refresh_token`) names its session and generation in the
clear and proves them with an HMAC under the session's own key, which only the
server holds: nothing is stored per token (services.auth.sessions). Refresh
tokens issued before (random, their SHA-256 in ``refresh_tokens``) are still
read: :func:`parse_refresh_token` tells the two apart.
"""

from __future__ import annotations

import base64
import binascii
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


REFRESH_V1 = 1
"""The first byte of a refresh token of this format (a legacy one is random)."""
REFRESH_KEY_BYTES = 32
_REFRESH_MAC_CONTEXT = b"parley-auth refresh token v1\x00"
_SID_BYTES = 16
_GEN_BYTES = 8
_MAC_BYTES = 32
_REFRESH_BYTES = 1 + _SID_BYTES + _GEN_BYTES + _MAC_BYTES
REFRESH_TOKEN_LENGTH = 4 * _REFRESH_BYTES // 3
"""76 characters (57 bytes, base64url without padding); a legacy token has 43."""


def new_refresh_key() -> bytes:
    """A session's refresh key: 256 random bits, kept sealed in the session."""
    return secrets.token_bytes(REFRESH_KEY_BYTES)


def _sid_bytes(sid: str) -> bytes:
    raw = bytes.fromhex(sid)
    if len(raw) != _SID_BYTES or raw.hex() != sid:
        raise ValueError("a session id is 32 lower-case hex digits")
    return raw


def refresh_mac(key: bytes, sid: str, generation: int) -> bytes:
    """HMAC-SHA256 under the session's key of (context, sid, generation)."""
    msg = _REFRESH_MAC_CONTEXT + _sid_bytes(sid) + generation.to_bytes(_GEN_BYTES, "big")
    return hmac.new(key, msg, hashlib.sha256).digest()


def refresh_token(key: bytes, sid: str, generation: int) -> str:
    """The refresh token of generation ``generation`` of the session ``sid``:
    base64url(version | sid (16 bytes) | generation (8 bytes, big-endian) | MAC).
    One string without separators: clients keep it opaque, as before."""
    raw = (
        bytes([REFRESH_V1])
        + _sid_bytes(sid)
        + generation.to_bytes(_GEN_BYTES, "big")
        + refresh_mac(key, sid, generation)
    )
    return base64.urlsafe_b64encode(raw).decode("ascii")


def parse_refresh_token(token: str) -> tuple[str, int, bytes] | None:
    """(sid, generation, MAC) of a token of this format, unverified; None for anything
    else (a legacy token, or garbage: looked up the old way, and not found)."""
    if len(token) != REFRESH_TOKEN_LENGTH:
        return None
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    if len(raw) != _REFRESH_BYTES or raw[0] != REFRESH_V1:
        return None
    if base64.urlsafe_b64encode(raw).decode("ascii") != token:
        return None  # one spelling only (the decoder skips stray characters)
    sid = raw[1 : 1 + _SID_BYTES].hex()
    at = 1 + _SID_BYTES
    generation = int.from_bytes(raw[at : at + _GEN_BYTES], "big")
    return sid, generation, raw[at + _GEN_BYTES :]


def new_recovery_code() -> str:
    """10 characters from a 31-symbol alphabet (~50 bits), shown as XXXXX-XXXXX."""
    chars = "".join(secrets.choice(CODE_ALPHABET) for _ in range(10))
    return f"{chars[:5]}-{chars[5:]}"


def normalize_recovery_code(code: str) -> str:
    """The code's ASCII letters and digits, upper-cased (separators and spaces dropped).
    Anything else is dropped too: ``isalnum`` alone kept any Unicode letter or digit
    (and ``upper`` turns "ß" into "SS"), so a code of other characters was compared as
    something the alphabet never makes."""
    return "".join(ch for ch in code.upper() if ch.isascii() and ch.isalnum())


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
