"""Who of a page of members is online (docs/rooms.md, "Presence").

Online: the user has a live socket on some gateway pod (the presence hash the
gateways keep in Redis, entries younger than ``presence_ttl_s``), and has not
hidden it (``show_presence: false`` in the auth service's preferences, read from
its users collection as the notifier reads ``mention_emails``). A page of ``m``
members costs one Redis pipeline of ``m`` ``HGETALL`` and, side by side, one
MongoDB ``$in`` read of their usernames and preference (the member list
carries the names, so a client asks none of them one by one). Nothing is
pushed when someone comes or goes: a client asks again when it shows the list.
"""

from __future__ import annotations

import asyncio
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
        # As the pusher's bound (services/rooms/push.py): a stalled Redis costs a post
        # this long, not the client's retries (~50 s: a mention's post then met the load
        # balancer's timeout, a 504 for a stored post).
        self.timeout_s = max(settings.dependency_timeout_ms / 1000, 1.0)
        self.users = users  # the auth service's, read only

    async def facts(self, user_ids: Sequence[str]) -> tuple[dict[str, str], set[str]]:
        """The usernames of ``user_ids`` (those the auth service still has) and who of
        them is online and shows it: one MongoDB read and one Redis pipeline, side by
        side (a client then asks no name of a member list's users one by one). Nobody
        is online when Redis does not answer: the list is served anyway."""
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return {}, set()

        async def users() -> dict[str, Any]:
            cursor = self.users.find({"_id": {"$in": ids}}, {"username": 1, "show_presence": 1})
            return {str(d["_id"]): d async for d in cursor}

        docs, live = await asyncio.gather(users(), self.live(ids))
        names = {u: str(d["username"]) for u, d in docs.items() if d.get("username")}
        # Truthiness, as the auth service reads it: the embedded server stores 0/1.
        shown = {u for u in live if bool((docs.get(u) or {}).get("show_presence", True))}
        return names, shown

    async def live(self, user_ids: Sequence[str]) -> set[str]:
        """Who of ``user_ids`` has a connected device now (hidden or not); nobody when
        Redis does not answer."""
        try:
            where = await asyncio.wait_for(
                gateways_of(self.redis, self.prefix, self.ttl_s, user_ids), self.timeout_s
            )
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("presence not read", extra={"error": repr(exc)})
            return set()
        return {u for u, gws in where.items() if gws}
