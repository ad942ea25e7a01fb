"""Who is ``@bob``? Asks the auth service (``GET /auth/v1/users/{user}``), with a cache.

The look-up answers to a username or a user id, in any case, and returns the
canonical user id; rooms never stores what a client wrote. Found users are
cached for ``user_cache_s``; unknown ones are not cached, so a user who signs
up is mentionable at once. A username changes only when an admin renames its
user (``PATCH /auth/v1/admin/users/{id}``): for up to ``user_cache_s`` after,
``@old`` still names the renamed user in this process, even if someone new
signed up as ``old`` meanwhile (a mention is then made to the renamed user,
whom the writer meant a minute before). Ids never change.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from services.common.config import Settings
from services.common.devices import user_id_of

MAX_CACHED = 100_000


class Users:
    def __init__(self, settings: Settings, ttl_s: float) -> None:
        self.base = settings.auth_url.rstrip("/")
        self.ttl_s = ttl_s
        self.timeout = aiohttp.ClientTimeout(total=max(settings.dependency_timeout_ms, 1000) / 1000)
        self.session: aiohttp.ClientSession | None = None
        self._known: dict[str, tuple[float, str]] = {}

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=self.timeout)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def resolve(self, ref: str, token: str) -> str | None:
        """The user id of a username or id (any case, optional ``@``); None if nobody."""
        key = ref.removeprefix("@").strip().lower()
        now = time.monotonic()
        hit = self._known.get(key)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        assert self.session is not None, "Users.start() was not called"
        user_id = await user_id_of(self.session, self.base, key, token, "Cannot look users up now.")
        if user_id is None:
            return None
        if len(self._known) >= MAX_CACHED:
            self._known.clear()
        self._known[key] = (now, user_id)
        return user_id

    async def resolve_many(self, refs: list[str], token: str) -> dict[str, str]:
        """``{ref: user id}`` for the refs that name someone (looked up concurrently)."""
        ids = await asyncio.gather(*(self.resolve(r, token) for r in refs))
        return {r: u for r, u in zip(refs, ids, strict=True) if u is not None}
