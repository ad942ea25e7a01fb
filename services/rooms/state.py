"""The rooms service's shared object and its app key, built once by ``create_app``."""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field
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


class KeyedLocks:
    """One :class:`asyncio.Lock` per key, kept while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def __call__(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock


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
    # A user's notifications written by this process one at a time (notifications._write):
    # many at once would each race the others for the same numbers.
    notifying: KeyedLocks = field(default_factory=KeyedLocks)


ROOMS: web.AppKey[Rooms] = web.AppKey("rooms", Rooms)
ROOM_MESSAGES: web.AppKey[RoomMessages] = web.AppKey("room_messages")
