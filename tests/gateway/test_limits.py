"""Per-user and per-address socket caps, a send limit shared by a user's sockets, and
outbound queues bounded by bytes as well as frames (#20)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from parley_contract.frames import CLOSE_SLOW_CONSUMER, CLOSE_TOO_MANY, Message
from prometheus_client import CollectorRegistry

from services.common.config import load_settings
from services.common.state import KAFKA
from services.gateway.app import create_app
from services.gateway.connection import Connection
from services.gateway.hub import Hub
from services.gateway.state import HUB
from services.gateway.store import GatewayStore
from tests.support.aio import eventually
from tests.support.users import uid
from tests.support.wsclient import WsClient, send_frame

from .test_connection import StuckSocket


async def _gateway(issuer: Any, make_client: Any, **limits: Any) -> tuple[Any, str]:
    gw = await make_client(await create_app(issuer.settings.model_copy(update=limits)))
    await gw.server.app[KAFKA].wait_ready(30)
    return gw, str(gw.make_url("/ws"))


async def _refused(client: WsClient) -> None:
    assert (await client.expect("error"))["code"] == "too_many_connections"
    assert await client.wait_closed() == CLOSE_TOO_MANY


async def test_sockets_per_user_are_capped(issuer: Any, make_client: Any) -> None:
    _, url = await _gateway(issuer, make_client, ws_max_sockets_per_user=2)
    user = uid()
    first = await WsClient.connect(url, issuer.token(user, did=1))
    second = await WsClient.connect(url, issuer.token(user, did=2))
    third = await WsClient.connect(url)
    await third.send({"op": "auth", "token": issuer.token(user, did=1)})
    await _refused(third)
    await third.close()
    # Another user is not affected; a socket closed frees its place.
    other = await WsClient.connect(url, issuer.token(uid(), did=1))
    await first.close()
    again = await eventually(lambda: _try(url, issuer.token(user, did=1)), lambda c: c is not None)
    assert again is not None
    for c in (second, other, again):
        await c.close()


async def _try(url: str, token: str) -> WsClient | None:
    client = await WsClient.connect(url)
    await client.send({"op": "auth", "token": token})
    frame = await client.next()
    if frame["op"] == "ready":
        return client
    await client.close()
    return None


async def test_sockets_per_address_are_capped(issuer: Any, make_client: Any) -> None:
    _, url = await _gateway(issuer, make_client, ws_max_sockets_per_address=2)
    kept = [await WsClient.connect(url, issuer.token(uid(), did=1)) for _ in range(2)]
    # Counted from the upgrade, before authentication.
    extra = await WsClient.connect(url)
    await _refused(extra)
    await extra.close()
    for c in kept:
        await c.close()


async def test_the_send_limit_is_shared_by_a_users_sockets(issuer: Any, make_client: Any) -> None:
    _, url = await _gateway(issuer, make_client, ws_sends_per_s=0.001, ws_send_burst=3)
    user, bob = uid(), uid()
    issuer.users.add(bob)
    a = await WsClient.connect(url, issuer.token(user, did=1))
    b = await WsClient.connect(url, issuer.token(user, did=1))
    for i, client in enumerate((a, a, b)):
        await client.send(send_frame(f"s{i}", bob, "eA"))
        await client.expect("accepted", id=f"s{i}")
    # The user's fourth send is refused, whichever socket it comes from; others are free.
    await b.send(send_frame("s3", bob, "eA"))
    assert (await b.expect("error", id="s3"))["code"] == "rate_limited"
    other = await WsClient.connect(url, issuer.token(uid(), did=1))
    await other.send(send_frame("o1", bob, "eA"))
    await other.expect("accepted", id="o1")
    for c in (a, b, other):
        await c.close()


async def test_reconnecting_does_not_refill_the_send_limit(issuer: Any, make_client: Any) -> None:
    """The user's bucket was dropped when their last socket on the pod closed, so a
    reconnect started with a full burst again: a client could send a burst per
    reconnect (and the flood close, 4009, refilled it too). A bucket now stays until
    it has refilled; a full one is forgotten."""
    gw, url = await _gateway(issuer, make_client, ws_sends_per_s=0.001, ws_send_burst=2)
    hub = gw.server.app[HUB]
    user, idle, bob = uid(), uid(), uid()
    issuer.users.add(bob)
    a = await WsClient.connect(url, issuer.token(user, did=1))
    for i in range(2):
        await a.send(send_frame(f"s{i}", bob, "eA"))
        await a.expect("accepted", id=f"s{i}")
    quiet = await WsClient.connect(url, issuer.token(idle, did=1))
    await quiet.send(send_frame("q0", bob, "eA"))
    await quiet.expect("accepted", id="q0")
    hub.buckets[idle].tokens = 2.0  # refilled (a minute at a real rate)
    for c in (a, quiet):
        await c.close()
    await eventually(lambda: asyncio.sleep(0, hub.local(user) or hub.local(idle)), lambda x: not x)
    assert user in hub.buckets and idle not in hub.buckets
    again = await WsClient.connect(url, issuer.token(user, did=1))
    await again.send(send_frame("s2", bob, "eA"))
    assert (await again.expect("error", id="s2"))["code"] == "rate_limited"
    await again.close()
    await eventually(lambda: asyncio.sleep(0, hub.local(user)), lambda x: not x)
    hub.buckets[user].tokens = 2.0
    hub._sweep_buckets()  # the presence refresh's
    assert user not in hub.buckets


async def test_sends_are_checked_together_and_produced_in_the_order_they_came(
    issuer: Any, make_client: Any
) -> None:
    """A send to a recipient not seen yet asks the auth service and the key directory
    (a room's key distribution: one per member). Those asks run side by side, off the
    frame loop, and the sends are still produced in the order they came: here the
    first recipient's look-up is held, the four after it are asked meanwhile, and none
    of them is produced (so none accepted) before the first. (Their ``accepted`` then
    come as the broker acknowledges each record: across recipients, partitions of
    their own, in any order, as always.)"""
    _, url = await _gateway(issuer, make_client)
    me, slow, *rest = (uid() for _ in range(6))
    issuer.users.update((slow, *rest))
    issuer.held[slow] = gate = asyncio.Event()
    client = await WsClient.connect(url, issuer.token(me, did=1))
    try:
        for i, to in enumerate((slow, *rest)):
            await client.send(send_frame(f"m{i}", to, "eA"))
        await eventually(
            lambda: asyncio.sleep(0, set(issuer.lookups)), lambda asked: asked >= {slow, *rest}
        )
        # A ping after them is answered at once (the frame loop is not waiting)...
        await client.send({"op": "ping", "id": "p"})
        await client.expect("pong", id="p")
        # ... and no send is answered before the first one is produced.
        assert [f for f in client.drain() if f["op"] in ("accepted", "error")] == []
        gate.set()
        answers = [await client.next() for _ in range(5)]
        assert {a["op"] for a in answers} == {"accepted"}
        assert sorted(a["id"] for a in answers) == [f"m{i}" for i in range(5)]
    finally:
        await client.close()


async def test_sends_written_at_once_to_a_new_contact_look_it_up_once(
    issuer: Any, make_client: Any
) -> None:
    """Ten sends to a recipient this pod has not seen, written at once, are checked side
    by side: they share one look-up at the auth service and one device-list read at
    the key directory (docs/gateway.md, "What a pod does": send), not ten of each."""
    _, url = await _gateway(issuer, make_client)
    me, bob = uuid.uuid4().hex, uuid.uuid4().hex  # ids as the auth service makes them
    issuer.users.add(bob)
    issuer.held[bob] = gate = asyncio.Event()
    client = await WsClient.connect(url, issuer.token(me, did=1))
    try:
        for i in range(10):
            await client.send(send_frame(f"m{i}", bob, "eA"))
        await client.send({"op": "ping", "id": "p"})
        await client.expect("pong", id="p")  # every send before it was read
        await eventually(lambda: asyncio.sleep(0, issuer.lookups.count(bob)), lambda k: k >= 1)
        gate.set()
        answers = [await client.next() for _ in range(10)]
        assert [a["op"] for a in answers] == ["accepted"] * 10
        assert issuer.lookups.count(bob) == 1
        assert issuer.device_lookups.count(bob) == 1
    finally:
        await client.close()


async def test_sends_to_many_new_recipients_check_them_in_a_few_requests(
    issuer: Any, make_client: Any
) -> None:
    """The key distribution of the largest private room the rooms service admits: a
    send on one socket to every other member, each a user this pod has not seen. Their
    recipients are checked at the auth service and their device lists read at the key
    directory in bulk requests (services/common/batched.py), not one request per send
    each; every send is accepted (through the 256 in flight at a time)."""
    from services.rooms.config import RoomsConfig

    _, url = await _gateway(issuer, make_client)
    me = uuid.uuid4().hex
    n = RoomsConfig().max_members - 1
    others = [uuid.uuid4().hex for _ in range(n)]  # ids as the auth service makes them
    issuer.users.update(others)
    client = await WsClient.connect(url, issuer.token(me, did=1))
    try:
        for i, to in enumerate(others):
            await client.send(send_frame(f"m{i}", to, "eA"))
        answers = [await client.next() for _ in others]
        assert {a["op"] for a in answers} == {"accepted"}, answers[:3]
    finally:
        await client.close()
    assert sorted(issuer.lookups) == sorted(others)  # each recipient asked once...
    in_bulk = sorted(u for request in issuer.lookup_requests for u in request)
    assert in_bulk == sorted(others)  # ... in bulk requests, a few
    # How many requests depends on how the asks trickle in (a loaded machine: more,
    # smaller ones; ~780 against this fast stand-in); one per send would be n.
    print(f"{n} sends: {len(issuer.lookup_requests)} look-ups, "
          f"{len(issuer.device_list_requests)} list reads")  # fmt: skip
    assert len(issuer.lookup_requests) <= n // 3, [len(r) for r in issuer.lookup_requests]
    assert sorted(issuer.device_lookups) == sorted([*others, me])  # and my own list
    assert len(issuer.device_list_requests) <= n // 3, [len(r) for r in issuer.device_list_requests]


async def test_the_outbound_queue_is_bounded_by_bytes() -> None:
    settings = load_settings(ws_outbound_queue=1000, ws_outbound_queue_bytes=64 * 1024)
    store = GatewayStore(settings, None, None, None)  # type: ignore[arg-type]
    hub = Hub(store, CollectorRegistry(), None, None, None, None)  # type: ignore[arg-type]
    ws = StuckSocket()
    conn = Connection(ws, hub)  # type: ignore[arg-type]
    try:
        for i in range(50):
            conn.push(Message(seq=i, server_id="s", from_="u", from_device=1, body="x" * 10_000))
            assert conn.queued_bytes <= settings.ws_outbound_queue_bytes
            await asyncio.sleep(0)
        await eventually(lambda: _value(ws.closed_with), lambda code: code is not None, timeout=5)
        assert ws.closed_with == CLOSE_SLOW_CONSUMER
        # Far fewer than the 1,000 frames the frame count alone allows.
        assert len(conn.queue) < 10
    finally:
        if conn._writer is not None:  # the writer a push started
            conn._writer.cancel()


async def _value(v: Any) -> Any:
    return v


def test_the_send_burst_covers_a_key_distribution_to_the_largest_room() -> None:
    """A device's first message to a private room sends its sender key to every other
    member, one pairwise send each (and so does each member's next message after a
    member leaves): the default burst lets that go out at once in a room of the most
    members the rooms service admits (docs/protocol.md, "Limits")."""
    from services.common.config import Settings
    from services.rooms.config import RoomsConfig

    assert Settings.model_fields["ws_send_burst"].default >= RoomsConfig().max_members - 1
