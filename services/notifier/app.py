"""``create_app``: the notifier's wiring (no API of its own: health, readiness, metrics)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from services.common.app import base_app
from services.common.clients import service_db
from services.common.config import Settings
from services.common.consumer_lag import watch_consumers
from services.common.deps import use_mongo, use_redis, use_startup
from services.common.state import MONGO, REGISTRY
from services.notifier.metrics import NotifierMetrics
from services.notifier.state import NOTIFIER
from services.notifier.store import NotifierStore
from services.notifier.worker import Notifier


async def create_app(settings: Settings, *, run_worker: bool = True) -> web.Application:
    app = base_app("notifier", settings, prefix="/notifier")
    db = use_mongo(app, settings, "notifier")
    # The auth service's users, read only: e-mail addresses and the preference.
    auth_db = service_db(app[MONGO], settings, "auth")
    # The rooms service's messages, read only: a mention's message removed since is not
    # mailed (docs/notifier.md, "Removed messages").
    rooms_db = service_db(app[MONGO], settings, "rooms")
    redis = use_redis(app, settings)
    store = NotifierStore(db, auth_db, rooms_db)
    notifier = Notifier(settings, store, redis, NotifierMetrics(app[REGISTRY]))
    app[NOTIFIER] = notifier

    async def stop_worker(_: web.Application) -> AsyncIterator[None]:
        yield
        await notifier.stop()

    app.cleanup_ctx.append(stop_worker)

    async def start() -> None:
        await store.ensure_indexes()
        if run_worker:
            await notifier.start()

    use_startup(app, start)

    if run_worker:
        watch_consumers(app, settings, notifier.groups(), notifier.consuming, "kafka")
    return app
