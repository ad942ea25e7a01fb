"""Wire backing-server clients into an app: build, register readiness check, close on exit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from services.common.app import CHECKS
from services.common.clients import KafkaProducerHandle, mongo_client, redis_client, service_db
from services.common.config import Settings

MONGO: web.AppKey[AsyncMongoClient[dict[str, Any]]] = web.AppKey("mongo", AsyncMongoClient)
DB: web.AppKey[AsyncDatabase[dict[str, Any]]] = web.AppKey("db", AsyncDatabase)
REDIS: web.AppKey[aioredis.Redis] = web.AppKey("redis", aioredis.Redis)
KAFKA: web.AppKey[KafkaProducerHandle] = web.AppKey("kafka", KafkaProducerHandle)


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
