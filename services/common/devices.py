"""Who is behind a user id or a room, read with the caller's token: device lists from
the key directory, room rosters from the rooms service. The gateway routes a private
room's message with them; delivery sends a removed message's tombstones with them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from services.common.config import Settings
from services.common.errors import ApiError, ErrorCode
from services.common.logging import outgoing_headers

MAX_CACHED = 100_000
MEMBER_PAGE = 500

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


async def member_ids(get: Callable[[str], Awaitable[dict[str, Any]]], path: str) -> list[str]:
    """Every member of a room, once each, in join order: ``path`` is its members route
    (``/rooms/v1/rooms/{id}/members``, or the admins' one), read a page at a time with
    ``get`` (which raises the caller's errors)."""
    members: list[str] = []
    after: Any = None
    while True:
        query = f"?limit={MEMBER_PAGE}" + (f"&after={after}" if after is not None else "")
        page = await get(path + query)
        members.extend(str(m["user_id"]) for m in page.get("members", []))
        after = page.get("next_after")
        if after is None:
            return list(dict.fromkeys(members))


async def rooms_get(session: aiohttp.ClientSession, url: str, token: str) -> dict[str, Any]:
    """GET a rooms service route as the caller: its JSON object, or ``room_not_found``
    (no such room, or one the caller may not see) or ``unavailable``."""
    headers = {"Authorization": f"Bearer {token}", **outgoing_headers()}
    try:
        async with session.get(url, headers=headers) as resp:
            body = await resp.json(content_type=None)
            if resp.status == 200 and isinstance(body, dict):
                return body
            code = (body or {}).get("error", {}).get("code") if isinstance(body, dict) else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        raise ApiError(ErrorCode.UNAVAILABLE, "Cannot read the room now.") from None
    if code == ErrorCode.ROOM_NOT_FOUND.value or resp.status == 404:
        raise ApiError(ErrorCode.ROOM_NOT_FOUND, "No such room.")
    raise ApiError(ErrorCode.UNAVAILABLE, "Cannot read the room now.")
