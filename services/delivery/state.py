"""The delivery service's shared objects and their app keys, set by ``create_app``."""

from __future__ import annotations

from aiohttp import web

from services.delivery.handlers import Inbox
from services.delivery.moderation import Moderation
from services.delivery.room_log import RoomLog
from services.delivery.worker import Worker

INBOX: web.AppKey[Inbox] = web.AppKey("inbox", Inbox)
WORKER: web.AppKey[Worker] = web.AppKey("worker", Worker)
MODERATION: web.AppKey[Moderation] = web.AppKey("moderation", Moderation)
ROOM_LOG: web.AppKey[RoomLog] = web.AppKey("room_log", RoomLog)
