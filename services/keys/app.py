"""``create_app``: the key directory's wiring."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from services.common.app import CHECKS, base_app
from services.common.auth import authenticate, use_token_verifier
from services.common.clients import Topics
from services.common.config import Settings
from services.common.deps import use_kafka_producer, use_mongo, use_redis
from services.common.errors import ApiError, ErrorCode
from services.keys.context import KEYS, Keys
from services.keys.events import EventPublisher
from services.keys.policy import MIN_BODY_BYTES, KeysPolicy
from services.keys.routes import MAX_USER_ID, api
from services.keys.store import KeyStore

log = logging.getLogger(__name__)

PREFIX = "/keys"
API_PREFIX = PREFIX + "/v1/"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def create_app(settings: Settings, policy: KeysPolicy | None = None) -> web.Application:
    policy = policy or KeysPolicy()
    if settings.max_body_bytes < MIN_BODY_BYTES:
        # A full batch of ML-KEM prekeys must fit (services.keys.policy).
        settings = settings.model_copy(update={"max_body_bytes": MIN_BODY_BYTES})
    app = base_app("keys", settings, prefix=PREFIX, api=api, middlewares=[api_middleware])
    db = use_mongo(app, settings, "keys")
    redis = use_redis(app, settings)
    kafka = use_kafka_producer(app, settings, [Topics(settings).events])
    use_token_verifier(app, settings)
    store = KeyStore(db, redis, kafka, settings)
    keys = Keys(store=store, policy=policy, events=EventPublisher(store, policy))
    app[KEYS] = keys

    async def indexes() -> None:
        if not store.indexes_ready.is_set():
            raise ConnectionError("indexes not created yet")

    app[CHECKS]["indexes"] = indexes
    app.cleanup_ctx.append(_background(keys))
    return app


def _background(keys: Keys) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(_: web.Application) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(_ensure_indexes(keys.store)),
            asyncio.create_task(keys.events.run()),
        ]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    return ctx


async def _ensure_indexes(store: KeyStore) -> None:
    """Create the indexes, retrying until MongoDB answers (it may start after us)."""
    delay = 0.2
    while True:
        try:
            await store.ensure_indexes()
            return
        except Exception as exc:
            log.warning("cannot create indexes yet", extra={"error": repr(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every API route: authenticate first (before any body is read), and wait for indexes.

    Until the unique indexes exist, uniqueness of devices and prekey ids
    would not hold, so requests wait for them (briefly) instead.
    """
    if not request.path.startswith(API_PREFIX):
        return await handler(request)
    claims = await authenticate(request)
    if len(claims.user_id) > MAX_USER_ID:
        raise ApiError(ErrorCode.FORBIDDEN, "This account cannot hold keys.")
    store = request.app[KEYS].store
    if not store.indexes_ready.is_set():
        timeout = request.app[KEYS].store.send_timeout_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(store.indexes_ready.wait(), timeout)
        if not store.indexes_ready.is_set():
            raise ApiError(ErrorCode.UNAVAILABLE, "The key directory is starting; try again.")
    return await handler(request)
