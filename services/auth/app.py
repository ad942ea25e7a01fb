"""``create_app``: the auth service's wiring."""

from __future__ import annotations

from aiohttp import web

from services.auth.routes import api
from services.common.app import base_app
from services.common.config import Settings
from services.common.deps import use_mongo, use_redis


async def create_app(settings: Settings) -> web.Application:
    app = base_app("auth", settings, prefix="/auth", api=api)
    use_mongo(app, settings, "auth")
    use_redis(app, settings)
    return app
