"""``create_app``: the auth service's wiring."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from services.auth.config import AuthSettings
from services.auth.routes import api, jwks
from services.auth.signing import Clock, utcnow
from services.auth.state import AUTH_SERVICE, AuthService
from services.common.app import base_app
from services.common.auth import JWKS_PATH, TokenVerifier
from services.common.config import Settings
from services.common.deps import use_mongo, use_redis, use_startup
from services.common.state import REGISTRY, VERIFIER


async def create_app(
    settings: Settings, config: AuthSettings | None = None, clock: Clock = utcnow
) -> web.Application:
    config = config or AuthSettings()
    app = base_app("auth", settings, prefix="/auth", api=api)
    db = use_mongo(app, settings, "auth")
    redis = use_redis(app, settings)
    service = AuthService.build(settings, config, db, redis, clock, app[REGISTRY])
    app[AUTH_SERVICE] = service
    # Indexes and signing keys, retried until MongoDB answers; requests wait for them.
    use_startup(app, service.start)

    async def loader() -> dict[str, object]:
        return await service.keyring.jwks()

    # The auth service verifies its own tokens from its key ring (no HTTP to itself).
    app[VERIFIER] = TokenVerifier(settings, jwks_loader=loader)
    app.router.add_get(JWKS_PATH, jwks)

    async def drain(_: web.Application) -> AsyncIterator[None]:
        yield
        await service.drain()

    app.cleanup_ctx.append(drain)
    return app
