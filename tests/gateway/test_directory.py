"""The gateway's look-ups of recipients and device lists when the auth service or the
key directory cannot answer (their MongoDB is down): an entry read before, even an
expired one, still answers; nothing read before is ``unavailable``."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from services.common import devices as dev
from services.common.clients import redis_client
from services.common.config import Settings
from services.common.errors import ApiError, ErrorCode
from services.gateway import directory as dirs
from services.gateway.directory import Directory
from tests.conftest import ClientFactory


class Upstream:
    """The auth and keys routes the gateway asks, answering 503 while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.calls = 0
        self.devices = [1, 2]
        self.list_requests: list[int] = []  # the size of each bulk device-list read
        # Set: device-list answers wait for it (made before, with the list as it was).
        self.hold: asyncio.Event | None = None
        self.held = asyncio.Event()  # a device-list answer is waiting for ``hold``
        self.app = web.Application()
        self.app.router.add_get("/auth/v1/users/{ref}", self.user)
        self.app.router.add_get("/keys/v1/users/{ref}/devices", self.device_list)
        # The bulk routes the gateway asks for ids (services/common/batched.py).
        self.app.router.add_post("/auth/v1/lookup", self.users)
        self.app.router.add_post("/keys/v1/users/device-lists", self.device_lists)

    async def user(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.down:
            return web.json_response({"error": {"code": "unavailable"}}, status=503)
        ref = request.match_info["ref"]
        if ref == "nobody":
            return web.json_response({"error": {"code": "user_not_found"}}, status=404)
        return web.json_response({"user_id": ref.lower()})

    async def users(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.down:
            return web.json_response({"error": {"code": "unavailable"}}, status=503)
        ids = (await request.json())["user_ids"]
        return web.json_response({"users": [{"user_id": u, "username": u} for u in ids]})

    async def device_lists(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.down:
            return web.json_response({"error": {"code": "unavailable"}}, status=503)
        ids = (await request.json())["user_ids"]
        self.list_requests.append(len(ids))
        devices = [{"device_id": d} for d in self.devices]
        lists = [{"user_id": u, "device_list": {"devices": devices}} for u in ids]
        await self._held()
        return web.json_response({"lists": lists, "missing": []})

    async def _held(self) -> None:
        if self.hold is not None:
            self.held.set()
            await self.hold.wait()

    async def device_list(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.down:
            return web.json_response({"error": {"code": "unavailable"}}, status=503)
        answer = {"devices": [{"device_id": d} for d in self.devices]}
        await self._held()
        return web.json_response(answer)


@pytest.fixture
async def upstream(
    make_client: ClientFactory, settings: Settings
) -> tuple[Upstream, Settings, aiohttp.ClientSession]:
    up = Upstream()
    client = await make_client(up.app)
    base = str(client.make_url("")).rstrip("/")
    s = settings.model_copy(update={"auth_url": base, "keys_url": base, "recipient_cache_s": 0})
    return up, s, client.session


async def test_a_recipient_seen_before_is_still_known_while_auth_is_down(
    upstream: tuple[Upstream, Settings, aiohttp.ClientSession],
) -> None:
    up, settings, session = upstream
    directory = Directory(settings, session)
    assert await directory.require_user("Alice", "t") == "alice"
    up.down = True
    # Expired (a zero TTL) and the service down: the id it vouched for still answers.
    assert await directory.require_user("Alice", "t") == "alice"
    assert up.calls == 2  # it did ask first
    # ... and not again by the next send (each ask waits out the service's timeout).
    assert await directory.require_user("Alice", "t") == "alice"
    assert up.calls == 2
    with pytest.raises(ApiError) as exc:
        await directory.require_user("bob", "t")  # never seen: cannot be checked
    assert exc.value.code is ErrorCode.UNAVAILABLE
    up.down = False
    with pytest.raises(ApiError) as exc:
        await directory.require_user("nobody", "t")
    assert exc.value.code is ErrorCode.RECIPIENT_NOT_FOUND


async def test_a_device_list_read_before_answers_while_the_key_directory_is_down(
    upstream: tuple[Upstream, Settings, aiohttp.ClientSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    up, settings, session = upstream
    monkeypatch.setattr(dev, "DEVICE_LIST_TTL_S", 0.0)
    lists = dev.DeviceLists(settings, session)
    assert await lists.get("alice", "t") == {1, 2}
    up.down, up.devices = True, [1, 2, 3]
    assert await lists.get("alice", "t") == {1, 2}
    calls = up.calls
    assert await lists.get("alice", "t") == {1, 2}  # not asked again at once
    assert up.calls == calls
    # A fresh read (asked before refusing a send) is never served from the cache.
    with pytest.raises(ApiError) as exc:
        await lists.get("alice", "t", fresh=True)
    assert exc.value.code is ErrorCode.UNAVAILABLE
    with pytest.raises(ApiError):
        await lists.get("bob", "t")


async def test_once_the_key_directory_is_back_the_list_is_read_again(
    upstream: tuple[Upstream, Settings, aiohttp.ClientSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    up, settings, session = upstream
    monkeypatch.setattr(dev, "DEVICE_LIST_TTL_S", 0.0)
    monkeypatch.setattr(dev, "STALE_RETRY_S", 0.0)  # asked again at the next send
    monkeypatch.setattr(dirs, "STALE_RETRY_S", 0.0)
    lists, directory = dev.DeviceLists(settings, session), Directory(settings, session)
    assert await lists.get("alice", "t") == {1, 2}
    assert await directory.require_user("Alice", "t") == "alice"
    up.down, up.devices = True, [1, 2, 3]
    assert await lists.get("alice", "t") == {1, 2}
    assert await directory.require_user("Alice", "t") == "alice"
    up.down = False
    calls = up.calls
    assert await lists.get("alice", "t") == {1, 2, 3}
    assert await directory.require_user("Alice", "t") == "alice"
    assert up.calls == calls + 2


async def test_while_a_service_is_down_expired_entries_answer_without_asking(
    upstream: tuple[Upstream, Settings, aiohttp.ClientSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each ask waits out the service's timeout while its MongoDB does not answer: after
    one failed ask, the other expired recipients and lists answer without an ask
    (until STALE_RETRY_S passed or an ask succeeded); what has nothing to answer with
    (never read, or a fresh read) is still asked, and refused."""
    up, settings, session = upstream
    monkeypatch.setattr(dev, "DEVICE_LIST_TTL_S", 0.0)
    directory, lists = Directory(settings, session), dev.DeviceLists(settings, session)
    for user in ("alice", "bob"):
        assert await directory.require_user(user, "t") == user
        assert await lists.get(user, "t") == {1, 2}
    up.down = True
    calls = up.calls
    assert await directory.require_user("alice", "t") == "alice"  # asked: failed
    assert await lists.get("alice", "t") == {1, 2}  # asked: failed
    assert up.calls == calls + 2
    assert await directory.require_user("bob", "t") == "bob"
    assert await lists.get("bob", "t") == {1, 2}
    assert up.calls == calls + 2  # not asked
    for refused in (directory.require_user("carol", "t"), lists.get("carol", "t"),
                    lists.get("bob", "t", fresh=True)):  # fmt: skip
        with pytest.raises(ApiError) as exc:
            await refused
        assert exc.value.code is ErrorCode.UNAVAILABLE
    assert up.calls == calls + 5
    # Back: the first answer ends it, and the expired entries are read again.
    up.down, up.devices = False, [1, 2, 3]
    assert await directory.require_user("carol", "t") == "carol"
    assert await lists.get("carol", "t") == {1, 2, 3}
    assert await lists.get("bob", "t") == {1, 2, 3}


async def test_a_pod_that_never_read_a_recipient_routes_to_it_from_the_copies_in_redis(
    upstream: tuple[Upstream, Settings, aiohttp.ClientSession],
) -> None:
    """A pod started (or reached by a reconnecting socket) while auth and keys cannot
    answer has nothing to serve stale: it reads what another pod noted (a user id the
    auth service vouched for) and the key directory's copy of the device list."""
    up, settings, session = upstream
    redis = redis_client(settings)
    try:
        copies = dev.ListCopies(redis, settings.redis_prefix)
        one = Directory(settings, session, redis), dev.DeviceLists(settings, session, copies)
        two = Directory(settings, session, redis), dev.DeviceLists(settings, session, copies)
        assert await one[0].require_user("alice", "t") == "alice"
        assert await one[0].require_user("Bob", "t") == "bob"  # a spelling: not noted
        await copies.write("alice", 4, [1, 2])  # what the key directory keeps
        up.down = True
        calls = up.calls
        assert await two[0].require_user("alice", "t") == "alice"  # asked: failed
        assert await two[1].get("alice", "t") == {1, 2}  # asked: failed
        assert up.calls == calls + 2
        # Kept like an entry served stale: not asked again, not read again.
        assert await two[0].require_user("alice", "t") == "alice"
        assert await two[1].get("alice", "t") == {1, 2}
        assert up.calls == calls + 2
        for refused in (two[0].require_user("Bob", "t"), two[0].require_user("carol", "t"),
                        two[1].get("carol", "t"), two[1].get("alice", "t", fresh=True)):  # fmt: skip
            with pytest.raises(ApiError) as exc:
                await refused
            assert exc.value.code is ErrorCode.UNAVAILABLE
        # Back: what was never read (and a fresh read) is asked, and what it says wins.
        up.down, up.devices = False, [1, 2, 3]
        assert await two[0].require_user("Bob", "t") == "bob"
        assert await two[1].get("alice", "t", fresh=True) == {1, 2, 3}
        assert await two[1].get("alice", "t") == {1, 2, 3}
    finally:
        await redis.aclose()


@pytest.mark.parametrize("fresh", [False, True])
async def test_a_rooms_member_lists_are_read_in_a_few_bulk_requests(
    upstream: tuple[Upstream, Settings, aiohttp.ClientSession], fresh: bool
) -> None:
    """A private room of 1,000 whose lists this pod has not read (its first message
    after a restart; ``fresh``: a ``room_send`` whose digest disagrees) reads them in
    requests of 200, not one each (the gateway's fan-out and delivery's tombstone
    parties both do: services/gateway/rooms.py, services/delivery/parties.py)."""
    from services.common.devices import LISTS_PER_REQUEST

    up, settings, session = upstream
    lists = dev.DeviceLists(settings, session)
    members = [f"{i:032x}" for i in range(1000)]  # ids as the auth service makes them
    assert await lists.get_many(members, "t", fresh=fresh) == [frozenset({1, 2})] * 1000
    assert sum(up.list_requests) == 1000  # each member once...
    assert up.list_requests == [LISTS_PER_REQUEST] * 5  # ... in five full requests
    up.devices = [3]
    again = await lists.get_many(members, "t", fresh=fresh)
    # Cached: none asked again; fresh: all, in bulk again.
    assert again == [frozenset({3} if fresh else {1, 2})] * 1000
    assert len(up.list_requests) == (10 if fresh else 5)


async def test_a_look_up_asked_as_the_one_before_comes_back_is_not_asked_again(
    upstream: tuple[Upstream, Settings, aiohttp.ClientSession],
) -> None:
    """A request's answer is cached before the request is off its way (batched.py): a
    caller that comes after that but before the first caller's turn (5,000 sends of one
    user on a busy machine: a device list read twice, in a CI run under load) finds it
    and asks nothing."""
    up, settings, session = upstream
    settings = settings.model_copy(update={"recipient_cache_s": 60})
    directory, lists = Directory(settings, session), dev.DeviceLists(settings, session)
    user = "a" * 32
    for ask, batch in (
        (lambda: directory.require_user(user, "t"), directory._ids),
        (lambda: lists.get(user, "t"), lists._lists),
    ):
        calls = up.calls
        first = asyncio.create_task(ask())
        # One turn of the loop at a time: the moment between two turns is the point.
        while up.calls == calls or user in batch._on_way:  # noqa: ASYNC110  (the answer is back ...)
            await asyncio.sleep(0)
        assert not first.done()  # ... and the first caller has not had its turn
        second = await ask()
        assert await first == second
        assert up.calls == calls + 1, "asked again"


@pytest.mark.parametrize("user", ["a" * 32, "odd.id"], ids=["bulk", "one"])
@pytest.mark.parametrize("notice", ["devices_changed", "channel_lost"])
async def test_a_list_read_while_it_changed_is_not_cached(
    upstream: tuple[Upstream, Settings, aiohttp.ClientSession], user: str, notice: str
) -> None:
    """A device is linked while a read of its user's list is on its way: the hub's notice
    forgets the user (or all, when the pod lost the broadcast channel) before the
    old answer comes back. That answer is its callers' (they asked before), but it is
    not cached: the next send asks again and routes to the new device (it was cached
    for the list's TTL, five minutes of sends past the new device)."""
    up, settings, session = upstream
    lists = dev.DeviceLists(settings, session)
    up.hold = asyncio.Event()
    reading = asyncio.create_task(lists.get(user, "t"))
    await up.held.wait()  # the answer is made, with the list as it was
    up.devices = [1, 2, 3]  # a device linked; the key directory's notice comes
    lists.forget(user) if notice == "devices_changed" else lists.clear()
    up.hold.set()
    assert await reading == frozenset({1, 2})  # asked before the change
    assert lists.peek(user) is None  # ... not kept
    calls = up.calls
    assert await lists.get(user, "t") == frozenset({1, 2, 3})
    assert up.calls == calls + 1
    assert lists.peek(user) == frozenset({1, 2, 3})  # an answer after the notice is kept
    assert not lists._changed  # nothing on its way: nothing remembered


async def test_changes_are_remembered_only_while_a_read_from_before_them_is_on_its_way(
    upstream: tuple[Upstream, Settings, aiohttp.ClientSession],
) -> None:
    """On a busy pod some read is always on its way: a change is remembered while a read
    that started before it is, not as long as any read is (it would grow without end)."""
    _, settings, session = upstream
    lists = dev.DeviceLists(settings, session)
    a = lists._begin()
    lists.forget("u1")  # while a is on its way
    b = lists._begin()
    lists.forget("u2")  # while a and b are
    lists._keep({"u1": frozenset({1}), "u2": frozenset({1}), "u3": frozenset({1})}, a)
    assert [lists.peek(u) for u in ("u1", "u2", "u3")] == [None, None, frozenset({1})]
    lists._end(a)
    assert lists._changed == {"u2": 2}  # u1 changed before b started: b may keep it
    lists._keep({"u1": frozenset({2}), "u2": frozenset({2})}, b)
    assert [lists.peek(u) for u in ("u1", "u2")] == [frozenset({2}), None]
    lists._end(b)
    assert not lists._changed and not lists._reads
