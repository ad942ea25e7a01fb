"""``create_app``: the delivery service's wiring (inbox HTTP API + Kafka workers)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from services.common.app import base_app
from services.common.audit import AuditLog
from services.common.auth import use_token_verifier
from services.common.clients import Topics, service_db
from services.common.config import Settings
from services.common.consumer_lag import watch_consumers
from services.common.deps import use_kafka_producer, use_mongo, use_redis, use_startup
from services.common.ratelimit import RateLimiter, RateLimitMetrics
from services.common.state import MONGO, REGISTRY
from services.delivery.handlers import Inbox
from services.delivery.moderation import Moderation
from services.delivery.moderation_keys import ModerationKeys
from services.delivery.moderation_store import ModerationStore
from services.delivery.parties import Parties, RoomRecords
from services.delivery.routes import api
from services.delivery.state import INBOX, MODERATION, ROOM_LOG, WORKER
from services.delivery.store import DeliveryStore
from services.delivery.worker import Worker

# A report carries a message's plaintext (base64url, up to what a frame carries) and
# its other fields: the body must fit the largest a client can send, or its report is
# refused (413) where a smaller one is taken (services/delivery/moderation.py).
REPORT_OVERHEAD_BYTES = 8 * 1024


async def create_app(settings: Settings, *, run_worker: bool = True) -> web.Application:
    least = settings.ws_max_frame_bytes + REPORT_OVERHEAD_BYTES
    if settings.max_body_bytes < least:
        settings = settings.model_copy(update={"max_body_bytes": least})
    app = base_app("delivery", settings, prefix="/delivery", api=api)
    db = use_mongo(app, settings, "delivery")
    redis = use_redis(app, settings)
    producer = use_kafka_producer(app, settings, Topics(settings).all())
    use_token_verifier(app, settings)
    store = DeliveryStore(settings, db, redis)
    app[INBOX] = Inbox(store, app[REGISTRY])
    keys = ModerationKeys(settings)
    mstore = ModerationStore(db)
    # The rooms service's records, read only, for admins' look-ups (services/delivery/
    # parties.py RoomRecords), on the same server.
    parties = Parties(settings, RoomRecords(service_db(app[MONGO], settings, "rooms")))
    # Unsends and reports, each per user; refusals counted in
    # parley_rate_limit_refusals_total{service="delivery"}.
    limiter = RateLimiter(
        redis, f"{settings.redis_prefix}:delivery",
        metrics=RateLimitMetrics(app[REGISTRY], "delivery", ("unsend", "report")),
    )  # fmt: skip
    app[MODERATION] = Moderation(
        settings, store, mstore, keys, producer, AuditLog.of(db, settings, "delivery"), parties,
        limiter,
    )  # fmt: skip
    worker = Worker(settings, store, app[REGISTRY], producer, keys, acked=app[INBOX].acked)
    app[WORKER] = worker
    app[ROOM_LOG] = worker.room_log

    async def stop_worker(_: web.Application) -> AsyncIterator[None]:
        yield
        await worker.stop()
        await parties.close()

    # Before the start-up work: cleanup runs in reverse, so the work is
    # cancelled before the worker stops (it cannot start it afterwards).
    app.cleanup_ctx.append(stop_worker)

    async def start() -> None:
        # Indexes first (retried until MongoDB answers), then the consumers.
        await store.ensure_indexes()
        await mstore.ensure_indexes()
        if run_worker:
            await worker.start()

    use_startup(app, start)

    if run_worker:
        watch_consumers(app, settings, worker.groups(), worker.running)

        async def moderation_upkeep(_: web.Application) -> AsyncIterator[None]:
            # Removals left part-way, and old removal records (services/delivery/moderation.py).
            task = asyncio.create_task(app[MODERATION].upkeep())
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        app.cleanup_ctx.append(moderation_upkeep)
    return app
