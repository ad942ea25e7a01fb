"""``create_app``: the delivery service's wiring."""

from __future__ import annotations

from aiohttp import web

from services.common.app import base_app
from services.common.clients import Topics
from services.common.config import Settings
from services.common.deps import use_kafka_producer, use_mongo, use_redis
from services.delivery.routes import api


async def create_app(settings: Settings) -> web.Application:
    app = base_app("delivery", settings, prefix="/delivery", api=api)
    use_mongo(app, settings, "delivery")
    use_redis(app, settings)
    use_kafka_producer(app, settings, Topics(settings).all())
    return app
