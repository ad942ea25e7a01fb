"""Who is behind a user id or a room, read with the caller's token: device lists from
the key directory, room rosters from the rooms service. The gateway routes a private
room's message with them; delivery sends a removed message's tombstones with them.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import aiohttp
import redis.asyncio as aioredis

from services.common import scripts
from services.common.batched import Batched, TokenRefused
from services.common.config import Settings
from services.common.errors import ApiError, ErrorCode
from services.common.logging import outgoing_headers
from services.common.stale import STALE_RETRY_S, StaleWhileDown

MEMBER_PAGE = 500

T = TypeVar("T")

DEVICE_LIST_TTL_S = 300.0
LISTS_PER_REQUEST = 200
"""Device lists read in one request to the key directory (it takes up to 1,000)."""
LISTED_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""A user id the key directory's bulk read takes (others are read one at a time)."""
COPY_TTL_S = 7 * 86_400
"""How long the key directory's copy of a device list in Redis outlives its last write."""

# The key directory's copy of a user's device list, for the gateways to read while it
# cannot answer (docs/gateway.md, "When MongoDB is down"): written with the account's
# generation, which every write of the list raises, and never over a newer one (a
# read that raced a change cannot put the older list back). KEYS[1] the copy; ARGV
# the generation, the device ids ("1,2"), the TTL in seconds.
_COPY_LIST = """
local have = redis.call('HGET', KEYS[1], 'gen')
if have and tonumber(have) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'gen', ARGV[1], 'devices', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


def list_copy_key(redis_prefix: str, user_id: str) -> str:
    return f"{redis_prefix}:devlist:{{{user_id}}}"


class ListCopies:
    """The device lists' copies in Redis: the key directory writes, gateways read."""

    def __init__(self, redis: aioredis.Redis, redis_prefix: str) -> None:
        self.redis = redis
        self.prefix = redis_prefix
        self._write = scripts.register(redis, _COPY_LIST)

    async def write(self, user_id: str, generation: int, devices: Iterable[int]) -> None:
        listed = ",".join(str(d) for d in sorted(devices))
        await self._write([list_copy_key(self.prefix, user_id)], [generation, listed, COPY_TTL_S])

    async def write_many(self, lists: Iterable[tuple[str, int, Iterable[int]]]) -> None:
        """:meth:`write` of many users' lists ``(user id, generation, device ids)``, in one
        round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for user_id, generation, devices in lists:
                listed = ",".join(str(d) for d in sorted(devices))
                args = [generation, listed, COPY_TTL_S]
                await scripts.queue(pipe, self._write, [list_copy_key(self.prefix, user_id)], args)
            await pipe.execute()

    async def read(self, user_id: str) -> frozenset[int] | None:
        """The copy, or None (none, or Redis did not answer either)."""
        try:
            raw = await self.redis.hget(list_copy_key(self.prefix, user_id), "devices")
        except aioredis.RedisError:
            return None
        if raw is None:
            return None
        return frozenset(int(d) for d in scripts.text(raw).split(",") if d)


class DeviceLists:
    """Each user's current device ids, from the key directory, cached.

    A cached list is forgotten when the key directory announces a change
    (``devices_changed`` on the broadcast channel, see :class:`Hub`), all of
    them when the pod lost that channel for a while (a notice may be gone),
    and after ``DEVICE_LIST_TTL_S`` in any case (but an expired list still answers
    while the key directory cannot, unless ``fresh`` is asked: :class:`StaleWhileDown`).
    A list read while its user's notice came (the read on its way when the list
    changed) answers the callers that asked before, and is not cached: the next
    caller asks again (cached, it would have routed past the new device until the
    TTL). A 1:1 send that disagrees with a cached list asks again before refusing, so a
    stale cache never refuses a good send. A private room's fan-out reads the lists
    of all its members (a thousand look-ups for a room of a thousand): with a TTL of
    seconds the key directory would serve them again and again.
    """

    def __init__(
        self,
        settings: Settings,
        session: aiohttp.ClientSession,
        copies: ListCopies | None = None,
    ) -> None:
        self.base = settings.keys_url.rstrip("/")
        self.session = session
        self._cache = StaleWhileDown[frozenset[int]](DEVICE_LIST_TTL_S, STALE_RETRY_S)
        self._lists = Batched[frozenset[int]](self._read_many, LISTS_PER_REQUEST)
        self._copies = copies
        # What was forgotten while reads were on their way (those reads do not cache
        # it): changes are numbered; a read caches only users not forgotten after the
        # number it started at. Kept only while a read that started before is on its way.
        self._changes = 0
        self._reads: dict[int, int] = {}  # reads on their way by the number they started at
        self._changed: dict[str, int] = {}  # user id: the last change number
        self._cleared = 0  # the last clear's number

    def forget(self, user_id: str) -> None:
        self._cache.forget(user_id)
        self._lists.forget(user_id)
        self._changes += 1
        if self._reads:
            self._changed[user_id] = self._changes

    def clear(self) -> None:
        self._cache.clear()
        self._lists.forget_all()
        self._changes += 1
        self._cleared = self._changes

    def peek(self, user_id: str) -> frozenset[int] | None:
        """The cached list, if it is still fresh (no I/O)."""
        return self._cache.get(user_id, time.monotonic())

    async def get(self, user_id: str, token: str, *, fresh: bool = False) -> frozenset[int]:
        now = time.monotonic()
        if not fresh:
            hit = self._cache.get(user_id, now)
            if hit is not None:
                return hit
            # The key directory did not answer an ask less than STALE_RETRY_S ago: the
            # list read before, or the key directory's copy.
            hit = self._cache.down(now, user_id)
            if hit is None and self._cache.is_down(now):
                hit = await self._copy(user_id, now)
            if hit is not None:
                return hit
            return await self._read(user_id, token, now, False)
        return await self._read(user_id, token, now, True)

    async def get_many(
        self, user_ids: Sequence[str], token: str, *, fresh: bool = False
    ) -> list[frozenset[int]]:
        """Each user's list, in order (a private room's members): cached ones without a
        task each; the others asked all at once, so that they go in bulk requests of
        ``LISTS_PER_REQUEST`` (a thousand members: five requests, not a thousand)."""
        lists = [None if fresh else self.peek(u) for u in user_ids]
        missing = [i for i, devices in enumerate(lists) if devices is None]
        if missing:
            found = await asyncio.gather(
                *(self.get(user_ids[i], token, fresh=fresh) for i in missing)
            )
            for i, devices in zip(missing, found, strict=True):
                lists[i] = devices
        return [devices or frozenset() for devices in lists]

    async def _read(self, user_id: str, token: str, now: float, fresh: bool) -> frozenset[int]:
        """Ask the key directory, in bulk with other reads (:class:`Batched`: one ask per
        user on its way; a ``fresh`` one, sent after it was asked)."""
        unavailable = "Cannot read the device list now."
        try:
            if LISTED_ID.fullmatch(user_id):
                # With others (batched.py); a fresh read, from a request sent after it.
                devices = await self._lists.ask(user_id, token, fresh=fresh)
            else:
                devices = await self._read_one(user_id, token, unavailable)
        except ApiError as exc:
            # The key directory (or its MongoDB) is down: no device can be linked or
            # removed meanwhile, so the last list read is still the list.
            hit = None if fresh else self._cache.stale(user_id, now, exc)
            if hit is None and not fresh and self._cache.is_down(now):
                hit = await self._copy(user_id, now)
            if hit is None:
                raise
            return hit
        return devices  # cached by the read itself (_read_one, _read_many)

    async def _read_one(self, user_id: str, token: str, unavailable: str) -> frozenset[int]:
        """One user's device ids (``GET /keys/v1/users/{id}/devices``); none without an
        account key (404)."""
        url = f"{self.base}/keys/v1/users/{user_id}/devices"
        since = self._begin()
        try:
            status, body = await call_as(self.session, url, token, unavailable)
            devices = (
                frozenset()
                if status == 404
                else read_answer(status, body, unavailable, _device_ids)
            )
            self._keep({user_id: devices}, since)
        finally:
            self._end(since)
        return devices

    async def _read_many(self, user_ids: Sequence[str], token: str) -> dict[str, frozenset[int]]:
        """Many users' device ids (``POST /keys/v1/users/device-lists``): none for a user
        without an account key (``missing``), as :meth:`_read_one`."""
        unavailable = "Cannot read the device lists now."
        url = f"{self.base}/keys/v1/users/device-lists"
        since = self._begin()
        try:
            status, body = await call_as(
                self.session, url, token, unavailable, json={"user_ids": list(user_ids)}
            )
            found = read_answer(
                status, body, unavailable,
                lambda b: {str(u["user_id"]): _device_ids(u["device_list"]) for u in b["lists"]},
            )  # fmt: skip
            answer = {u: found.get(u, frozenset()) for u in user_ids}
            # Cached here, before the request is off its way (batched.py): a caller that
            # comes between that and its waiters' turn finds it (it used to ask again).
            self._keep(answer, since)
        finally:
            self._end(since)
        return answer

    def _begin(self) -> int:
        """A read to the key directory starts: the change number it starts at."""
        since = self._changes
        self._reads[since] = self._reads.get(since, 0) + 1
        return since

    def _keep(self, lists: dict[str, frozenset[int]], since: int) -> None:
        """Cache the lists a read that started at change ``since`` got, but those forgotten
        since (a notice came while it was on its way: they may be the old lists)."""
        self._cache.answered()
        if self._cleared > since:
            return
        now = time.monotonic()
        for user_id, devices in lists.items():
            if self._changed.get(user_id, 0) <= since:
                self._cache.put(user_id, now, devices)

    def _end(self, since: int) -> None:
        """A read that started at change ``since`` is back: what no read on its way
        started before is forgotten (on a busy pod reads are always on their way)."""
        left = self._reads[since] - 1
        if left:
            self._reads[since] = left
            return
        del self._reads[since]
        if not self._reads:
            self._changed.clear()
        elif since < (oldest := min(self._reads)):
            self._changed = {u: n for u, n in self._changed.items() if n > oldest}

    async def _copy(self, user_id: str, now: float) -> frozenset[int] | None:
        """The key directory's copy in Redis (a list this pod never read), if any."""
        if self._copies is None:
            return None
        return await self._cache.from_copy(user_id, now, self._copies.read)


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
    status, body = await call_as(session, url, token, "Cannot read the room now.")
    if status == 200 and isinstance(body, dict):
        return body
    code = body.get("error", {}).get("code") if isinstance(body, dict) else None
    if code == ErrorCode.ROOM_NOT_FOUND.value or status == 404:
        raise ApiError(ErrorCode.ROOM_NOT_FOUND, "No such room.")
    raise ApiError(ErrorCode.UNAVAILABLE, "Cannot read the room now.")


async def user_id_of(
    session: aiohttp.ClientSession, auth_url: str, ref: str, token: str, unavailable: str
) -> str | None:
    """The canonical user id the auth service gives for ``ref`` (a user id or a username,
    any case), None when nobody has it, ``unavailable`` when it cannot be asked."""
    status, body = await call_as(session, f"{auth_url}/auth/v1/users/{ref}", token, unavailable)
    if status == 404:
        return None
    if status == 200 and isinstance(body, dict) and isinstance(body.get("user_id"), str):
        return str(body["user_id"])
    raise ApiError(ErrorCode.UNAVAILABLE, unavailable)


def _device_ids(listed: Any) -> frozenset[int]:
    """The device ids of a device list as the key directory answers it."""
    return frozenset(int(d["device_id"]) for d in listed["devices"])


def read_answer(status: int, body: Any, unavailable: str, read: Callable[[Any], T]) -> T:
    """``read(body)`` of a 200 answer; any other status, or a body ``read`` cannot make
    sense of, is ``unavailable`` (the other service is not answering as it should)."""
    if status == 401:
        # The caller's token (logged out, blocked, run out meanwhile), not the service.
        raise TokenRefused(unavailable)
    if status != 200:
        raise ApiError(ErrorCode.UNAVAILABLE, unavailable)
    try:
        return read(body)
    except (KeyError, TypeError, ValueError):
        raise ApiError(ErrorCode.UNAVAILABLE, unavailable) from None


async def call_as(
    session: aiohttp.ClientSession, url: str, token: str, unavailable: str, json: Any = None
) -> tuple[int, Any]:
    """GET ``url`` as the caller (with their token), or POST ``json`` to it when given:
    the status and the JSON body (None when the body is not JSON); ``unavailable`` when
    the service does not answer."""
    headers = {"Authorization": f"Bearer {token}", **outgoing_headers()}
    try:
        method = "GET" if json is None else "POST"
        async with session.request(method, url, headers=headers, json=json) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = None
            return resp.status, body
    except (aiohttp.ClientError, TimeoutError):
        raise ApiError(ErrorCode.UNAVAILABLE, unavailable) from None
