"""Typing in a room: a hint to its members' sockets on every pod, not stored
(docs/rooms.md, "Typing"; docs/protocol.md, `typing`). The rooms service and two
gateway pods in-process on the real embedded servers."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.room_world import RoomWorld
from tests.support.users import uid
from tests.support.wsclient import WsClient


def typing(room: str, on: bool = True, fid: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"op": "typing", "room": room, "typing": on}
    return frame if fid is None else {**frame, "id": fid}


async def first_typing(ws: WsClient) -> dict[str, Any]:
    return await ws.expect("typing")


async def test_typing_reaches_every_member_socket_on_both_pods_and_no_one_else(
    world: RoomWorld,
) -> None:
    owner, bob, carol, outsider, other_owner = uid(), uid(), uid(), uid(), uid()
    room = await world.private_room(owner, [bob, carol])
    elsewhere = await world.private_room(other_owner, [outsider])
    me = await world.connect(owner, pod=0)
    bob1 = await world.connect(bob, device=1, pod=0)
    bob2 = await world.connect(bob, device=2, pod=1)
    carol1 = await world.connect(carol, pod=1)
    out = await world.connect(outsider, pod=0)

    await me.send(typing(room))
    want = {"op": "typing", "room_id": room, "user": owner, "device": 1, "typing": True}
    for ws in (bob1, bob2, carol1, me):  # the typer's own user too (its client skips it)
        assert await first_typing(ws) == want
    await me.send(typing(room, on=False))
    for ws in (bob1, bob2, carol1):
        assert await first_typing(ws) == {**want, "typing": False}
    # The outsider's first typing notice is one of its own room's: none of `room`'s
    # (the room channel reaches a pod in publish order).
    other = await world.connect(other_owner, pod=1)
    await other.send(typing(elsewhere))
    got = await first_typing(out)
    assert (got["room_id"], got["user"]) == (elsewhere, other_owner)
    # Nothing was stored: a sync returns no item.
    await bob1.send({"op": "sync", "id": "s", "after": 0})
    await bob1.expect("synced", id="s")
    assert [x for x in bob1.drain() if x["op"] == "message"] == []


async def test_typing_in_a_public_room_reaches_its_members(world: RoomWorld) -> None:
    owner, member = uid(), uid()
    world.m.issuer.users.update({owner, member})
    status, room = await world.call("POST", "/rooms", owner, {"name": "pub", "kind": "public"})
    assert status == 201
    status, _ = await world.call("POST", f"/rooms/{room['room_id']}/join", member)
    assert status == 200
    them = await world.connect(member, pod=1)
    me = await world.connect(owner, pod=0)
    await me.send(typing(room["room_id"]))
    got = await first_typing(them)
    assert (got["room_id"], got["user"], got["typing"]) == (room["room_id"], owner, True)


async def test_bad_typing_is_refused_and_tells_no_one(world: RoomWorld) -> None:
    owner, member, outsider, invitee = uid(), uid(), uid(), uid()
    room = await world.private_room(owner, [member])
    world.m.issuer.users.update({outsider, invitee})
    status, _ = await world.call("POST", f"/rooms/{room}/invitations", owner, {"user": invitee})
    assert status == 201
    watcher = await world.connect(member, pod=1)
    cases = [
        (outsider, typing(room, fid="t"), "room_not_found"),
        (invitee, typing(room, fid="t"), "not_a_member"),
        (owner, typing("0" * 24, fid="t"), "room_not_found"),
        (owner, typing("ZZ" * 12, fid="t"), "validation_failed"),
        (owner, {**typing(room, fid="t"), "extra": 1}, "validation_failed"),
        (owner, {"op": "typing", "id": "t"}, "validation_failed"),
    ]
    for user, frame, code in cases:
        ws = await world.connect(user)
        await ws.send(frame)
        err = await ws.expect("error", id="t")
        assert err["code"] == code, (user, frame, err)
    # Once per TYPING_EVERY_S: the second start is refused; a stop is always let through.
    me = await world.connect(owner, pod=0)
    await me.send(typing(room, fid="a"))
    await me.send(typing(room, fid="b"))
    assert (await me.expect("error", id="b"))["code"] == "rate_limited"
    await me.send(typing(room, on=False, fid="c"))
    # A stop with no start before it has nothing to stop: no notice.
    await me.send(typing(room, on=False, fid="d"))
    # Closed: no typing either.
    status, _ = await world.call("PATCH", f"/rooms/{room}", owner, {"state": "closed"})
    assert status == 200
    other = await world.connect(owner, device=2, pod=1)
    await other.send(typing(room, fid="e"))
    assert (await other.expect("error", id="e"))["code"] == "room_closed"
    # The member heard exactly the one start and the one stop.
    assert (await first_typing(watcher))["typing"] is True
    assert (await first_typing(watcher))["typing"] is False
    await watcher.send({"op": "ping", "id": "p"})
    await watcher.expect("pong", id="p")
    assert [x for x in watcher.drain() if x["op"] == "typing"] == []


async def test_starting_again_right_after_a_stop_is_refused(world: RoomWorld) -> None:
    """Audit finding: a stop forgot the start's time, so start, stop, start... went
    through without limit: each a notice carrying the room's members to every pod."""
    owner, member = uid(), uid()
    room = await world.private_room(owner, [member])
    watcher = await world.connect(member, pod=1)
    me = await world.connect(owner, pod=0)
    for i, on in enumerate([True, False, True, False, True]):
        await me.send(typing(room, on=on, fid=f"t{i}"))
    assert (await me.expect("error", id="t2"))["code"] == "rate_limited"
    assert (await me.expect("error", id="t4"))["code"] == "rate_limited"
    assert (await first_typing(watcher))["typing"] is True
    assert (await first_typing(watcher))["typing"] is False
    await watcher.send({"op": "ping", "id": "p"})
    await watcher.expect("pong", id="p")
    assert [x for x in watcher.drain() if x["op"] == "typing"] == []


async def test_typing_to_rooms_that_do_not_exist_is_bounded_and_then_closes(
    world: RoomWorld,
) -> None:
    """Audit finding: ``typing`` frames to random room ids were unlimited; each asked
    the rooms service and left a send gate in Redis for a day. Now a user's typing
    frames share a small bucket, refusals count toward the flood close (4009), and a
    gate a read starts lasts two minutes."""
    from services.gateway.connection import FLOOD_VIOLATIONS
    from services.gateway.hub import TYPING_BURST

    user = uid()
    world.m.issuer.users.add(user)
    ws = await world.connect(user, pod=0)
    rooms = [f"{i:024x}" for i in range(FLOOD_VIOLATIONS + 5)]
    for i, room in enumerate(rooms):
        await ws.send(typing(room, fid=f"t{i}"))
    assert await ws.wait_closed() == 4009
    errors = [x for x in ws.drain() if x["op"] == "error"]
    codes = [e["code"] for e in errors]
    assert codes.count("room_not_found") <= TYPING_BURST + 1  # + what refilled meanwhile
    assert codes.count("rate_limited") >= FLOOD_VIOLATIONS - TYPING_BURST
    store = world.m.hub(0).store
    redis = store.redis
    gates = [k async for k in redis.scan_iter(match=f"{store.prefix}:rgate:*", count=1000)]
    looked_up = [k for k in gates if k.decode().rsplit(":", 1)[1] in set(rooms)]
    assert len(looked_up) <= TYPING_BURST + 1
    for key in looked_up:
        assert 0 < await redis.ttl(key) <= 120


async def test_starting_again_too_soon_is_refused_but_never_closes_the_socket(
    world: RoomWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: a start refused for coming within 2 s of the last counted toward
    the flood close, and a client from before the rule (start, send: stop, start again)
    does that once per message: its socket was closed 4009 after 400 messages."""
    from services.gateway import connection, hub

    monkeypatch.setattr(connection, "FLOOD_VIOLATIONS", 5)
    monkeypatch.setattr(hub, "TYPING_BURST", 1000)
    owner, member = uid(), uid()
    room = await world.private_room(owner, [member])
    me = await world.connect(owner, pod=0)
    for i in range(10):  # start (refused but the first), stop, ...
        await me.send(typing(room, on=True, fid=f"s{i}"))
        await me.send(typing(room, on=False, fid=f"x{i}"))
    for i in range(1, 10):
        assert (await me.expect("error", id=f"s{i}"))["code"] == "rate_limited"
    await me.send({"op": "ping", "id": "p"})
    await me.expect("pong", id="p")
    assert me.close_code is None
