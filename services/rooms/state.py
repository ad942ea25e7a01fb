"""The rooms service's shared object and its app key, built once by ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from services.common.audit import AuditLog
from services.common.ratelimit import RateLimiter
from services.rooms.config import RoomsConfig
from services.rooms.events import EventPublisher
from services.rooms.metrics import RoomsMetrics
from services.rooms.presence import Presence
from services.rooms.push import Pusher
from services.rooms.store import RoomStore
from services.rooms.users import Users

if TYPE_CHECKING:
    from services.rooms.room_messages import RoomMessages


@dataclass(frozen=True, slots=True)
class Rooms:
    store: RoomStore
    config: RoomsConfig
    events: EventPublisher
    users: Users
    # Room creation and posting limits: <redis_prefix>:rooms:rl:<create|post>:<hash>.
    limiter: RateLimiter
    metrics: RoomsMetrics
    # Live frames to connected sockets (room_post, notification, room_message_changed,
    # room_changed).
    pusher: Pusher
    # The one audit log of all services (services.common.audit), as the rooms service.
    audit: AuditLog
    # Who of a page of members is online (services/rooms/presence.py).
    presence: Presence


ROOMS: web.AppKey[Rooms] = web.AppKey("rooms", Rooms)
ROOM_MESSAGES: web.AppKey[RoomMessages] = web.AppKey("room_messages")
