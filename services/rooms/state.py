"""The rooms service's shared object and its app key, built once by ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from services.common.ratelimit import RateLimiter
from services.rooms.config import RoomsConfig
from services.rooms.events import EventPublisher
from services.rooms.metrics import RoomsMetrics
from services.rooms.store import RoomStore
from services.rooms.users import Users


@dataclass(frozen=True, slots=True)
class Rooms:
    store: RoomStore
    config: RoomsConfig
    events: EventPublisher
    users: Users
    # Room creation and posting limits: <redis_prefix>:rooms:rl:<create|post>:<hash>.
    limiter: RateLimiter
    metrics: RoomsMetrics


ROOMS: web.AppKey[Rooms] = web.AppKey("rooms", Rooms)
