"""Does a recipient exist? Asks the auth service, with a small positive cache; an
expired entry still answers while the auth service cannot (docs/gateway.md,
"When MongoDB is down")."""

from __future__ import annotations

import time

import aiohttp

from services.common.config import Settings
from services.common.devices import user_id_of
from services.common.errors import ApiError, ErrorCode

MAX_CACHED = 100_000
STALE_RETRY_S = 10.0
"""An expired entry served while the auth service cannot answer is asked again after this."""


class Directory:
    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        self.base = settings.auth_url.rstrip("/")
        self.ttl = settings.recipient_cache_s
        self.session = session
        self._known: dict[str, tuple[float, str]] = {}

    async def require_user(self, user_id: str, token: str) -> str:
        """The canonical user id of a recipient (the auth service's ``user_id``).

        The look-up also answers to usernames and other spellings; the inbox is
        keyed by what it returns, never by what the client wrote.
        """
        now = time.monotonic()
        seen = self._known.get(user_id)
        if seen is not None and now - seen[0] < self.ttl:
            return seen[1]
        try:
            canonical = await user_id_of(
                self.session, self.base, user_id, token, "Cannot check the recipient now."
            )
        except ApiError as exc:
            if exc.code is ErrorCode.UNAVAILABLE and seen is not None:
                # The auth service (or its MongoDB) is down: an id it once vouched
                # for stays good, and the hot path needs nothing else from it. Asked
                # again in STALE_RETRY_S, not by every send (each ask waits out the
                # service's timeout).
                self._known[user_id] = (now - self.ttl + STALE_RETRY_S, seen[1])
                return seen[1]
            raise
        if canonical is None:
            raise ApiError(ErrorCode.RECIPIENT_NOT_FOUND, "No such recipient.")
        if len(self._known) >= MAX_CACHED:
            self._known.clear()
        self._known[user_id] = (now, canonical)
        return canonical
