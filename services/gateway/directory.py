"""Does a recipient exist? Asks the auth service, with a small positive cache; an
expired entry still answers while the auth service cannot (docs/gateway.md,
"When MongoDB is down"; the rule is :class:`StaleWhileDown`'s)."""

from __future__ import annotations

import time

import aiohttp

from services.common.config import Settings
from services.common.devices import user_id_of
from services.common.errors import ApiError, ErrorCode
from services.common.stale import STALE_RETRY_S, StaleWhileDown


class Directory:
    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        self.base = settings.auth_url.rstrip("/")
        self.session = session
        self._known = StaleWhileDown[str](settings.recipient_cache_s, STALE_RETRY_S)

    async def require_user(self, user_id: str, token: str) -> str:
        """The canonical user id of a recipient (the auth service's ``user_id``).

        The look-up also answers to usernames and other spellings; the inbox is
        keyed by what it returns, never by what the client wrote.
        """
        now = time.monotonic()
        # Fresh, or the auth service did not answer an ask less than STALE_RETRY_S ago.
        known = self._known.get(user_id, now) or self._known.down(now, user_id)
        if known is not None:
            return known
        unavailable = "Cannot check the recipient now."
        try:
            canonical = await user_id_of(self.session, self.base, user_id, token, unavailable)
        except ApiError as exc:
            # The auth service (or its MongoDB) is down: an id it once vouched for
            # stays good, and the hot path needs nothing else from it.
            known = self._known.stale(user_id, now, exc)
            if known is None:
                raise
            return known
        if canonical is None:
            raise ApiError(ErrorCode.RECIPIENT_NOT_FOUND, "No such recipient.")
        self._known.put(user_id, now, canonical)
        return canonical
