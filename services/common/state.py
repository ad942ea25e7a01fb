"""Every ``AppKey`` that ``services/common`` puts on an application, in one leaf module.

``create_app`` and the helpers in :mod:`services.common.deps` store what they
build here; handlers and helpers read it back. This module imports nothing
else from ``services`` at run time (the types below are for the type checker
only), so that ``app``, ``openapi``, ``auth``, ``http`` and ``deps`` can all
use the keys without importing each other.

Each service keeps its own keys in its own ``state.py`` the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from prometheus_client import CollectorRegistry
    from pymongo import AsyncMongoClient
    from pymongo.asynchronous.database import AsyncDatabase

    from services.common.auth import TokenVerifier
    from services.common.clients import KafkaProducerHandle
    from services.common.config import Settings
    from services.common.startup import Startup

# A readiness check: returns when the dependency answers, raises when it does not.
Check = Callable[[], Awaitable[Any]]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# What serves a socket route for the socket's whole life (services.common.app.serve_sockets).
SocketLife = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]

# Set by ``base_app``.
SERVICE: web.AppKey[str] = web.AppKey("service", str)
SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("registry")
CHECKS: web.AppKey[dict[str, Check]] = web.AppKey("checks", dict)
MAX_BODY: web.AppKey[int] = web.AppKey("max_body", int)
SOCKET_LIVES: web.AppKey[dict[Handler, SocketLife]] = web.AppKey("socket_lives", dict)

# Set by the ``use_*`` helpers of services.common.deps.
MONGO: web.AppKey[AsyncMongoClient[dict[str, Any]]] = web.AppKey("mongo")
DB: web.AppKey[AsyncDatabase[dict[str, Any]]] = web.AppKey("db")
REDIS: web.AppKey[aioredis.Redis] = web.AppKey("redis")
KAFKA: web.AppKey[KafkaProducerHandle] = web.AppKey("kafka")
VERIFIER: web.AppKey[TokenVerifier] = web.AppKey("token_verifier")
STARTUP: web.AppKey[Startup] = web.AppKey("startup")
