"""``create_app``: the key directory's wiring."""

from __future__ import annotations

from aiohttp import web

from services.common.app import base_app
from services.common.clients import Topics
from services.common.config import Settings
from services.common.deps import use_kafka_producer, use_mongo, use_redis
from services.keys.routes import api


async def create_app(settings: Settings) -> web.Application:
    app = base_app("keys", settings, prefix="/keys", api=api)
    use_mongo(app, settings, "keys")
    use_redis(app, settings)
    use_kafka_producer(app, settings, [Topics(settings).events])
    return app
