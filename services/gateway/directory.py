"""Does a recipient exist? Asks the auth service, with a small positive cache."""

from __future__ import annotations

import time

import aiohttp

from services.common.config import Settings
from services.common.errors import ApiError, ErrorCode
from services.common.logging import outgoing_headers

MAX_CACHED = 100_000


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
        headers = {"Authorization": f"Bearer {token}", **outgoing_headers()}
        try:
            async with self.session.get(
                f"{self.base}/auth/v1/users/{user_id}", headers=headers
            ) as resp:
                if resp.status == 404:
                    raise ApiError(ErrorCode.RECIPIENT_NOT_FOUND, "No such recipient.")
                if resp.status != 200:
                    raise ApiError(ErrorCode.UNAVAILABLE, "Cannot check the recipient now.")
                body = await resp.json()
                canonical = str(body["user_id"])
        except (aiohttp.ClientError, TimeoutError, KeyError, TypeError, ValueError):
            raise ApiError(ErrorCode.UNAVAILABLE, "Cannot check the recipient now.") from None
        if len(self._known) >= MAX_CACHED:
            self._known.clear()
        self._known[user_id] = (now, canonical)
        return canonical


DEVICE_LIST_TTL_S = 300.0


class DeviceLists:
    """Each user's current device ids, from the key directory, cached.

    A cached list is forgotten when the key directory announces a change
    (``devices_changed`` on the broadcast channel, see :class:`Hub`), all of
    them when the pod lost that channel for a while (a notice may be gone),
    and after ``DEVICE_LIST_TTL_S`` in any case. A 1:1 send that disagrees
    with a cached list asks again before refusing, so a stale cache never
    refuses a good send. A private room's fan-out reads the lists of all its
    members (a thousand look-ups for a room of a thousand): with a TTL of
    seconds the key directory would serve them again and again.
    """

    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        self.base = settings.keys_url.rstrip("/")
        self.session = session
        self._cache: dict[str, tuple[float, frozenset[int]]] = {}

    def forget(self, user_id: str) -> None:
        self._cache.pop(user_id, None)

    def clear(self) -> None:
        self._cache.clear()

    def peek(self, user_id: str) -> frozenset[int] | None:
        """The cached list, if it is still fresh (no I/O)."""
        hit = self._cache.get(user_id)
        if hit is not None and time.monotonic() - hit[0] < DEVICE_LIST_TTL_S:
            return hit[1]
        return None

    async def get(self, user_id: str, token: str, *, fresh: bool = False) -> frozenset[int]:
        now = time.monotonic()
        hit = self._cache.get(user_id)
        if hit is not None and not fresh and now - hit[0] < DEVICE_LIST_TTL_S:
            return hit[1]
        headers = {"Authorization": f"Bearer {token}", **outgoing_headers()}
        try:
            async with self.session.get(
                f"{self.base}/keys/v1/users/{user_id}/devices", headers=headers
            ) as resp:
                if resp.status == 404:
                    devices: frozenset[int] = frozenset()
                elif resp.status != 200:
                    raise ApiError(ErrorCode.UNAVAILABLE, "Cannot read the device list now.")
                else:
                    body = await resp.json()
                    devices = frozenset(int(d["device_id"]) for d in body["devices"])
        except (aiohttp.ClientError, TimeoutError, KeyError, TypeError, ValueError):
            raise ApiError(ErrorCode.UNAVAILABLE, "Cannot read the device list now.") from None
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[user_id] = (now, devices)
        return devices
