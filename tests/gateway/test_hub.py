"""A pod's hub: presence in Redis, and revocations that close sockets on every pod at once."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import orjson
import pytest
from parley_contract import envelopes as e
from parley_contract import frames as f
from parley_contract.frames import CLOSE_AUTH_FAILED, CLOSE_REVOKED
from redis.exceptions import RedisError

from services.common.auth import Claims, revocation_channel, revocation_keys
from services.common.errors import ApiError, ErrorCode
from services.common.routing import presence_key, room_channel
from services.common.state import REDIS
from services.gateway import hub as hub_module
from tests.support.aio import eventually
from tests.support.users import uid
from tests.support.wsclient import WsClient

from .conftest import Messaging


async def publish_revocation(messaging: Messaging, event: dict[str, str]) -> None:
    redis = messaging.gateways[0].server.app[REDIS]
    await redis.publish(revocation_channel(messaging.settings.redis_prefix), orjson.dumps(event))


async def test_session_revocation_closes_that_sessions_sockets_on_every_pod(
    messaging: Messaging,
) -> None:
    user, sid = uid(), uid()
    s1_pod_a = await messaging.connect(user, pod=0, sid=sid)
    s1_pod_b = await messaging.connect(user, pod=1, sid=sid)
    other_session = await messaging.connect(user, pod=1)
    await publish_revocation(messaging, {"type": "session_revoked", "user_id": user, "sid": sid})
    for client in (s1_pod_a, s1_pod_b):
        assert (await client.expect("error"))["code"] == "token_revoked"
        assert await client.wait_closed() == CLOSE_REVOKED
    await other_session.send({"op": "ping", "id": "still"})
    await other_session.expect("pong", id="still")


async def test_no_frame_is_handled_once_a_revocation_closes_the_socket(
    messaging: Messaging, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding: a revocation (or block, or expiry) closes the socket from outside
    its frame loop; a frame the client sent while the close ran (it waits for the
    client, seconds for one that does not read) was still handled: a message produced
    for a revoked session."""
    from services.gateway.connection import Connection

    close, handled, release = Connection.close, [], asyncio.Event()

    async def held_close(self: Connection, *args: object, **kw: object) -> None:
        await release.wait()
        await close(self, *args, **kw)  # type: ignore[arg-type]

    handle = Connection._handle

    async def recording(self: Connection, frame: f.ClientFrames) -> None:
        handled.append(frame)
        await handle(self, frame)

    monkeypatch.setattr(Connection, "close", held_close)
    monkeypatch.setattr(Connection, "_handle", recording)
    user, sid = uid(), uid()
    client = await messaging.connect(user, pod=0, sid=sid)
    await publish_revocation(messaging, {"type": "session_revoked", "user_id": user, "sid": sid})
    assert (await client.expect("error"))["code"] == "token_revoked"
    [conn] = messaging.hub(0).by_user[user]
    before = conn.heard

    async def heard() -> float:
        return float(conn.heard)

    await client.send({"op": "ping", "id": "late"})  # a send would be handled as well
    # Read by the socket's loop (which hands a frame on in the same step it reads it).
    await eventually(heard, lambda at: at > before, timeout=10)
    assert [x for x in handled if getattr(x, "id", None) == "late"] == []
    release.set()
    # Closed (4003 in life; here the held close may be cut short by the socket's end,
    # which the real close is shielded from).
    assert await client.wait_closed() is not None


async def test_a_socket_authenticating_when_the_drain_starts_is_sent_on_too(
    messaging: Messaging, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding: the drain sent ``reconnect`` to the sockets listed when it began;
    one still authenticating got ``ready`` after it and was cut off 20 s later (1006)."""
    hub = messaging.hub(0)
    verify, release, verifying = hub.verify, asyncio.Event(), asyncio.Event()

    async def held(token: str) -> object:
        verifying.set()
        await release.wait()
        return await verify(token)

    monkeypatch.setattr(hub, "verify", held)
    user = uid()
    client = await WsClient.connect(messaging.ws_url(0))
    messaging.clients.append(client)
    await client.send({"op": "auth", "id": "a", "token": messaging.issuer.token(user, did=1)})
    await verifying.wait()
    await hub.drain()
    release.set()
    got = await client.expect_any(("reconnect", "ready"))
    assert got["op"] == "reconnect", got
    assert await client.wait_closed() == 1001
    assert not hub.local(user)
    presence = (
        await messaging.gateways[0]
        .server.app[REDIS]
        .hgetall(presence_key(messaging.settings.redis_prefix, user))
    )
    assert presence == {}


async def test_blocked_user_is_disconnected_and_cannot_come_back(messaging: Messaging) -> None:
    user = uid()
    client = await messaging.connect(user, pod=1)
    redis = messaging.gateways[0].server.app[REDIS]
    await redis.set(f"{messaging.settings.redis_prefix}:blocked:{user}", "1", ex=60)
    await publish_revocation(messaging, {"type": "user_blocked", "user_id": user})
    assert (await client.expect("error"))["code"] == "account_blocked"
    assert await client.wait_closed() == CLOSE_REVOKED
    again = await WsClient.connect(messaging.ws_url(0))
    messaging.clients.append(again)
    await again.send({"op": "auth", "token": messaging.issuer.token(user, did=1)})
    assert (await again.expect("error"))["code"] == "account_blocked"
    assert await again.wait_closed() == CLOSE_AUTH_FAILED


async def test_presence_is_recorded_and_removed(messaging: Messaging) -> None:
    user = uid()
    client = await messaging.connect(user, pod=1)
    hub = messaging.hub(1)
    redis = messaging.gateways[1].server.app[REDIS]
    key = presence_key(messaging.settings.redis_prefix, user)
    entries = await redis.hgetall(key)
    assert [v.decode().split("|")[0] for v in entries.values()] == ["gw-b"]
    assert hub.local(user)
    await client.close()
    await eventually(lambda: redis.hgetall(key), lambda e: e == {})
    assert not hub.local(user)


class _UvloopTimer:
    """What uvloop's ``call_later`` returns: a timer that is not an
    ``asyncio.TimerHandle`` (production runs on uvloop, the tests on asyncio's loop)."""

    def __init__(self, handle: asyncio.TimerHandle) -> None:
        self._handle = handle

    def cancel(self) -> None:
        self._handle.cancel()

    def __getattr__(self, name: str) -> object:
        return getattr(self._handle, name)


@pytest.mark.parametrize("timers", ["asyncio", "uvloop"])
async def test_a_big_rooms_frames_go_out_together_and_a_direct_one_at_once(
    messaging: Messaging, monkeypatch: pytest.MonkeyPatch, timers: str
) -> None:
    """While big rooms are busy, frames for a room of at least
    ``ws_room_coalesce_users`` wait up to ``ws_room_write_delay_ms`` on each socket:
    published together, they leave in at most two writes (the first at once, nothing
    having come just before it). A frame of a small room, or a direct one, is written
    at once and takes what waits with it (with uvloop's timers too: it used to tell
    a waiting write by ``asyncio.TimerHandle``, which uvloop's are not)."""
    if timers == "uvloop":
        loop = asyncio.get_running_loop()
        call_later = loop.call_later
        monkeypatch.setattr(loop, "call_later", lambda *a, **kw: _UvloopTimer(call_later(*a, **kw)))
    settings = messaging.settings
    hub = messaging.hub(0)
    # A long delay (this pod, this test): a frame left waiting would time the test out.
    hub.limits = dataclasses.replace(hub.limits, room_write_delay_s=30.0)
    ann = uid()
    ann1 = await messaging.connect(ann, pod=0)
    redis = messaging.gateways[0].server.app[REDIS]
    channel = room_channel(settings.redis_prefix)
    big = [ann, *(uid() for _ in range(settings.ws_room_coalesce_users - 1))]

    def post(seq: int, to: list[str]) -> bytes:
        frame = f.RoomPost(room_id="f" * 24, seq=seq, sender=big[1], client_id=f"c{seq}",
                           text=f"m{seq}", mentions=[], sent_at=1)  # fmt: skip
        return e.encode(e.multicast(to, frame))

    writes, frames = hub.socket_writes, hub.frames_written
    async with redis.pipeline(transaction=False) as pipe:
        pipe.publish(channel, post(1, big))
        await pipe.execute()
    assert (await ann1.expect("room_post"))["seq"] == 1  # the first: at once
    async with redis.pipeline(transaction=False) as pipe:
        for seq in range(2, 6):
            pipe.publish(channel, post(seq, big))  # these wait (30 s here) ...
        pipe.publish(channel, post(6, [ann]))  # ... until a small room's frame comes
        await pipe.execute()
    got = [(await ann1.expect("room_post", timeout=10))["seq"] for _ in range(5)]
    assert got == [2, 3, 4, 5, 6]
    assert (hub.socket_writes - writes, hub.frames_written - frames) == (2, 6)


async def test_a_multicast_reaches_every_socket_of_each_listed_user_once(
    messaging: Messaging,
) -> None:
    """A room-wide frame on the same channel: every socket of each listed user, on
    whichever pod holds it (two on one pod included), once; others get nothing, and
    a malformed message on the channel is dropped without harm."""
    ann, ben, cat, dan = uid(), uid(), uid(), uid()
    ann1 = await messaging.connect(ann, pod=0)
    ann2 = await messaging.connect(ann, pod=0, did=2)
    ben1 = await messaging.connect(ben, pod=1)
    dan1 = await messaging.connect(dan, pod=1)
    redis = messaging.gateways[0].server.app[REDIS]
    channel = room_channel(messaging.settings.redis_prefix)
    await redis.publish(channel, b'{"op":"room_post","to":"not a list"}')
    room = "f" * 24
    post = f.RoomPost(room_id=room, seq=4, sender=cat, client_id="c", text="hi @all",
                      mentions=[], sent_at=1)  # fmt: skip
    await redis.publish(channel, e.encode(e.multicast([ann, ben, cat], post)))
    for client in (ann1, ann2, ben1):
        got = await client.expect("room_post")
        assert (got["room_id"], got["seq"], got["text"]) == (room, 4, "hi @all")
    for client in (ann1, ann2, ben1, dan1):  # once each, and nothing for dan
        await client.send({"op": "ping", "id": "p"})
        await client.expect("pong", id="p")
        assert [x for x in client.drain() if x["op"] == "room_post"] == []


async def test_a_revocation_missed_while_the_channel_was_down_still_closes_the_socket(
    messaging: Messaging,
) -> None:
    """A block published while the pod's channel was down (a network blip, Redis
    dropping the subscriber) reached no one: the socket kept getting pushes until its
    token expired. The pod now looks its sockets up when the channel is back."""
    user, other = uid(), uid()
    client = await messaging.connect(user, pod=0)
    bystander = await messaging.connect(other, pod=0)
    redis = messaging.gateways[0].server.app[REDIS]
    await redis.set(f"{messaging.settings.redis_prefix}:blocked:{user}", "1", ex=60)
    # Its publish was lost: the pod's subscription drops now and comes back.
    await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    assert (await client.expect("error", timeout=20))["code"] == "account_blocked"
    assert await client.wait_closed() == CLOSE_REVOKED
    await bystander.expect("resync", timeout=20)
    await bystander.send({"op": "ping", "id": "p"})
    await bystander.expect("pong", id="p")


async def test_a_socket_whose_presence_could_not_be_written_is_not_left_registered(
    messaging: Messaging, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis fails the presence write at ``auth`` (a timeout, a failover): the socket is
    closed, and nothing of it stays in the hub (it stayed listed until the pod ended,
    its presence written again every refresh: the user shown online for ever, their
    mention e-mails never sent, one of their socket slots taken)."""
    hub = messaging.hub(0)
    user = uid()
    add_presence = hub.store.add_presence
    failed: list[str] = []

    async def fails_once(user_id: str, conn_id: str) -> None:
        if not failed:
            failed.append(conn_id)
            raise RedisError("Timeout reading from socket")
        await add_presence(user_id, conn_id)

    monkeypatch.setattr(hub.store, "add_presence", fails_once)
    client = await WsClient.connect(messaging.ws_url(0))
    messaging.clients.append(client)
    await client.send({"op": "auth", "token": messaging.issuer.token(user, did=1)})
    await client.wait_closed()
    assert failed and not hub.local(user)
    again = await messaging.connect(user, pod=0)  # Redis answers again
    assert len(hub.local(user)) == 1
    await again.send({"op": "ping", "id": "p"})
    await again.expect("pong", id="p")


async def test_nothing_reaches_a_socket_before_its_ready(
    messaging: Messaging, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket was listed on its pod before its presence was written, and ``ready``
    queued after: a room's multicast for the user that came meanwhile went out
    first, and the Python client, which takes the first frame after ``auth`` to be
    ``ready``, gave up and backed off."""
    hub = messaging.hub(0)
    ann = uid()
    ann1 = await messaging.connect(ann, pod=0)
    add_presence = hub.store.add_presence
    writing, release = asyncio.Event(), asyncio.Event()

    async def slow(user_id: str, conn_id: str) -> None:
        writing.set()
        await release.wait()  # Redis is slow to answer
        await add_presence(user_id, conn_id)

    monkeypatch.setattr(hub.store, "add_presence", slow)
    ann2 = await WsClient.connect(messaging.ws_url(0))
    messaging.clients.append(ann2)
    await ann2.send({"op": "auth", "token": messaging.issuer.token(ann, did=2), "id": "a"})
    await asyncio.wait_for(writing.wait(), 10)
    redis = messaging.gateways[0].server.app[REDIS]
    post = f.RoomPost(room_id="f" * 24, seq=1, sender=uid(), client_id="c", text="hi",
                      mentions=[], sent_at=1)  # fmt: skip
    await redis.publish(room_channel(messaging.settings.redis_prefix),
                        e.encode(e.multicast([ann], post)))  # fmt: skip
    assert (await ann1.expect("room_post"))["seq"] == 1  # the pod handled it
    release.set()
    first = await ann2.next()
    assert first["op"] == "ready", first
    assert len(hub.local(ann)) == 2


async def test_an_ack_that_came_while_a_refused_one_was_on_its_way_is_still_posted(
    messaging: Messaging, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Acks are cumulative, one on its way at a time: a newer one waits for it. When
    the one on its way is refused, the newer one is still posted (it used to be
    dropped unanswered: its items kept waiting, without `delivered`, until another)."""
    hub = messaging.hub(0)
    client = await messaging.connect(uid(), pod=0)
    release = asyncio.Event()
    asked: list[int] = []

    async def ack(token: str, user: str, device: int, seq: int) -> None:
        asked.append(seq)
        if seq == 10:
            await release.wait()
            raise ApiError(ErrorCode.SEQ_NOT_ISSUED, "Not issued.")

    monkeypatch.setattr(hub, "ack", ack)
    await client.send({"op": "ack", "seq": 10, "id": "a1"})
    await eventually(lambda: asyncio.sleep(0, list(asked)), lambda a: a == [10])
    await client.send({"op": "ack", "seq": 20, "id": "a2"})
    await client.send({"op": "ping", "id": "p"})
    await client.expect("pong", id="p")  # a2 was read while a1 is on its way
    release.set()
    assert (await client.expect("error", id="a1"))["code"] == "seq_not_issued"
    await eventually(lambda: asyncio.sleep(0, list(asked)), lambda a: a == [10, 20])


async def _revoke_now(messaging: Messaging, user: str, sid: str) -> None:
    """Log a session out as the auth service does (the key, then the event), and wait
    for pod 0 to have acted on it."""
    hub = messaging.hub(0)
    seen = hub.revocations
    redis = messaging.gateways[0].server.app[REDIS]
    claims = Claims(sub=user, sid=sid, roles=(), jti="", exp=0, did=1)
    await redis.set(revocation_keys(messaging.settings.redis_prefix, claims)[0], 1, ex=600)
    await publish_revocation(messaging, {"type": "session_revoked", "user_id": user, "sid": sid})

    async def acted() -> int:
        return int(hub.revocations)

    await eventually(acted, lambda n: n > seen)


async def test_a_session_revoked_while_its_socket_registers_gets_no_ready(
    messaging: Messaging,
) -> None:
    """Audit finding: the revocation was checked once, before the socket was listed;
    a logout that came while its presence was written looked for it in vain, and the
    socket got `ready` and served the revoked session until its token's expiry."""
    hub = messaging.hub(0)
    user, sid = uid(), uid()
    add = hub.store.add_presence

    async def revoked_meanwhile(user_id: str, conn_id: str) -> None:
        await _revoke_now(messaging, user, sid)
        await add(user_id, conn_id)

    hub.store.add_presence = revoked_meanwhile
    client = await WsClient.connect(messaging.ws_url(0))
    messaging.clients.append(client)
    await client.send(
        {"op": "auth", "id": "a", "token": messaging.issuer.token(user, did=1, sid=sid)}
    )
    assert (await client.expect("error", id="a"))["code"] == "token_revoked"
    assert await client.wait_closed() == CLOSE_AUTH_FAILED
    assert not hub.local(user)
    assert (
        not await messaging.gateways[0]
        .server.app[REDIS]
        .hgetall(presence_key(messaging.settings.redis_prefix, user))
    )


async def test_a_renewal_into_a_session_revoked_meanwhile_is_refused(
    messaging: Messaging, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, for a re-`auth`: the revocation of the new session, landing after its
    check read Redis, was matched against the socket's old session, and the socket
    then took the revoked one and stayed open."""
    user, old, new = uid(), uid(), uid()
    client = await messaging.connect(user, pod=0, sid=old)
    check = hub_module.check_not_revoked
    raced: list[str] = []

    async def revoked_after_the_read(redis: Any, prefix: str, claims: Claims) -> None:
        await check(redis, prefix, claims)
        if claims.sid == new and not raced:
            raced.append(new)
            await _revoke_now(messaging, user, new)

    monkeypatch.setattr(hub_module, "check_not_revoked", revoked_after_the_read)
    await client.send(
        {"op": "auth", "id": "re", "token": messaging.issuer.token(user, did=1, sid=new)}
    )
    assert (await client.expect("error", id="re"))["code"] == "token_revoked"
    assert raced == [new]
    [conn] = messaging.hub(0).local(user)
    assert conn.sid == old  # the revoked session was never taken


async def test_other_users_revocations_do_not_make_a_check_repeat(
    messaging: Messaging, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: the count the re-check followed was the pod's, so a burst of
    revocations of other users (an OpenID client's deletion revokes thousands) made
    every socket authenticating meanwhile check again, without end. Per user now, and
    a user whose revocations keep coming is answered `service_unavailable`."""
    hub = messaging.hub(0)
    user = uid()
    token = messaging.issuer.token(user, did=1)
    check, checks = hub_module.check_not_revoked, [0]

    def revoking(who: str) -> Any:
        async def checked(redis: Any, prefix: str, claims: Claims) -> None:
            await check(redis, prefix, claims)
            checks[0] += 1
            hub._note_revoked(who if who else uid())

        return checked

    monkeypatch.setattr(hub_module, "check_not_revoked", revoking(""))
    assert (await hub.verify(token)).sub == user
    assert checks[0] == 1
    checks[0] = 0
    monkeypatch.setattr(hub_module, "check_not_revoked", revoking(user))
    with pytest.raises(ApiError) as refused:
        await hub.verify(token)
    assert refused.value.code is ErrorCode.UNAVAILABLE
    assert checks[0] == hub_module.VERIFY_TRIES


async def test_an_auth_refused_for_now_closes_with_try_again_not_auth_failed(
    messaging: Messaging, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: an `auth` answered `service_unavailable` (the user's revocations
    keep coming, or the JWKS cannot be read) closed with 4001, on which the web client
    refreshes its token and reconnects at once, again and again: 1013 now."""
    hub = messaging.hub(0)
    user = uid()
    check = hub_module.check_not_revoked

    async def revoked_each_time(redis: Any, prefix: str, claims: Claims) -> None:
        await check(redis, prefix, claims)
        hub._note_revoked(user)

    monkeypatch.setattr(hub_module, "check_not_revoked", revoked_each_time)
    client = await WsClient.connect(messaging.ws_url(0))
    messaging.clients.append(client)
    await client.send({"op": "auth", "id": "a", "token": messaging.issuer.token(user, did=1)})
    assert (await client.expect("error", id="a"))["code"] == "service_unavailable"
    assert await client.wait_closed() == f.CLOSE_TRY_AGAIN
