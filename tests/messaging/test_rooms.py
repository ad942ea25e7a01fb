"""Private rooms' messages: one `room_send`, one Kafka record, one entry in the room's
log, one push to every member socket (docs/rooms.md, "The room log").

The rooms service, delivery and two gateway pods in-process on the real embedded
servers; the members' sockets are spread over both pods.
"""

from __future__ import annotations

from typing import Any

import pytest
from parley_contract import envelopes as e
from parley_contract import frames as f

from services.common.state import REGISTRY
from services.delivery import routes as delivery_routes
from services.delivery.state import MODERATION, ROOM_LOG, WORKER
from tests.support.aio import eventually
from tests.support.room_world import RoomWorld
from tests.support.users import uid
from tests.support.wsclient import WsClient


def room_send(client_id: str, room: str, body: str, **extra: Any) -> dict[str, Any]:
    return {"op": "room_send", "id": client_id, "room": room, "body": body, **extra}


async def room_messages(ws: WsClient, n: int) -> list[dict[str, Any]]:
    return [await ws.expect("room_message") for _ in range(n)]


async def send_accepted(ws: WsClient, room: str, bodies: dict[str, str]) -> None:
    """``room_send`` each (client id -> body) and wait until every one is accepted."""
    for cid, body in bodies.items():
        await ws.send(room_send(cid, room, body))
    for cid in bodies:
        await ws.expect("accepted", id=cid)


async def whole_log(world: RoomWorld, room: str, user: str, **query: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = int(query.pop("after", 0))
    while True:
        status, page = await world.log(room, user, after=after, **query)
        assert status == 200, page
        out += page["messages"]
        assert page["next"] >= after
        after = page["next"]
        if not page["more"]:
            return out


async def test_one_send_reaches_every_member_socket_once_across_pods(world: RoomWorld) -> None:
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
    # Every socket of every member, the sending one too (its client skips its own).
    for ws in (a1, a2, b1, b2, c1):
        msg = await ws.expect("room_message")
        assert msg["room"] == room and msg["seq"] == 1
        assert msg["body"] == "Z3JvdXA" and msg["from"] == alice and msg["from_device"] == 1
        assert msg["server_id"] == accepted["server_id"] and msg["mentions"] == [bob]
    # One message stored once; no inbox item, no per-device receipt.
    assert worker.fanned_out._value.get() - before == 1
    await b1.send({"op": "sync", "id": "s", "after": 0})
    await b1.expect("synced", id="s")
    assert [f for f in b1.drain() if f["op"] in ("stored", "delivered", "message")] == []
    assert [f for f in a1.drain() if f["op"] in ("stored", "delivered", "message")] == []

    await b2.send(room_send("r2", room, "YmFjaw"))
    await b2.expect("accepted", id="r2")
    for ws in (a1, a2, b1, b2, c1):
        msg = await ws.expect("room_message", body="YmFjaw")
        assert msg["from"] == bob and msg["from_device"] == 2 and msg["seq"] == 2
        assert msg["mentions"] is None
    log = await whole_log(world, room, carol)
    assert [(m["seq"], m["body"]) for m in log] == [(1, "Z3JvdXA"), (2, "YmFjaw")]


async def test_every_member_sees_the_rooms_messages_in_one_order(world: RoomWorld) -> None:
    users = [uid() for _ in range(4)]
    room = await world.private_room(users[0], users[1:])
    socks = [await world.connect(u, pod=i % 2) for i, u in enumerate(users)]
    n = 40
    # Two senders interleave; the log numbers the messages 1..n, one order for all.
    for i in range(n):
        await socks[i % 2].send(room_send(f"o{i}", room, f"bXNn{i:03d}"))
    for i in range(n):
        await socks[i % 2].expect("accepted", id=f"o{i}")
    orders = []
    for ws in socks:
        got = sorted(await room_messages(ws, n), key=lambda g: g["seq"])
        assert [g["seq"] for g in got] == list(range(1, n + 1))
        orders.append([g["body"] for g in got])
    assert all(o == orders[0] for o in orders) and len(set(orders[0])) == n
    for k in (0, 1):  # each sender's messages in the order it sent them
        assert [b for b in orders[0] if int(b[4:]) % 2 == k] == [
            f"bXNn{i:03d}" for i in range(k, n, 2)
        ]
    assert [m["body"] for m in await whole_log(world, room, users[3])] == orders[0]


async def test_a_resend_is_stored_once(world: RoomWorld) -> None:
    alice, bob = uid(), uid()
    room = await world.private_room(alice, [bob])
    a = await world.connect(alice)
    b = await world.connect(bob, pod=1)
    worker = world.m.delivery.server.app[WORKER]
    before = worker.duplicates._value.get()
    pushed = []
    for n in range(3):
        # One at a time, each record in a batch of its own (a repeat inside one batch
        # is stored and counted once: services/delivery/room_log.py, RoomLog.append).
        await a.send(room_send("same", room, "b25jZQ"))
        await a.expect("accepted", id="same")
        pushed += await room_messages(b, 1)
        await eventually(lambda: _value(worker.duplicates._value.get()),
                         lambda v, n=n: v >= before + n)  # fmt: skip
    # A repeat is pushed again (its push may have been lost): the same number each time.
    assert {(m["seq"], m["server_id"]) for m in pushed} == {(1, pushed[0]["server_id"])}
    assert worker.duplicates._value.get() == before + 2
    assert [m["body"] for m in await whole_log(world, room, bob)] == ["b25jZQ"]


def room_reads(world: RoomWorld) -> float:
    """How many times the rooms service answered ``GET /rooms/v1/rooms/{room_id}``."""
    total = 0.0
    for metric in world.rooms.server.app[REGISTRY].collect():
        for sample in metric.samples:
            labels = sample.labels
            if (
                sample.name == "parley_http_requests_total"
                and labels.get("method") == "GET"
                and labels.get("route", "").endswith("/rooms/{room_id}")
            ):
                total += sample.value
    return total


async def test_the_room_is_read_again_only_after_it_changes(world: RoomWorld) -> None:
    """The gateway keeps the room under its send gate (docs/rooms.md, "The send gate"):
    read once, then again only after a change, and a removal or a close holds from
    the sender's next message after the change's answer."""
    owner, bob, carol = uid(), uid(), uid()
    room = await world.private_room(owner, [bob, carol])
    b = await world.connect(bob)
    o = await world.connect(owner, pod=1)
    await send_accepted(b, room, {"k0": "YQ"})
    reads = room_reads(world)
    await send_accepted(b, room, {f"k{i}": "YQ" for i in range(1, 6)})
    assert room_reads(world) == reads  # five messages, no read

    # Another member leaves: the gate moves, the next message reads the room once.
    assert (await world.call("POST", f"/rooms/{room}/leave", carol))[0] == 204
    await send_accepted(b, room, {"k6": "YQ", "k7": "YQ"})
    assert room_reads(world) == reads + 1

    # Redis lost the gate (a restart): a new one, which no kept copy carries.
    gate = world.m.hub(0).rooms.gate
    await gate.redis.delete(gate.key(room))
    await send_accepted(b, room, {"k8": "YQ", "k9": "YQ"})
    assert room_reads(world) == reads + 2

    # The owner closes the room: the owner's next message (on the other pod, its copy
    # kept too) and bob's are refused.
    await send_accepted(o, room, {"o1": "YQ"})
    status, body = await world.call("PATCH", f"/rooms/{room}", owner, {"state": "closed"})
    assert status == 200, body
    for ws, cid in ((o, "o2"), (b, "k10")):
        await ws.send(room_send(cid, room, "YQ"))
        assert (await ws.expect("error", id=cid))["code"] == "room_closed"
    status, body = await world.call("PATCH", f"/rooms/{room}", owner, {"state": "open"})
    assert status == 200, body
    await send_accepted(b, room, {"k11": "YQ"})

    # Bob is removed: his very next message is refused (a private room he is no
    # longer in is one he cannot see).
    assert (await world.call("DELETE", f"/rooms/{room}/members/{bob}", owner))[0] == 204
    await b.send(room_send("k12", room, "YQ"))
    assert (await b.expect("error", id="k12"))["code"] == "room_not_found"
    # Only the twelve accepted messages are in the room's log (k0-k9, o1, k11).
    assert len(await whole_log(world, room, owner)) == 12


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
    ws = await world.connect(owner, pod=1)
    await ws.send(room_send("who", room, "eA", mentions=[member, outsider]))
    err = await ws.expect("error", id="who")
    assert err["code"] == "validation_failed" and err["details"][0]["field"] == "mentions"
    status, _ = await world.call("PATCH", f"/rooms/{room}", owner, {"state": "closed"})
    assert status == 200
    ws = await world.connect(owner, pod=1)
    await ws.send(room_send("closed", room, "eA"))
    assert (await ws.expect("error", id="closed"))["code"] == "room_closed"
    # Nothing in the room's log (a closed room's history stays readable).
    assert await whole_log(world, room, member) == []
    assert await world.m.delivery.server.app[ROOM_LOG].head(room) == 0


async def test_a_send_for_other_member_devices_is_refused_with_the_current_lists(
    world: RoomWorld,
) -> None:
    """``device_digest`` names the member devices the sender gave its key to; the gateway
    refuses a message whose digest is not the room's member devices (``devices_changed``
    with every member's current list) and stores nothing, so a device linked a moment
    ago is never sent a message it cannot read (docs/rooms.md, "Private rooms")."""
    alice, bob, carol = uid(), uid(), uid()
    world.m.issuer.devices[alice] = [1, 2]
    world.m.issuer.devices[bob] = [1, 2]
    room = await world.private_room(alice, [bob, carol])
    ws = await world.connect(alice, 1, pod=0)
    everyone = [(alice, 2), (bob, 1), (bob, 2), (carol, 1)]

    await ws.send(room_send("right", room, "eA", device_digest=f.device_digest(everyone)))
    await ws.expect("accepted", id="right")

    # Carol linked a device and the pod's cached list is behind (its notice lost): the
    # lists are read again before a send that names the new device is refused.
    world.m.issuer.devices[carol] = [1, 2]
    everyone.append((carol, 2))
    await ws.send(room_send("fresh", room, "eA", device_digest=f.device_digest(everyone)))
    await ws.expect("accepted", id="fresh")

    # A sender that missed a device: refused with the current lists, nothing stored.
    await ws.send(room_send("behind", room, "eA", device_digest=f.device_digest(everyone[:-1])))
    err = await ws.expect("error", id="behind")
    assert err["code"] == "devices_changed"
    assert err["devices"] == [
        {"user": alice, "devices": [2]},
        {"user": bob, "devices": [1, 2]},
        {"user": carol, "devices": [1, 2]},
    ]

    # Bob links a device; the key directory's notice clears the pods' lists.
    world.m.issuer.devices[bob] = [1, 2, 3]
    for pod in (0, 1):
        world.m.hub(pod).devices.forget(bob)
    await ws.send(room_send("stale", room, "eA", device_digest=f.device_digest(everyone)))
    err = await ws.expect("error", id="stale")
    assert err["code"] == "devices_changed"
    assert {"user": bob, "devices": [1, 2, 3]} in err["devices"]
    everyone.append((bob, 3))
    await ws.send(room_send("stale", room, "eA", device_digest=f.device_digest(everyone)))
    await ws.expect("accepted", id="stale")

    for bad in ("short", "=" * 22, "x" * 23):
        await ws.send(room_send("bad", room, "eA", device_digest=bad))
        err = await ws.expect("error", id="bad")
        assert err["code"] == "validation_failed", bad
        assert err["details"][0]["field"] == "device_digest", err
    # Three stored, in order; the refused ones left nothing. (`accepted` is the
    # broker's ack: the third may reach the room's log a moment later.)
    log = await eventually(lambda: whole_log(world, room, bob), lambda got: len(got) >= 3)
    assert [m["seq"] for m in log] == [1, 2, 3]
    assert [m["server_id"] for m in log] == [
        e.room_server_id(room, alice, cid) for cid in ("right", "fresh", "stale")
    ]


async def test_many_rooms_logs_are_read_in_one_call(
    world: RoomWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``POST /delivery/v1/rooms/logs``, what a device does on connecting: a page of each
    private room it may read, in the order asked, and the rest named as refused; a
    room with nothing new answers an empty page at its number; an expired start
    pages from the log's oldest entry. 100 rooms (the most one call takes), three
    with messages."""
    alice, bob = uid(), uid()
    rooms = [await world.private_room(alice, [bob]) for _ in range(97)]
    outside = await world.private_room(alice, [])
    status, public = await world.call("POST", "/rooms", alice, {"name": "p", "kind": "public"})
    assert status == 201
    invited = await world.private_room(alice, [])
    world.m.issuer.users.add(bob)
    status, _ = await world.call("POST", f"/rooms/{invited}/invitations", alice, {"user": bob})
    assert status == 201
    ws = await world.connect(alice)
    for i, room in enumerate(rooms[:3]):
        await send_accepted(ws, room, {f"m{i}-{n}": "eA" for n in range(1 + i)})
    for i, room in enumerate(rooms[:3]):
        await eventually(lambda r=room: world.m.delivery.server.app[ROOM_LOG].head(r),
                         lambda h, i=i: h == 1 + i)  # fmt: skip
    strangers = [outside, public["room_id"], invited]
    asked = [*rooms, *strangers]
    body = {"rooms": [{"room": r, "after": 0} for r in asked]}
    status, got = await world.logs(bob, body)
    assert status == 200, got
    assert [p["room"] for p in got["pages"]] == rooms
    assert [len(p["messages"]) for p in got["pages"][:4]] == [1, 2, 3, 0]
    assert [p["next"] for p in got["pages"][:4]] == [1, 2, 3, 0]
    assert all(p == {"room": r, "messages": [], "next": 0, "more": False}
               for p, r in zip(got["pages"][3:], rooms[3:], strict=True))  # fmt: skip
    assert got["refused"] == strangers
    msg = got["pages"][2]["messages"][0]
    assert msg["op"] == "room_message" and msg["seq"] == 1 and msg["from"] == alice

    # One answer's messages are bounded, shared among the rooms: 200 for 100 rooms is 2
    # a room, and a room with more says so.
    monkeypatch.setattr(delivery_routes, "ROOM_LOGS_MESSAGES", 200)
    status, got = await world.logs(bob, {**body, "limit": 1000})
    assert status == 200, got
    assert [(len(p["messages"]), p["next"], p["more"]) for p in got["pages"][:4]] == [
        (1, 1, False),
        (2, 2, False),
        (2, 2, True),
        (0, 0, False),
    ]
    monkeypatch.undo()

    # A room asked for twice is answered twice, each from its own number.
    status, got = await world.logs(
        bob, {"rooms": [{"room": rooms[2]}, {"room": rooms[2], "after": 2}]}
    )
    assert status == 200, got
    assert [[m["seq"] for m in p["messages"]] for p in got["pages"]] == [[1, 2, 3], [3]]

    # From a number, a page at a time, since a time (a device linked later).
    status, got = await world.logs(
        bob, {"rooms": [{"room": rooms[2], "after": 1}, {"room": rooms[1]}], "limit": 1}
    )
    assert status == 200, got
    assert [(p["next"], p["more"]) for p in got["pages"]] == [(2, True), (1, True)]
    assert [m["seq"] for m in got["pages"][0]["messages"]] == [2]
    status, got = await world.logs(bob, {"rooms": [{"room": rooms[2]}], "since": 2**41})
    assert status == 200 and got["pages"][0]["messages"] == [], got

    # The first two entries of rooms[2] expired: reading from 0 starts at the oldest.
    log = world.m.delivery.server.app[ROOM_LOG]
    await log.log.delete_many({"_id": {"$in": [f"{rooms[2]}|{n:016d}" for n in (1, 2)]}})
    await log.heads.update_one({"_id": rooms[2]}, {"$set": {"low": 3}}, upsert=True)
    status, got = await world.logs(bob, {"rooms": [{"room": rooms[2]}, {"room": rooms[3]}]})
    assert status == 200, got
    assert [m["seq"] for m in got["pages"][0]["messages"]] == [3]
    assert got["pages"][1]["messages"] == []

    one = {"room": rooms[0], "after": 0}
    for bad in (
        {"rooms": []},
        {"rooms": [{"room": f"{i:024x}"} for i in range(101)]},
        {"rooms": [{"room": "nothex"}]},
        {"rooms": [{"room": rooms[0], "after": -1}]},
        {"rooms": [one], "limit": 0},
        {"rooms": [one], "extra": 1},
        {"rooms": [{"room": rooms[0], "after": "1"}]},
    ):
        status, err = await world.logs(bob, bad)
        assert (status, err["error"]["code"]) == (422, "validation_failed"), (bad, err)
    status, err = await world.logs(None, {"rooms": [one]})
    assert status == 401, err


async def test_reading_the_log_checks_who_asks_and_what(world: RoomWorld) -> None:
    owner, member, outsider, invitee = uid(), uid(), uid(), uid()
    room = await world.private_room(owner, [member])
    world.m.issuer.users.update({outsider, invitee})
    status, _ = await world.call("POST", f"/rooms/{room}/invitations", owner, {"user": invitee})
    assert status == 201
    status, public = await world.call("POST", "/rooms", owner, {"name": "pub", "kind": "public"})
    assert status == 201
    o = await world.connect(owner)
    await o.send(room_send("one", room, "b25l"))
    await o.expect("accepted", id="one")
    await eventually(lambda: world.log(room, member), lambda r: r[0] == 200 and r[1]["messages"])
    cases = [
        (outsider, room, {}, 404, "room_not_found"),
        (invitee, room, {}, 403, "not_a_member"),
        (owner, "0" * 24, {}, 404, "room_not_found"),
        (owner, public["room_id"], {}, 403, "forbidden"),
        (owner, "not-a-room", {}, 422, "validation_failed"),
        (owner, room, {"after": -1}, 422, "validation_failed"),
        (owner, room, {"after": "x"}, 422, "validation_failed"),
        (owner, room, {"limit": 0}, 422, "validation_failed"),
        (owner, room, {"limit": 1001}, 422, "validation_failed"),
        (owner, room, {"since": -5}, 422, "validation_failed"),
    ]
    for user, target, query, status, code in cases:
        got_status, body = await world.log(target, user, **query)
        assert (got_status, body["error"]["code"]) == (status, code), (user, target, query, body)
    status, page = await world.log(room, member)
    assert status == 200 and [m["body"] for m in page["messages"]] == ["b25l"]
    assert page["messages"][0]["op"] == "room_message" and page["next"] == 1


async def test_a_member_reads_only_what_was_stored_since_they_joined(world: RoomWorld) -> None:
    owner, early, late = uid(), uid(), uid()
    room = await world.private_room(owner, [early])
    o = await world.connect(owner)
    await send_accepted(o, room, {f"b{i}": f"YmVmb3Jl{i}" for i in range(5)})
    await eventually(lambda: whole_log(world, room, early), lambda ms: len(ms) == 5)
    await world.add(room, owner, late)
    await send_accepted(o, room, {f"a{i}": f"YWZ0ZXI{i}" for i in range(3)})
    await eventually(lambda: whole_log(world, room, early), lambda ms: len(ms) == 8)
    mine = await whole_log(world, room, late)
    assert [m["body"] for m in mine] == [f"YWZ0ZXI{i}" for i in range(3)]
    assert [m["seq"] for m in mine] == [6, 7, 8]
    # `since`: a device linked later reads from its link.
    all_of_it = await whole_log(world, room, early)
    cut = all_of_it[6]["sent_at"]
    status, page = await world.log(room, early, since=cut + 60_000)
    assert status == 200 and page["messages"] == [] and not page["more"]
    # Paging: small pages cover everything once, in order.
    paged = await whole_log(world, room, early, limit=3)
    assert [m["seq"] for m in paged] == list(range(1, 9))


async def test_a_removed_member_reads_and_gets_nothing_sent_after_removal(world: RoomWorld) -> None:
    owner, stays, removed = uid(), uid(), uid()
    room = await world.private_room(owner, [stays, removed])
    o = await world.connect(owner)
    s = await world.connect(stays, pod=1)
    r = await world.connect(removed, pod=1)
    await o.send(room_send("before", room, "YmVmb3Jl"))
    await r.expect("room_message", body="YmVmb3Jl")
    await s.expect("room_message", body="YmVmb3Jl")
    status, _ = await world.call("DELETE", f"/rooms/{room}/members/{removed}", owner)
    assert status == 204
    await o.send(room_send("after", room, "YWZ0ZXI"))
    await s.expect("room_message", body="YWZ0ZXI")
    await r.send({"op": "ping", "id": "p"})
    await r.expect("pong", id="p")
    assert [f for f in r.drain() if f["op"] == "room_message"] == []
    status, body = await world.log(room, removed)
    assert status == 404 and body["error"]["code"] == "room_not_found"


async def test_an_offline_member_device_reads_the_rooms_messages_from_the_log(
    world: RoomWorld,
) -> None:
    alice, bob = uid(), uid()
    world.m.issuer.devices[bob] = [1, 3]
    room = await world.private_room(alice, [bob])
    a = await world.connect(alice)
    await send_accepted(a, room, {f"x{i}": f"b2ZmbGluZQ{i}" for i in range(25)})
    got = await eventually(lambda: whole_log(world, room, bob), lambda ms: len(ms) >= 25)
    assert [m["body"] for m in got] == [f"b2ZmbGluZQ{i}" for i in range(25)]
    assert [m["seq"] for m in got] == list(range(1, 26))


async def test_a_removed_message_keeps_its_number_and_leaves_the_log(world: RoomWorld) -> None:
    alice, bob = uid(), uid()
    room = await world.private_room(alice, [bob])
    a = await world.connect(alice)
    await send_accepted(a, room, {f"m{i}": f"bXNn{i}" for i in range(3)})
    await eventually(lambda: whole_log(world, room, bob), lambda ms: len(ms) == 3)
    server_id = e.room_server_id(room, alice, "m2")
    headers = {"Authorization": f"Bearer {world.m.issuer.token(alice)}"}
    resp = await world.m.delivery.delete(
        f"/delivery/v1/messages/{server_id}",
        params={"client_id": "m2", "conversation": f"room:{room}"}, headers=headers,
    )  # fmt: skip
    assert resp.status == 200, await resp.text()
    status, page = await world.log(room, bob)
    assert status == 200 and [m["body"] for m in page["messages"]] == ["bXNn0", "bXNn1"]
    assert page["next"] == 3  # the removed one is covered: a reader goes on after it
    doc = await world.m.delivery.server.app[ROOM_LOG].log.find_one({"server_id": server_id})
    assert doc is not None and doc["gone"] and doc["body"] == ""
    # A copy of the removed message that comes again stores nothing and is not pushed.
    b = await world.connect(bob, pod=1)
    await a.send(room_send("m2", room, "bXNn2"))
    await a.expect("accepted", id="m2")
    await a.send(room_send("m3", room, "bXNn3"))
    await a.expect("accepted", id="m3")
    msg = await b.expect("room_message")
    assert (msg["body"], msg["seq"]) == ("bXNn3", 4)
    assert world.m.delivery.server.app[MODERATION].room_log.log is not None


async def _value(v: float) -> float:
    return v
