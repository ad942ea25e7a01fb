"""Does a recipient exist? Asks the auth service, with a small positive cache; an
expired entry still answers while the auth service cannot (docs/gateway.md,
"When MongoDB is down"; the rule is :class:`StaleWhileDown`'s).

A user id the auth service vouched for is also noted in Redis (``<p>:known:{<id>}``,
for ``KNOWN_TTL_S``), so that a pod that never looked it up (started, or reached by
a reconnecting socket, during the outage) can still route to it. Only a canonical id
is noted (it never changes hands); a username's owner is asked for every time.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

import aiohttp
import redis.asyncio as aioredis

from services.common.batched import Batched
from services.common.config import Settings
from services.common.devices import COPY_TTL_S, call_as, read_answer, user_id_of
from services.common.errors import ApiError, ErrorCode
from services.common.stale import STALE_RETRY_S, StaleWhileDown

KNOWN_TTL_S = COPY_TTL_S
LOOKUPS_PER_REQUEST = 200
"""Recipients checked in one request to the auth service (it takes up to 1,000)."""
CANONICAL = re.compile(r"[0-9a-f]{32}")
"""A user id as the auth service makes them (other spellings are asked one at a time)."""


class Directory:
    def __init__(
        self,
        settings: Settings,
        session: aiohttp.ClientSession,
        redis: aioredis.Redis | None = None,
    ) -> None:
        self.base = settings.auth_url.rstrip("/")
        self.session = session
        self.redis = redis
        self.prefix = settings.redis_prefix
        self._known = StaleWhileDown[str](settings.recipient_cache_s, STALE_RETRY_S)
        self._ids = Batched[str | None](self._lookup, LOOKUPS_PER_REQUEST)

    def _key(self, user_id: str) -> str:
        return f"{self.prefix}:known:{{{user_id}}}"

    async def require_user(self, user_id: str, token: str) -> str:
        """The canonical user id of a recipient (the auth service's ``user_id``).

        The look-up also answers to usernames and other spellings; the inbox is
        keyed by what it returns, never by what the client wrote.
        """
        now = time.monotonic()
        # Fresh, or the auth service did not answer an ask less than STALE_RETRY_S ago.
        known = self._known.get(user_id, now) or self._known.down(now, user_id)
        if known is None and self._known.is_down(now):
            known = await self._known.from_copy(user_id, now, self._noted)
        if known is not None:
            return known
        return await self._ask(user_id, token, now)

    async def _ask(self, user_id: str, token: str, now: float) -> str:
        """Ask the auth service: a canonical id with the others being asked (one ask per
        id on its way, :class:`~services.common.batched.Batched`), another spelling alone."""
        unavailable = "Cannot check the recipient now."
        try:
            if CANONICAL.fullmatch(user_id):
                # With others (batched.py); known from the answer on (_lookup).
                canonical = await self._ids.ask(user_id, token)
            else:
                canonical = await user_id_of(self.session, self.base, user_id, token, unavailable)
                if canonical is not None:
                    self._known.put(user_id, now, canonical)
        except ApiError as exc:
            # The auth service (or its MongoDB) is down: an id it once vouched for
            # stays good, and the hot path needs nothing else from it.
            known = self._known.stale(user_id, now, exc)
            if known is None and self._known.is_down(now):
                known = await self._known.from_copy(user_id, now, self._noted)
            if known is None:
                raise
            return known
        if canonical is None:
            raise ApiError(ErrorCode.RECIPIENT_NOT_FOUND, "No such recipient.")
        if canonical == user_id and self.redis is not None:
            try:
                await self.redis.set(self._key(user_id), 1, ex=KNOWN_TTL_S)
            except aioredis.RedisError:
                pass  # only the note for other pods is lost
        return canonical

    async def _lookup(self, user_ids: Sequence[str], token: str) -> dict[str, str | None]:
        """Which of these canonical ids exist (``POST /auth/v1/lookup``): each id,
        or None for an id nobody has."""
        unavailable = "Cannot check the recipient now."
        url = f"{self.base}/auth/v1/lookup"
        status, body = await call_as(
            self.session, url, token, unavailable, json={"user_ids": list(user_ids)}
        )
        found = read_answer(
            status, body, unavailable, lambda b: {str(u["user_id"]) for u in b["users"]}
        )
        # Known here, before the request is off its way (batched.py): a caller that
        # comes between that and its waiters' turn finds it (it used to ask again).
        now = time.monotonic()
        for user_id in found & set(user_ids):
            self._known.put(user_id, now, user_id)
        return {u: (u if u in found else None) for u in user_ids}

    async def _noted(self, user_id: str) -> str | None:
        """``user_id`` if a pod noted the auth service vouching for it."""
        if self.redis is None:
            return None
        try:
            return user_id if await self.redis.exists(self._key(user_id)) else None
        except aioredis.RedisError:
            return None
