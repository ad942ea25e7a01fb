"""``create_app``: the key directory's wiring."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from services.common.app import base_app
from services.common.audit import AuditLog
from services.common.auth import use_token_verifier
from services.common.clients import Topics
from services.common.config import Settings
from services.common.deps import use_kafka_producer, use_mongo, use_redis, use_startup
from services.common.ratelimit import RateLimiter
from services.common.state import REGISTRY
from services.common.tasks import cancel_all
from services.keys.accounts import keep_identity_keys, keep_revocations, restore_revocations
from services.keys.config import MIN_BODY_BYTES, KeysConfig
from services.keys.events import EventPublisher
from services.keys.metrics import KeysMetrics
from services.keys.routes import api
from services.keys.state import KEYS, Keys
from services.keys.store import KeyStore


async def create_app(settings: Settings, config: KeysConfig | None = None) -> web.Application:
    config = config or KeysConfig()
    if settings.max_body_bytes < MIN_BODY_BYTES:
        # A full batch of ML-KEM prekeys must fit (services.keys.config).
        settings = settings.model_copy(update={"max_body_bytes": MIN_BODY_BYTES})
    app = base_app("keys", settings, prefix="/keys", api=api)
    db = use_mongo(app, settings, "keys")
    redis = use_redis(app, settings)
    kafka = use_kafka_producer(app, settings, [Topics(settings).events])
    use_token_verifier(app, settings)
    store = KeyStore(db, redis, kafka, settings)
    metrics = KeysMetrics(app[REGISTRY])
    keys = Keys(
        store=store,
        config=config,
        events=EventPublisher(store, config),
        limiter=RateLimiter(redis, f"{settings.redis_prefix}:keys", metrics=metrics.limits),
        metrics=metrics,
        audit=AuditLog.of(db, settings, "keys"),
    )
    app[KEYS] = keys

    async def startup() -> None:
        # Until the indexes exist, uniqueness would not hold; until the removed
        # devices' revocations are back in Redis, their tokens would pass.
        await store.ensure_indexes()
        await keys.audit.ensure_indexes()
        await restore_revocations(keys)

    use_startup(app, startup)

    async def background(_: web.Application) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(keys.events.run()),
            asyncio.create_task(keep_revocations(keys)),
            asyncio.create_task(keep_identity_keys(keys)),
        ]
        yield
        await cancel_all(tasks)

    app.cleanup_ctx.append(background)
    return app
