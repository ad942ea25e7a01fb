"""``create_app``: a gateway pod's wiring."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from services.common.app import base_app, serve_sockets
from services.common.auth import use_token_verifier
from services.common.clients import Topics
from services.common.config import Settings
from services.common.deps import use_kafka_producer, use_redis
from services.common.devices import DeviceLists, ListCopies
from services.common.room_gate import RoomGate
from services.common.state import CHECKS, REGISTRY, VERIFIER
from services.gateway.directory import Directory
from services.gateway.hub import Hub
from services.gateway.rooms import RoomMembers
from services.gateway.routes import api, socket_life, websocket
from services.gateway.state import HUB
from services.gateway.store import GatewayStore


async def create_app(settings: Settings) -> web.Application:
    app = base_app("gateway", settings, prefix="/gateway", api=api)
    redis = use_redis(app, settings)
    kafka = use_kafka_producer(app, settings, Topics(settings).all())
    use_token_verifier(app, settings)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        store = GatewayStore(settings, redis, kafka, http)
        devices = DeviceLists(settings, http, ListCopies(redis, settings.redis_prefix))
        hub = Hub(
            store, app[REGISTRY], app[VERIFIER], Directory(settings, http, redis), devices,
            RoomMembers(settings, http, devices, RoomGate(redis, settings.redis_prefix)),
        )  # fmt: skip
        app[HUB] = hub

        async def subscribed() -> None:
            # A pod off its Redis channel pushes nothing it is routed (a Redis restart:
            # until it has subscribed again and re-recorded presence), so it is not
            # ready: new sockets go to a pod that is.
            if not hub.subscribed.is_set():
                raise ConnectionError("not subscribed to its Redis channel")

        app[CHECKS]["channel"] = subscribed
        await hub.start()
        yield
        await hub.stop()
        await http.close()

    async def drain(app: web.Application) -> None:
        await app[HUB].drain()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(drain)
    # The same socket as /gateway/ws (documented there): the address clients use.
    app.router.add_get("/ws", websocket)
    serve_sockets(app, websocket, socket_life)
    return app
