"""Offline verification of Parley access tokens, for every service.

Access tokens are EdDSA-signed JWTs issued by the auth service. Services
verify them against the auth service's JWKS (fetched once, cached, refreshed
when a token names an unknown ``kid``), and check revocation in Redis:
``<prefix>:revoked:sid:<sid>`` (a revoked session) and
``<prefix>:blocked:<user_id>`` (a blocked user). Revocations are also
published on the Redis channel ``<prefix>:revocations`` so that gateways close
sockets at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import orjson
import redis.asyncio as aioredis
from aiohttp import web

from services.common.config import Settings
from services.common.errors import ApiError, ErrorCode
from services.common.logging import outgoing_headers, user_id_var
from services.common.state import REDIS, SETTINGS, VERIFIER

log = logging.getLogger(__name__)

TOKEN_LEEWAY_S = 5
VERIFIED_CACHE_MAX = 50_000
MAX_TOKEN_LIFETIME_S = 86_400 + TOKEN_LEEWAY_S
"""The longest ``exp - iat`` accepted: the largest ``access_token_ttl_s`` allowed (a bound
that holds whatever each service's own setting says)."""
ALGORITHMS = ["EdDSA"]
JWKS_PATH = "/.well-known/jwks.json"
# Unknown kids trigger at most one JWKS refresh per this many seconds
# (a flood of forged kids must not become a flood of requests to auth).
MIN_REFRESH_INTERVAL_S = 5.0
# The longest user id any service accepts (a token's ``sub``, a user id in a
# path). The auth service issues 32 hex digits; other services build storage
# keys from user ids, so a longer ``sub`` is refused as not one of our tokens.
MAX_USER_ID = 64


@dataclass(frozen=True, slots=True)
class Claims:
    sub: str
    sid: str
    roles: tuple[str, ...]
    jti: str
    exp: int
    did: int | None = None
    """The device the session is bound to (messaging needs it; docs/devices.md)."""

    @property
    def user_id(self) -> str:
        return self.sub

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


def revocation_keys(redis_prefix: str, claims: Claims) -> tuple[str, str]:
    return (f"{redis_prefix}:revoked:sid:{claims.sid}", f"{redis_prefix}:blocked:{claims.sub}")


def device_revocation_key(redis_prefix: str, user_id: str, device_id: int) -> str:
    """Set (by the key directory) when a device is removed from its account."""
    return f"{redis_prefix}:revoked:device:{user_id}:{device_id}"


def revocation_channel(redis_prefix: str) -> str:
    return f"{redis_prefix}:revocations"


def token_kid(token: str) -> str | None:
    """The ``kid`` a token names in its header, unverified (None if it names none)."""
    try:
        kid = _unverified_header(token).get("kid")
    except ApiError:
        return None
    return kid if isinstance(kid, str) else None


def _unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, only to pick the key: ``jwt.decode`` checks it all again.

    (A tenth of the cost of ``jwt.get_unverified_header``, which also decodes
    the payload and signature, character-checked in pure Python.)
    """
    head, dot, _ = token.partition(".")
    try:
        header = orjson.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, TypeError):  # binascii.Error and orjson's error are ValueErrors
        raise ApiError(ErrorCode.INVALID_TOKEN) from None
    if not dot or not isinstance(header, dict):
        raise ApiError(ErrorCode.INVALID_TOKEN)
    return header


JwksLoader = Callable[[], Awaitable[Mapping[str, Any]]]


class TokenVerifier:
    """Verifies access tokens against a JWKS; safe to share across requests.

    The JWKS comes from ``jwks_url`` (the auth service) or, inside the auth
    service itself, from ``jwks_loader`` (its own key ring: no HTTP to itself).
    """

    def __init__(
        self,
        settings: Settings,
        jwks_url: str | None = None,
        *,
        jwks_loader: JwksLoader | None = None,
    ) -> None:
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.cache_s = settings.jwks_cache_s
        self.jwks_url = jwks_url or settings.auth_url.rstrip("/") + JWKS_PATH
        self._loader = jwks_loader
        self._keys: dict[str, Any] = {}
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._verified: dict[str, Claims] = {}
        self._background: asyncio.Task[None] | None = None
        self.on_dropped: list[Callable[[frozenset[str]], None]] = []
        """Called with the kids whose key went (or changed) when a JWKS is loaded: a
        gateway closes the sockets their tokens opened."""

    def load_jwks(self, jwks: Mapping[str, Any]) -> None:
        keys: dict[str, Any] = {}
        entries = jwks.get("keys", [])
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            try:
                jwk = jwt.PyJWK(entry)
            except (jwt.PyJWKError, jwt.InvalidKeyError, KeyError, TypeError):
                log.warning("ignoring an unusable JWK", extra={"kid": entry.get("kid")})
                continue
            if entry.get("kid") and jwk.algorithm_name in ALGORITHMS:
                keys[entry["kid"]] = jwk.key
        dropped = frozenset(kid for kid, key in self._keys.items() if keys.get(kid) != key)
        if dropped:
            # A key dropped (``rotate-keys --drop-previous``: one compromised): the
            # tokens it signed die now, not only those this process never saw.
            self._verified.clear()
        self._keys = keys
        self._fetched_at = time.monotonic()
        for listener in self.on_dropped if dropped else ():
            listener(dropped)

    async def refresh(self) -> None:
        """Fetch the JWKS if the cached one is older than ``jwks_cache_s`` (a failed
        fetch keeps the keys known). For a process whose checks of tokens are rare
        (a gateway checks a socket's token once), so a dropped key is seen in time."""
        with contextlib.suppress(ApiError):  # logged; the known keys stay
            await self._refresh(force=False)

    async def _fetch(self) -> Mapping[str, Any]:
        if self._loader is not None:
            return await self._loader()
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        async with self._session.get(self.jwks_url, headers=outgoing_headers()) as resp:
            resp.raise_for_status()
            data = orjson.loads(await resp.read())
        if not isinstance(data, dict):
            raise ValueError("the JWKS is not a JSON object")
        return data

    async def _refresh(self, force: bool) -> None:
        """Fetch the JWKS when the cache is stale (or ``force``: an unknown kid).

        Attempts, failed or not, are at least MIN_REFRESH_INTERVAL_S apart, so
        that forged kids or an unreachable auth service cannot turn into a
        flood of requests; a failed fetch keeps the keys already known.
        """
        async with self._lock:
            now = time.monotonic()
            if not force and now - self._fetched_at < self.cache_s:
                return
            if now - self._attempted_at < MIN_REFRESH_INTERVAL_S:
                if not self._keys:
                    raise ApiError(ErrorCode.UNAVAILABLE, "Cannot verify tokens right now.")
                return
            self._attempted_at = now
            try:
                jwks = await self._fetch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # network, HTTP status, JSON, or the local loader
                log.warning("JWKS fetch failed", extra={"error": repr(exc)})
                if not self._keys:
                    msg = "Cannot verify tokens right now."
                    raise ApiError(ErrorCode.UNAVAILABLE, msg) from None
                return
            self.load_jwks(jwks)

    async def verify(self, token: str, *, remember: bool = True) -> Claims:
        """Verify a token, or answer from the cache of tokens already verified.

        The cache is keyed by the exact token string, whose signature was
        checked, and an entry is used only until the token's own expiry;
        delivery sees the same token on every ack and sync. ``remember=False``
        leaves a token it verifies out of the cache: a gateway verifies a
        socket's token once, and an entry per open socket would be half a
        kilobyte each (docs/BENCHMARKS.md, "Idle connections").
        """
        cached = self._verified.get(token)
        if cached is not None:
            if cached.exp + TOKEN_LEEWAY_S >= time.time():
                return cached
            del self._verified[token]
        claims = await self._verify(token)
        if not remember:
            return claims
        if len(self._verified) >= VERIFIED_CACHE_MAX:
            self._verified.clear()
        self._verified[token] = claims
        return claims

    async def _verify(self, token: str) -> Claims:
        header = _unverified_header(token)
        kid = header.get("kid")
        if header.get("alg") not in ALGORITHMS or not isinstance(kid, str):
            raise ApiError(ErrorCode.INVALID_TOKEN)
        if time.monotonic() - self._fetched_at >= self.cache_s:  # no lock on the fast path
            if kid in self._keys:
                # Stale but known: verified with it now, refreshed behind. Awaited, a
                # slow or unreachable auth service held every request of the pod for
                # up to the fetch timeout, round after round.
                self.refresh_behind()
            else:
                await self._refresh(force=False)
        if kid not in self._keys:
            await self._refresh(force=True)
        key = self._keys.get(kid)
        if key is None:
            raise ApiError(ErrorCode.INVALID_TOKEN)
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "sub", "sid", "jti", "iss", "aud"]},
                leeway=TOKEN_LEEWAY_S,
            )
        except jwt.ExpiredSignatureError:
            raise ApiError(ErrorCode.TOKEN_EXPIRED, "The access token has expired.") from None
        except jwt.PyJWTError:
            raise ApiError(ErrorCode.INVALID_TOKEN) from None
        if int(payload["exp"]) - int(payload["iat"]) > MAX_TOKEN_LIFETIME_S:
            # Never issued (the longest access token the auth service makes): one signed
            # with a stolen key, to outlive the key's rotation in every cache.
            raise ApiError(ErrorCode.INVALID_TOKEN)
        roles = payload.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise ApiError(ErrorCode.INVALID_TOKEN)
        sub = str(payload["sub"])
        if not 0 < len(sub) <= MAX_USER_ID:
            raise ApiError(ErrorCode.INVALID_TOKEN)
        return Claims(
            sub=sub,
            sid=str(payload["sid"]),
            roles=tuple(roles),
            jti=str(payload["jti"]),
            exp=int(payload["exp"]),
            did=_device_claim(payload.get("did")),
        )

    def refresh_behind(self) -> None:
        """:meth:`refresh` in a task of its own (one at a time): never waited for."""
        if self._background is None or self._background.done():
            self._background = asyncio.ensure_future(self.refresh())

    async def close(self) -> None:
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
        if self._session is not None:
            await self._session.close()


async def check_not_revoked(redis: aioredis.Redis, redis_prefix: str, claims: Claims) -> None:
    """Raise TOKEN_REVOKED if the session was revoked, its device removed, or the
    user blocked."""
    (error,) = await revocation_errors(redis, redis_prefix, [claims])
    if error is not None:
        raise error


async def revocation_errors(
    redis: aioredis.Redis, redis_prefix: str, claims: Sequence[Claims]
) -> list[ApiError | None]:
    """For each of ``claims``, the error :func:`check_not_revoked` raises for it (None:
    not revoked): one round trip for them all."""
    keys = [
        (*revocation_keys(redis_prefix, c),
         *([] if c.did is None else [device_revocation_key(redis_prefix, c.sub, c.did)]))
        for c in claims
    ]  # fmt: skip
    async with redis.pipeline(transaction=False) as pipe:
        for claim_keys in keys:
            for key in claim_keys:  # one key per EXISTS: they live on different shards
                pipe.exists(key)
        answers = iter(await pipe.execute())
    errors: list[ApiError | None] = []
    for claim_keys in keys:
        revoked, blocked, *device = (next(answers) for _ in claim_keys)
        if blocked:
            blocked_error = ApiError(
                ErrorCode.ACCOUNT_BLOCKED, "This account is blocked.", status=401
            )
            errors.append(blocked_error)
        elif revoked or any(device):
            errors.append(ApiError(ErrorCode.TOKEN_REVOKED, "This session was ended."))
        else:
            errors.append(None)
    return errors


def bearer_token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(ErrorCode.UNAUTHENTICATED, headers={"WWW-Authenticate": "Bearer"})
    return token.strip()


def use_token_verifier(app: web.Application, settings: Settings) -> TokenVerifier:
    verifier = TokenVerifier(settings)
    app[VERIFIER] = verifier

    async def close(_: web.Application) -> Any:
        yield
        await verifier.close()

    app.cleanup_ctx.append(close)
    return verifier


# What ``authenticate`` answers a caller it refuses, all with 401 (the OpenAPI
# document of every ``auth=True`` route lists them).
AUTH_ERRORS = (
    ErrorCode.UNAUTHENTICATED,
    ErrorCode.INVALID_TOKEN,
    ErrorCode.TOKEN_EXPIRED,
    ErrorCode.TOKEN_REVOKED,
    ErrorCode.ACCOUNT_BLOCKED,
)


async def authenticate_each(app: web.Application, tokens: Sequence[str]) -> list[Claims | ApiError]:
    """What :func:`authenticate` gives for each of several tokens, or the error it would
    raise: for a call that carries many users' acts at once (a gateway's batch of
    acks, services/delivery/routes.py). Revocations: one round trip for all."""
    verified: list[Claims | ApiError] = []
    for token in tokens:
        try:
            verified.append(await app[VERIFIER].verify(token))
        except ApiError as err:
            verified.append(err)
    claims = [c for c in verified if isinstance(c, Claims)]
    errors = iter(await revocation_errors(app[REDIS], app[SETTINGS].redis_prefix, claims))
    return [c if not isinstance(c, Claims) else (next(errors) or c) for c in verified]


async def authenticate(request: web.Request) -> Claims:
    """The caller's verified claims: the bearer token checked, then its revocation.

    Called once per request by the route decorator (services.common.openapi)
    for every ``auth=True`` route; handlers get the result as ``claims=`` and
    never call this themselves.
    """
    claims = await request.app[VERIFIER].verify(bearer_token(request))
    await check_not_revoked(request.app[REDIS], request.app[SETTINGS].redis_prefix, claims)
    user_id_var.set(claims.sub)  # every line logged for this request carries it
    return claims


def _device_claim(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**31:
        raise ApiError(ErrorCode.INVALID_TOKEN)
    return value
