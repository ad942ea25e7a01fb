"""The auth service's shared object and its app key, built once by ``create_app`` (or the CLI).

Handlers receive an :class:`AuthService` and a :class:`Caller`; they never
reach for a global. Tests build the same object against the embedded servers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry
from pymongo.asynchronous.database import AsyncDatabase

from services.auth.config import LIMIT_RULES, AuthSettings, require_key_encryption
from services.auth.mail import Mailer
from services.auth.metrics import AuthMetrics
from services.auth.passwords import Passwords
from services.auth.secretbox import SecretBox
from services.auth.signing import Clock, KeyRing, utcnow
from services.auth.store import AuthStore
from services.auth.tokens import AccessTokens
from services.common.audit import AuditLog
from services.common.auth import Claims
from services.common.config import Settings
from services.common.errors import ApiError, ErrorCode
from services.common.http import address_key, client_ip
from services.common.logging import request_id_var
from services.common.ratelimit import RateLimiter

if TYPE_CHECKING:
    from services.auth.oidc.provider import Provider

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, as far as the network tells: for limits, sessions and the audit log."""

    ip: str
    user_agent: str | None = None
    request_id: str | None = None

    @property
    def ip_key(self) -> str:
        """The address as per-address limits count it (an IPv6 address by its /64)."""
        return address_key(self.ip)

    @classmethod
    def of(cls, request: web.Request, trust_forwarded_for: bool) -> Caller:
        ua = request.headers.get("User-Agent")
        return cls(
            ip=client_ip(request, trust_forwarded_for),
            user_agent=ua[:200] if ua else None,
            request_id=request_id_var.get(),
        )


@dataclass
class AuthService:
    settings: Settings
    config: AuthSettings
    store: AuthStore
    box: SecretBox
    passwords: Passwords
    keyring: KeyRing
    tokens: AccessTokens
    limiter: RateLimiter
    mailer: Mailer
    # The one audit log of all services (services.common.audit), as the auth service.
    audit: AuditLog
    clock: Clock = utcnow
    metrics: AuthMetrics = field(default_factory=lambda: AuthMetrics(CollectorRegistry()))
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @classmethod
    def build(
        cls,
        settings: Settings,
        config: AuthSettings,
        db: AsyncDatabase[dict[str, Any]],
        redis: aioredis.Redis,
        clock: Clock = utcnow,
        registry: CollectorRegistry | None = None,
    ) -> AuthService:
        require_key_encryption(settings)
        metrics = AuthMetrics(registry or CollectorRegistry(), LIMIT_RULES)
        # Ended sessions kept as long as revocation needs them (revocation_ttl_s).
        store = AuthStore(
            db, redis, settings.redis_prefix, ended_session_s=settings.access_token_ttl_s + 60
        )
        box = SecretBox(settings.key_encryption_secret)
        if not box.encrypts:
            log.warning(
                "PARLEY_KEY_ENCRYPTION_SECRET is not set: signing keys, TOTP seeds and "
                "refresh keys are stored unencrypted (PARLEY_ENV=development only)"
            )
        keyring = KeyRing(
            store,
            box,
            # Published while a token it signed lives: an access token or an ID token
            # (which may live longer). Stored while an ID token it signed is taken as
            # an id_token_hint: up to a refresh token's lifetime past its expiry
            # (oidc.server.EndSession).
            token_ttl_s=max(settings.access_token_ttl_s, config.oidc_id_token_ttl_s),
            max_age_s=config.signing_key_max_age_s,
            reload_s=config.signing_key_reload_s,
            activation_delay_s=config.activation_delay_s,
            retain_s=config.oidc_id_token_ttl_s + settings.refresh_token_ttl_s,
            clock=clock,
        )
        return cls(
            settings=settings,
            config=config,
            store=store,
            box=box,
            passwords=Passwords(config),
            keyring=keyring,
            tokens=AccessTokens(settings, keyring),
            # Rules by name (config.limit); keys <prefix>:auth:rl:<rule>:<hash>.
            limiter=RateLimiter(
                redis, f"{settings.redis_prefix}:auth", config.limit, metrics.limits
            ),
            mailer=Mailer(settings, metrics.emails),
            audit=AuditLog.of(db, settings, "auth"),
            clock=clock,
            metrics=metrics,
        )

    async def start(self) -> None:
        """Indexes, revocations back in Redis, signing keys: the start-up work
        (``create_app`` retries it)."""
        await self.store.ensure_indexes()
        await self.audit.ensure_indexes()
        restored = await self.store.revocation_log.restore()
        if restored:
            log.info("revocations restored", extra={"count": restored})
        await self.keyring.reload()

    async def keep_revocations(self) -> None:
        """For as long as the service runs: restore the revocations when Redis lost them."""
        await self.store.revocation_log.keep(self.config.revocation_check_s, "auth")

    def now(self) -> datetime:
        return self.clock()

    @property
    def revocation_ttl_s(self) -> int:
        """Revocation keys outlive every access token they concern."""
        return self.settings.access_token_ttl_s + 60

    async def own_user(self, claims: Claims) -> dict[str, Any]:
        """The caller's account (gone means the session is over)."""
        user = await self.store.user_by_id(claims.sub)
        if user is None:
            raise ApiError(ErrorCode.TOKEN_REVOKED, "This session was ended.")
        return user

    def spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        """Run work after answering (e-mails whose timing must not leak anything)."""

        async def guarded() -> None:
            try:
                await coro
            except Exception:
                log.exception("background task failed", extra={"task": what})

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for background work (shutdown, and tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


AUTH_SERVICE: web.AppKey[AuthService] = web.AppKey("auth_service", AuthService)
OIDC_PROVIDER: web.AppKey[Provider] = web.AppKey("oidc_provider")
