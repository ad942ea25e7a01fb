"""Private rooms' messages: one `room_send`, one Kafka record, one copy per member device.

The rooms service, delivery and two gateway pods in-process on the real embedded
servers; the members' sockets are spread over both pods (docs/rooms.md, "Private
rooms"; docs/protocol.md, "Private rooms").
"""

from __future__ import annotations

from typing import Any

from services.delivery.state import WORKER
from tests.support.aio import eventually
from tests.support.room_world import RoomWorld
from tests.support.users import uid
from tests.support.wsclient import WsClient


def room_send(client_id: str, room: str, body: str, **extra: Any) -> dict[str, Any]:
    return {"op": "room_send", "id": client_id, "room": room, "body": body, **extra}


async def messages(ws: WsClient, n: int) -> list[dict[str, Any]]:
    return [await ws.expect("message") for _ in range(n)]


async def test_one_send_reaches_every_member_device_once_across_pods(world: RoomWorld) -> None:
    alice, bob, carol = uid(), uid(), uid()
    world.m.issuer.devices[alice] = [1, 2]
    world.m.issuer.devices[bob] = [1, 2]
    room = await world.private_room(alice, [bob, carol])
    a1 = await world.connect(alice, 1, pod=0)
    a2 = await world.connect(alice, 2, pod=1)
    b1 = await world.connect(bob, 1, pod=0)
    b2 = await world.connect(bob, 2, pod=1)
    c1 = await world.connect(carol, 1, pod=1)
    worker = world.m.delivery.server.app[WORKER]
    before = worker.fanned_out._value.get()

    await a1.send(room_send("r1", room, "Z3JvdXA", mentions=[bob]))
    accepted = await a1.expect("accepted", id="r1")
    assert accepted["conversation"] == f"room:{room}"
    got = {}
    for name, ws in (("a2", a2), ("b1", b1), ("b2", b2), ("c1", c1)):
        msg = await ws.expect("message")
        assert msg["room"] == room and msg["conversation"] == f"room:{room}"
        assert msg["body"] == "Z3JvdXA" and msg["from"] == alice and msg["from_device"] == 1
        assert msg["server_id"] == accepted["server_id"] and msg["mentions"] == [bob]
        got[name] = msg
    # One record, one copy per device but the sending one; no per-device receipts.
    assert worker.fanned_out._value.get() - before == 4
    await b1.send({"op": "ping", "id": "p"})
    await b1.expect("pong", id="p")
    assert [f for f in a1.drain() if f["op"] in ("stored", "delivered", "message")] == []

    # The other way, from a member's second device: the sender's own device 1 gets it.
    await b2.send(room_send("r2", room, "YmFjaw"))
    await b2.expect("accepted", id="r2")
    for ws in (a1, a2, b1, c1):
        msg = await ws.expect("message", body="YmFjaw")
        assert msg["from"] == bob and msg["from_device"] == 2 and msg["mentions"] is None


async def test_every_member_device_sees_the_rooms_messages_in_one_order(world: RoomWorld) -> None:
    users = [uid() for _ in range(4)]
    room = await world.private_room(users[0], users[1:])
    socks = [await world.connect(u, pod=i % 2) for i, u in enumerate(users)]
    n = 40
    # Two senders interleave; each member device must see one and the same order.
    for i in range(n):
        sender = socks[i % 2]
        await sender.send(room_send(f"o{i}", room, f"bXNn{i:03d}"))
    for i in range(n):
        await socks[i % 2].expect("accepted", id=f"o{i}")
    # A client shows its inbox in seq order (pushes may reach it in another order:
    # this test's helper sets frames aside while it waits for others).
    orders = []
    for k, ws in enumerate(socks):
        expected = n // 2 if k < 2 else n  # a sender does not get its own messages
        got = sorted(await messages(ws, expected), key=lambda g: g["seq"])
        assert len({g["seq"] for g in got}) == expected
        orders.append([g["body"] for g in got])
    full = orders[2]
    assert orders[3] == full and len(set(full)) == n
    # Each sender's own messages are in the order it sent them, everywhere.
    for k in (0, 1):
        assert [b for b in full if int(b[4:]) % 2 == k] == [f"bXNn{i:03d}" for i in range(k, n, 2)]
        assert orders[k] == [b for b in full if int(b[4:]) % 2 != k]


async def test_a_resend_is_stored_once_per_inbox(world: RoomWorld) -> None:
    alice, bob = uid(), uid()
    room = await world.private_room(alice, [bob])
    a = await world.connect(alice)
    worker = world.m.delivery.server.app[WORKER]
    for _ in range(3):
        await a.send(room_send("same", room, "b25jZQ"))
        await a.expect("accepted", id="same")
    # Three records fanned out; the second and third copies are recognised.
    await eventually(lambda: _value(worker.duplicates._value.get()), lambda n: n >= 2, timeout=20)
    b = await world.connect(bob, pod=1)
    await b.send({"op": "sync", "id": "s", "after": 0})
    await b.expect("synced", id="s")
    assert len([f for f in b.drain() if f["op"] == "message"]) == 1


async def test_bad_room_sends_are_refused_and_store_nothing(world: RoomWorld) -> None:
    owner, member, outsider, invitee, leaver = uid(), uid(), uid(), uid(), uid()
    room = await world.private_room(owner, [member, leaver])
    world.m.issuer.users.add(invitee)
    status, _ = await world.call("POST", f"/rooms/{room}/invitations", owner, {"user": invitee})
    assert status == 201
    status, public = await world.call("POST", "/rooms", owner, {"name": "pub", "kind": "public"})
    assert status == 201
    status, _ = await world.call("POST", f"/rooms/{room}/leave", leaver)
    assert status == 204
    cases = [
        (outsider, room, "room_not_found"),
        (invitee, room, "not_a_member"),
        (leaver, room, "room_not_found"),
        (owner, "0" * 24, "room_not_found"),
        (owner, public["room_id"], "forbidden"),
    ]
    for user, target, code in cases:
        ws = await world.connect(user)
        await ws.send(room_send("bad", target, "eA"))
        err = await ws.expect("error", id="bad")
        assert err["code"] == code, (user, target, err)
    # Mentions are routing metadata the server acts on: members only.
    ws = await world.connect(owner, pod=1)
    await ws.send(room_send("who", room, "eA", mentions=[member, outsider]))
    err = await ws.expect("error", id="who")
    assert err["code"] == "validation_failed" and err["details"][0]["field"] == "mentions"
    status, _ = await world.call("PATCH", f"/rooms/{room}", owner, {"state": "closed"})
    assert status == 200
    ws = await world.connect(owner, pod=1)
    await ws.send(room_send("closed", room, "eA"))
    assert (await ws.expect("error", id="closed"))["code"] == "room_closed"
    # Nothing reached any member's inbox.
    m = await world.connect(member, pod=1)
    await m.send({"op": "sync", "id": "s", "after": 0})
    await m.expect("synced", id="s")
    assert [f for f in m.drain() if f["op"] == "message"] == []


async def test_a_removed_member_gets_nothing_sent_after_removal(world: RoomWorld) -> None:
    owner, stays, removed = uid(), uid(), uid()
    room = await world.private_room(owner, [stays, removed])
    o = await world.connect(owner)
    s = await world.connect(stays, pod=1)
    r = await world.connect(removed, pod=1)
    await o.send(room_send("before", room, "YmVmb3Jl"))
    await r.expect("message", body="YmVmb3Jl")
    await s.expect("message", body="YmVmb3Jl")
    status, _ = await world.call("DELETE", f"/rooms/{room}/members/{removed}", owner)
    assert status == 204
    await o.send(room_send("after", room, "YWZ0ZXI"))
    await s.expect("message", body="YWZ0ZXI")
    # The fan-out of "after" is done (the remaining member has it): the removed
    # member's inbox holds only "before".
    await r.send({"op": "sync", "id": "s", "after": 0})
    await r.expect("synced", id="s")
    bodies = [f["body"] for f in r.drain() if f["op"] == "message"]
    assert "YWZ0ZXI" not in bodies and set(bodies) <= {"YmVmb3Jl"}


async def test_an_offline_member_device_gets_the_rooms_messages_on_sync(world: RoomWorld) -> None:
    alice, bob = uid(), uid()
    world.m.issuer.devices[bob] = [1, 3]
    room = await world.private_room(alice, [bob])
    a = await world.connect(alice)
    for i in range(25):
        await a.send(room_send(f"x{i}", room, f"b2ZmbGluZQ{i}"))
    for i in range(25):
        await a.expect("accepted", id=f"x{i}")
    worker = world.m.delivery.server.app[WORKER]
    b3 = await world.connect(bob, 3, pod=1)

    seen: dict[int, str] = {}

    async def synced() -> dict[int, str]:
        # A client keeps one copy per seq (pushes that raced the sync repeat some).
        await b3.send({"op": "sync", "id": "s", "after": 0, "limit": 100})
        await b3.expect("synced", id="s")
        seen.update({f["seq"]: f["body"] for f in b3.drain() if f["op"] == "message"})
        return seen

    got = await eventually(synced, lambda ms: len(ms) >= 25, timeout=20)
    assert [got[s] for s in sorted(got)] == [f"b2ZmbGluZQ{i}" for i in range(25)]
    assert worker.fanned_out._value.get() >= 50


async def _value(v: float) -> float:
    return v
