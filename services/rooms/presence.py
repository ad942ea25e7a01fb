"""Who of a page of members is online (docs/rooms.md, "Presence").

Online: the user has a live socket on some gateway pod (the presence hash the
gateways keep in Redis, entries younger than ``presence_ttl_s``), and has not
hidden it (``show_presence: false`` in the auth service's preferences, read from
its users collection as the notifier reads ``mention_emails``). A page of ``m``
members costs one Redis pipeline of ``m`` ``HGETALL`` and, when someone is
online, one MongoDB ``$in`` read of the online ones' preference. Nothing is
pushed when someone comes or goes: a client asks again when it shows the list.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from pymongo.asynchronous.collection import AsyncCollection
from redis.exceptions import RedisError

from services.common.config import Settings
from services.common.routing import gateways_of

log = logging.getLogger(__name__)


class Presence:
    def __init__(
        self, redis: aioredis.Redis, settings: Settings, users: AsyncCollection[dict[str, Any]]
    ) -> None:
        self.redis = redis
        self.prefix = settings.redis_prefix
        self.ttl_s = settings.presence_ttl_s
        self.users = users  # the auth service's, read only

    async def online(self, user_ids: Sequence[str]) -> set[str]:
        """The users of ``user_ids`` who are online and show it; nobody when Redis does
        not answer (the member list is served anyway: presence is a hint)."""
        try:
            where = await gateways_of(self.redis, self.prefix, self.ttl_s, user_ids)
        except (RedisError, OSError) as exc:
            log.warning("presence not read", extra={"error": repr(exc)})
            return set()
        live = [u for u, gws in where.items() if gws]
        if not live:
            return set()
        # Truthiness, as the auth service reads it: the embedded server stores 0/1.
        hidden = {
            str(d["_id"])
            async for d in self.users.find(
                {"_id": {"$in": live}, "show_presence": {"$in": [False, 0]}}, {"_id": 1}
            )
        }
        return {u for u in live if u not in hidden}
