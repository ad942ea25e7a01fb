"""``create_app``: the auth service's wiring."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from services.auth.api import api
from services.auth.config import AuthSettings
from services.auth.oidc import clients as oidc_clients
from services.auth.oidc import routes as oidc_routes
from services.auth.oidc.provider import Provider
from services.auth.routes import jwks
from services.auth.signing import Clock, utcnow
from services.auth.state import AUTH_SERVICE, OIDC_PROVIDER, AuthService
from services.common.app import base_app
from services.common.auth import JWKS_PATH, TokenVerifier
from services.common.config import Settings
from services.common.deps import use_mongo, use_redis, use_startup
from services.common.state import REGISTRY, VERIFIER
from services.common.tasks import cancel_all

DISCOVERY_PATH = "/.well-known/openid-configuration"


async def create_app(
    settings: Settings, config: AuthSettings | None = None, clock: Clock = utcnow
) -> web.Application:
    config = config or AuthSettings()
    app = base_app("auth", settings, prefix="/auth", api=api)
    db = use_mongo(app, settings, "auth")
    redis = use_redis(app, settings)
    service = AuthService.build(settings, config, db, redis, clock, app[REGISTRY])
    app[AUTH_SERVICE] = service
    issuer = (config.oidc_issuer or settings.public_url).rstrip("/")
    app[OIDC_PROVIDER] = Provider(service, issuer)

    async def start() -> None:
        await service.start()
        await oidc_clients.ensure_admin_console(service, issuer)

    # Indexes, signing keys, the admin console's client: retried until MongoDB
    # answers; requests wait for them.
    use_startup(app, start)

    async def loader() -> dict[str, object]:
        return await service.keyring.jwks()

    # The auth service verifies its own tokens from its key ring (no HTTP to itself).
    app[VERIFIER] = TokenVerifier(settings, jwks_loader=loader)
    app.router.add_get(JWKS_PATH, jwks)
    app.router.add_get(DISCOVERY_PATH, oidc_routes.discovery)

    async def drain(_: web.Application) -> AsyncIterator[None]:
        # Revoked sessions and blocked users back into Redis whenever it lost them.
        keeper = asyncio.create_task(service.keep_revocations())
        yield
        await cancel_all([keeper])
        await service.drain()

    app.cleanup_ctx.append(drain)
    return app
