"""Wire backing-server clients into an app: build, register readiness check, close on exit.

Also the start-up work (:func:`use_startup`): what a service must do in its
dependencies before it serves, retried in the background until done.
The keys they set are in :mod:`services.common.state`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from pymongo.asynchronous.database import AsyncDatabase

from services.common.clients import KafkaProducerHandle, mongo_client, redis_client, service_db
from services.common.config import Settings
from services.common.startup import CHECK_NAME, Startup
from services.common.state import CHECKS, DB, KAFKA, MONGO, REDIS, SERVICE, STARTUP
from services.common.tasks import cancel_all


def use_mongo(
    app: web.Application, settings: Settings, service: str
) -> AsyncDatabase[dict[str, Any]]:
    client = mongo_client(settings)
    app[MONGO] = client
    app[DB] = service_db(client, settings, service)

    async def ping() -> None:
        await client.admin.command("ping")

    app[CHECKS]["mongodb"] = ping

    async def close(_: web.Application) -> AsyncIterator[None]:
        yield
        await client.close()

    app.cleanup_ctx.append(close)
    return app[DB]


def use_redis(app: web.Application, settings: Settings) -> aioredis.Redis:
    client = redis_client(settings)
    app[REDIS] = client

    async def ping() -> None:
        await client.ping()

    app[CHECKS]["redis"] = ping

    async def close(_: web.Application) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app.cleanup_ctx.append(close)
    return client


def use_kafka_producer(
    app: web.Application, settings: Settings, topics: Iterable[str]
) -> KafkaProducerHandle:
    handle = KafkaProducerHandle(settings, topics)
    app[KAFKA] = handle
    app[CHECKS]["kafka"] = handle.check

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await handle.start()
        yield
        await handle.stop()

    app.cleanup_ctx.append(lifecycle)
    return handle


def use_startup(app: web.Application, work: Callable[[], Awaitable[None]]) -> Startup:
    """Run ``work`` in the background once the app starts, retried with back-off until done.

    Until then ``/readyz`` fails its ``startup`` check and requests wait for
    it (services.common.startup). Stopping the app cancels work not yet done.
    """
    startup = Startup(app[SERVICE], work)
    app[STARTUP] = startup
    app[CHECKS][CHECK_NAME] = startup.check

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(startup.run())
        yield
        await cancel_all([task])

    app.cleanup_ctx.append(lifecycle)
    return startup
