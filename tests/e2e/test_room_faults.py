"""A private room of 200 members through HAProxy: kill -9 the delivery worker, Redis (no
persistence: every dedup record and presence entry gone), MongoDB, or the gateway pod
half the members are connected to, in the middle of sending messages; after the restart every
member reads every accepted message exactly once from the room's log, in the room's
order (docs/rooms.md, "The room log")."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import pytest

from tests.support.aio import eventually
from tests.support.chat import b64, unb64
from tests.support.stack import System, http_status
from tests.support.users import User, signup
from tests.support.wsclient import WsClient

MEMBERS = 200
MESSAGES = 30
CONCURRENCY = 12


async def bounded(n: int, work: Any) -> list[Any]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> Any:
        async with gate:
            return await work(i)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def call(http: aiohttp.ClientSession, method: str, url: str, token: str,
               body: Any = None, expect: int = 200) -> Any:  # fmt: skip
    async with http.request(method, url, json=body,
                            headers={"Authorization": f"Bearer {token}"}) as r:  # fmt: skip
        data = await r.json() if r.content_type == "application/json" else None
        assert r.status == expect, (method, url, r.status, data)
        return data


async def room_log(
    http: aiohttp.ClientSession, lb: str, user: User, rid: str
) -> list[dict[str, Any]]:
    """The whole room's log as ``user`` reads it, by HTTP pages."""
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        page = await call(http, "GET", f"{lb}/delivery/v1/rooms/{rid}/log?after={after}&limit=1000",
                          user.token)  # fmt: skip
        out += page["messages"]
        after = page["next"]
        if not page["more"]:
            return out


async def private_room(http: aiohttp.ClientSession, lb: str) -> tuple[User, list[User], str]:
    """An owner, MEMBERS - 1 members who accepted its invitation, and the room's id."""
    owner = await signup(lb, "own")
    members = await bounded(MEMBERS - 1, lambda _: signup(lb, "mem"))
    room = await call(http, "POST", f"{lb}/rooms/v1/rooms", owner.token,
                      {"name": "two hundred", "kind": "private"}, 201)  # fmt: skip
    rid = room["room_id"]

    async def join(i: int) -> None:
        m = members[i]
        await call(http, "POST", f"{lb}/rooms/v1/rooms/{rid}/invitations", owner.token,
                   {"user": m.user_id}, 201)  # fmt: skip
        await call(http, "POST", f"{lb}/rooms/v1/rooms/{rid}/invitation/accept", m.token)

    await bounded(len(members), join)
    return owner, members, rid


async def send_all(ws: WsClient, rid: str, accepted: dict[str, str]) -> None:
    """``fan-0`` .. the last, each sent until it is accepted (client id -> server id)."""
    for i in range(MESSAGES):
        cid = f"fan-{i}"
        while cid not in accepted:
            await ws.send({"op": "room_send", "id": cid, "room": rid, "body": b64(cid)})
            # Kafka or Redis briefly away (an error, or no answer): the same id
            # again is safe.
            with contextlib.suppress(TimeoutError):
                frame = await ws.expect_any(("accepted", "error"), timeout=10, id=cid)
                if frame["op"] == "accepted":
                    accepted[cid] = frame["server_id"]
                    break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.02)


async def assert_every_log_complete(
    system: System, http: aiohttp.ClientSession, members: list[User], rid: str,
    accepted: dict[str, str],
) -> None:  # fmt: skip
    """Every member reads every accepted message from the room's log, once, numbered 1..n
    in the order sent."""
    # HAProxy answers 503 until a restarted worker is ready.
    await asyncio.to_thread(system.wait_ready)
    assert len(accepted) == MESSAGES
    wanted = [f"fan-{i}" for i in range(MESSAGES)]

    async def complete(user: User) -> list[dict[str, Any]]:
        return await eventually(
            lambda: room_log(http, system.lb, user, rid),
            lambda items: len(items) >= MESSAGES, timeout=120, interval=0.5,
        )  # fmt: skip

    logs = await bounded(len(members), lambda i: complete(members[i]))
    for user, items in zip(members, logs, strict=True):
        assert [i["seq"] for i in items] == list(range(1, MESSAGES + 1)), user.username
        assert [i["server_id"] for i in items] == [accepted[c] for c in wanted], user.username
        assert [unb64(i["body"]) for i in items] == wanted, user.username


def kill_and_restart(system: System, victim: str) -> None:
    procs = system.stack.procs
    assert procs is not None
    procs.kill(victim)
    procs.start(victim)


async def mongodb_outage(system: System) -> None:
    """kill -9 of MongoDB (the room log's store, and the rooms service's), kept down until
    delivery says it waits for it, then started again. Meanwhile sends are refused
    while the room cannot be read (the owner sends the same id again), and what was
    accepted waits in Kafka."""
    infra = system.stack.procs
    assert infra is not None
    infra.kill("mongo")
    try:
        ready = system.cfg.url("ops") + "/delivery/readyz"
        await eventually(
            lambda: asyncio.to_thread(http_status, ready), lambda s: s == 503, timeout=60
        )
    finally:
        infra.start("mongo")


@pytest.mark.parametrize(
    "victim", ["delivery", pytest.param("redis", marks=pytest.mark.kills_servers),
               pytest.param("mongo", marks=pytest.mark.kills_servers)],
)  # fmt: skip
async def test_kill_9_mid_fan_out_to_200_members_loses_and_duplicates_nothing(
    system: System, victim: str
) -> None:
    async with aiohttp.ClientSession() as http:
        owner, members, rid = await private_room(http, system.lb)
        ws = await WsClient.connect(system.ws_url, owner.token)
        accepted: dict[str, str] = {}
        try:
            sending = asyncio.create_task(send_all(ws, rid, accepted))
            # Kill once part of the stream is accepted: fan-outs are in flight.
            await eventually(lambda: asyncio.sleep(0, len(accepted)), lambda k: k >= 8)
            if victim == "delivery":
                system.procs.kill("delivery")
                try:
                    await asyncio.wait_for(sending, 120)
                finally:
                    system.restart("delivery")
            elif victim == "mongo":
                await mongodb_outage(system)
                await asyncio.wait_for(sending, 180)
            else:
                await asyncio.to_thread(kill_and_restart, system, victim)
                await asyncio.wait_for(sending, 120)
        finally:
            await ws.close()
        await assert_every_log_complete(system, http, members, rid, accepted)


async def test_kill_9_a_gateway_mid_fan_out_loses_and_duplicates_nothing(
    system: System,
) -> None:
    """Every member online (one socket each, spread over both pods by HAProxy); the
    pod the owner is not on dies mid-stream. Its members' sockets close; the others
    get every message pushed, in order (a resend of the owner's is pushed again under
    its number: a client drops it); every member reads the whole log."""
    async with aiohttp.ClientSession() as http:
        owner, members, rid = await private_room(http, system.lb)
        ws = await WsClient.connect(system.ws_url, owner.token)
        sockets = await bounded(len(members),
                                lambda i: WsClient.connect(system.ws_url, members[i].token))  # fmt: skip
        victim = next(
            gw for gw in ("gateway1", "gateway2") if gw != ws.ready["gateway"]
        )  # fmt: skip
        on_victim = [s.ready["gateway"] == victim for s in sockets]
        assert 0 < sum(on_victim) < len(members), "HAProxy put every member on one pod"
        accepted: dict[str, str] = {}
        try:
            sending = asyncio.create_task(send_all(ws, rid, accepted))
            await eventually(lambda: asyncio.sleep(0, len(accepted)), lambda k: k >= 8)
            system.procs.kill(victim)
            try:
                await asyncio.wait_for(sending, 120)
            finally:
                system.restart(victim)
            wanted = [f"fan-{i}" for i in range(MESSAGES)]

            async def pushed(i: int) -> list[str]:
                got: dict[int, str] = {}
                while len(got) < MESSAGES:
                    frame = await sockets[i].expect("room_message", timeout=60)
                    assert frame["room"] == rid
                    body = unb64(frame["body"])
                    assert got.setdefault(frame["seq"], body) == body  # a repeat is the same
                return [got[k] for k in sorted(got)]

            survivors = [i for i, dead in enumerate(on_victim) if not dead]
            for i, got in zip(survivors, await bounded(len(survivors), lambda k: pushed(survivors[k])),
                              strict=True):  # fmt: skip
                assert got == wanted, members[i].username  # each, in order
                extra = [f for f in sockets[i].drain() if f["op"] == "room_message"]
                assert all(f["seq"] <= MESSAGES for f in extra), members[i].username
            for i, dead in enumerate(on_victim):
                if dead:  # closed with its pod (a timeout here fails the test)
                    await sockets[i].wait_closed(30)
        finally:
            await ws.close()
            await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)
        await assert_every_log_complete(system, http, members, rid, accepted)
