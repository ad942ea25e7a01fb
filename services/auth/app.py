"""``create_app``: the auth service's wiring."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from services.auth.config import AuthSettings
from services.auth.routes import AUTH_SERVICE, api, jwks
from services.auth.service import AuthService
from services.auth.signing import Clock, utcnow
from services.common.app import CHECKS, base_app
from services.common.auth import JWKS_PATH, VERIFIER, TokenVerifier
from services.common.config import Settings
from services.common.deps import use_mongo, use_redis
from services.common.errors import ApiError, ErrorCode

OPERATIONAL = ("/healthz", "/readyz", "/metrics")


async def create_app(
    settings: Settings, config: AuthSettings | None = None, clock: Clock = utcnow
) -> web.Application:
    config = config or AuthSettings()

    @web.middleware
    async def until_started(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Requests wait (a little) for indexes and keys; health probes never do."""
        started = request.app[AUTH_SERVICE].started
        if not started.is_set() and not request.path.endswith(OPERATIONAL):
            try:
                await asyncio.wait_for(started.wait(), settings.dependency_timeout_ms / 1000)
            except TimeoutError:
                raise ApiError(ErrorCode.UNAVAILABLE, "Starting up; retry shortly.") from None
        return await handler(request)

    app = base_app("auth", settings, prefix="/auth", api=api, middlewares=[until_started])
    db = use_mongo(app, settings, "auth")
    redis = use_redis(app, settings)
    service = AuthService.build(settings, config, db, redis, clock)
    app[AUTH_SERVICE] = service

    async def started() -> None:
        if not service.started.is_set():
            raise RuntimeError("indexes and signing keys not loaded yet")

    app[CHECKS]["auth"] = started

    async def loader() -> dict[str, object]:
        return await service.keyring.jwks()

    # The auth service verifies its own tokens from its key ring (no HTTP to itself).
    app[VERIFIER] = TokenVerifier(settings, jwks_loader=loader)
    app.router.add_get(JWKS_PATH, jwks)

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        starting = asyncio.create_task(service.start_with_retry())
        yield
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await service.drain()

    app.cleanup_ctx.append(lifecycle)
    return app
