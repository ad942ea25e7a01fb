"""``create_app``: the rooms service's wiring."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from services.common.app import base_app
from services.common.audit import AuditLog
from services.common.auth import use_token_verifier
from services.common.clients import Topics, service_db
from services.common.config import Settings
from services.common.consumer_lag import watch_consumers
from services.common.deps import use_kafka_producer, use_mongo, use_redis, use_startup
from services.common.outbox import drain_forever
from services.common.ratelimit import RateLimiter
from services.common.room_gate import RoomGate
from services.common.state import MONGO, REGISTRY
from services.common.tasks import cancel_all
from services.rooms import members, timeline
from services.rooms.config import RoomsConfig
from services.rooms.events import EventPublisher
from services.rooms.metrics import RoomsMetrics
from services.rooms.presence import Presence
from services.rooms.push import Pusher
from services.rooms.room_messages import RoomMessages
from services.rooms.routes import api
from services.rooms.state import ROOM_MESSAGES, ROOMS, Rooms
from services.rooms.store import RoomStore
from services.rooms.users import Users


async def create_app(settings: Settings, config: RoomsConfig | None = None) -> web.Application:
    config = config or RoomsConfig()
    app = base_app("rooms", settings, prefix="/rooms", api=api)
    db = use_mongo(app, settings, "rooms")
    redis = use_redis(app, settings)
    topics = Topics(settings)
    kafka = use_kafka_producer(app, settings, [topics.rooms, topics.notifications])
    use_token_verifier(app, settings)
    store = RoomStore(db, kafka, settings)
    metrics = RoomsMetrics(app[REGISTRY])
    users = Users(settings, config.user_cache_s)
    rooms = Rooms(
        store=store,
        config=config,
        events=EventPublisher(store, config, metrics, RoomGate(redis, settings.redis_prefix)),
        users=users,
        limiter=RateLimiter(redis, f"{settings.redis_prefix}:rooms", metrics=metrics.limits),
        metrics=metrics,
        pusher=Pusher(redis, settings, metrics),
        audit=AuditLog.of(db, settings, "rooms"),
        # The auth service's users, read only: the presence preference.
        presence=Presence(redis, settings, service_db(app[MONGO], settings, "auth")["users"]),
    )
    app[ROOMS] = rooms
    consumer = RoomMessages(rooms, settings)
    app[ROOM_MESSAGES] = consumer

    async def start() -> None:
        await store.ensure_indexes()
        await rooms.audit.ensure_indexes()

    use_startup(app, start)

    async def background(_: web.Application) -> AsyncIterator[None]:
        await users.start()
        handovers = drain_forever(
            lambda: members.finish_handovers(rooms, config.outbox_lease_s),
            config.outbox_interval_s, "hand-overs",
        )  # fmt: skip
        # Public posts' announcements their writers did not make (services.rooms.timeline).
        announcements = drain_forever(
            lambda: timeline.announce_due(rooms), config.outbox_interval_s, "announcements"
        )
        tasks = [
            asyncio.create_task(rooms.events.run()), asyncio.create_task(consumer.run()),
            asyncio.create_task(handovers), asyncio.create_task(announcements),
        ]  # fmt: skip
        yield
        await cancel_all(tasks)
        await users.close()

    app.cleanup_ctx.append(background)

    # The mentions consumer (``<prefix>rooms-mentions``) is watched as delivery's and the
    # notifier's are: its lag sampled from the broker, and ``/rooms/readyz`` failing
    # (``consumer``) while it is not running. Before 2026-12-07 it had neither: a stuck
    # consumer (private rooms' mentions never notified) showed nowhere.
    watch_consumers(app, settings, consumer.groups(), consumer.running)
    return app
