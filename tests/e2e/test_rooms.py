"""Rooms through HAProxy with real accounts and tokens, at the sizes real users reach:
a public room of 1,000 members joining, being listed and getting live posts on 160
sockets while 100 leave, and a timeline of more than 10,000 messages paged to the end
(docs/rooms.md, "Sizes")."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient

from services.rooms.store import message_id
from tests.support.stack import System
from tests.support.wsclient import WsClient

MEMBERS = 1000
SEEDED = 10_000
POSTED = 300
CONCURRENCY = 16


@dataclass
class Account:
    user_id: str
    username: str
    token: str


class Http:
    def __init__(self, lb: str, session: aiohttp.ClientSession) -> None:
        self.lb = lb
        self.session = session

    async def call(self, method: str, path: str, token: str | None, body: Any = None,
                   expect: int | None = None) -> tuple[int, Any]:  # fmt: skip
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(method, self.lb + path, json=body, headers=headers) as r:
            data = await r.json() if r.content_type == "application/json" else None
            if expect is not None:
                assert r.status == expect, (method, path, r.status, data)
            return r.status, data

    async def signup(self, prefix: str) -> Account:
        name = f"{prefix}{secrets.token_hex(5)}"
        # A session bound to a device: its token opens a socket.
        body = {
            "username": name,
            "email": f"{name}@example.test",
            "password": "correct horse " + secrets.token_hex(8),
            "device_id": 1,
        }
        status, out = await self.call("POST", "/auth/v1/signup", None, body)
        assert status in (200, 201), out
        return Account(out["user"]["user_id"], name, out["access_token"])


async def bounded(n: int, work: Any) -> list[Any]:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> Any:
        async with sem:
            return await work(i)

    return await asyncio.gather(*(one(i) for i in range(n)))


@pytest.fixture
async def http(system: System) -> Any:
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=CONCURRENCY * 2)
    ) as session:
        yield Http(system.lb, session)


@pytest.mark.timeout(900)
async def test_a_room_of_a_thousand_members(system: System, http: Http) -> None:
    owner = await http.signup("own")
    _, room = await http.call("POST", "/rooms/v1/rooms", owner.token,
                              {"name": f"Town square {secrets.token_hex(3)}", "kind": "public"},
                              expect=201)  # fmt: skip
    rid = room["room_id"]
    t0 = time.perf_counter()
    users = await bounded(MEMBERS - 1, lambda i: http.signup("m"))
    t1 = time.perf_counter()
    joined = await bounded(
        len(users), lambda i: http.call("POST", f"/rooms/v1/rooms/{rid}/join", users[i].token)
    )
    t2 = time.perf_counter()
    assert {s for s, _ in joined} == {200}
    _, got = await http.call("GET", f"/rooms/v1/rooms/{rid}", owner.token, expect=200)
    assert got["members"] == MEMBERS
    # Listed in full, in pages, each member once.
    listed: list[str] = []
    after = 0
    pages = 0
    while True:
        _, page = await http.call(
            "GET", f"/rooms/v1/rooms/{rid}/members?after={after}&limit=500", users[7].token,
            expect=200,
        )  # fmt: skip
        pages += 1
        listed += [m["user_id"] for m in page["members"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    t3 = time.perf_counter()
    assert len(listed) == MEMBERS and len(set(listed)) == MEMBERS
    assert set(listed) == {owner.user_id, *(u.user_id for u in users)}
    # Live posts at this size: 160 members' sockets through HAProxy (both pods), 40 of
    # them about to leave; every one gets the post once.
    watched = [*users[:40], *users[100:220]]
    sockets = await bounded(
        len(watched), lambda i: WsClient.connect(system.ws_url, watched[i].token)
    )
    try:
        _, first = await http.call("POST", f"/rooms/v1/rooms/{rid}/messages", owner.token,
                                   {"client_id": "big-1", "text": "to all 1,000"}, expect=201)  # fmt: skip
        for ws in sockets:
            assert (await ws.expect("room_post", room_id=rid))["seq"] == first["seq"]
        # Presence at this size: the 160 with a socket are online, the other 840 not;
        # every member named as they signed up (two pages of 500).
        online: set[str] = set()
        names: dict[str, str] = {}
        after = 0
        while True:
            _, page = await http.call(
                "GET", f"/rooms/v1/rooms/{rid}/members?after={after}&limit=500", owner.token,
                expect=200,
            )  # fmt: skip
            online |= {m["user_id"] for m in page["members"] if m["online"]}
            names |= {m["user_id"]: m["username"] for m in page["members"]}
            if page["next_after"] is None:
                break
            after = page["next_after"]
        assert online == {u.user_id for u in watched}
        assert names == {a.user_id: a.username for a in (owner, *users)}
        await _after_the_leaves(http, owner, rid, users, sockets)
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))
    # The hundred who left: the list and the count follow.
    leavers = users[:100]
    _, got = await http.call("GET", f"/rooms/v1/rooms/{rid}", owner.token, expect=200)
    assert got["members"] == MEMBERS - 100
    remaining: list[str] = []
    after = 0
    while True:
        _, page = await http.call("GET", f"/rooms/v1/rooms/{rid}/members?after={after}&limit=500",
                                  owner.token, expect=200)  # fmt: skip
        remaining += [m["user_id"] for m in page["members"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert set(remaining) == set(listed) - {u.user_id for u in leavers}
    # A member's own list shows the room.
    _, mine = await http.call("GET", "/rooms/v1/rooms", users[500].token, expect=200)
    assert [r["room_id"] for r in mine["rooms"]] == [rid]
    print(
        f"\nrooms at size: {MEMBERS - 1} sign-ups in {t1 - t0:.1f}s; "
        f"{MEMBERS - 1} joins in {t2 - t1:.1f}s ({(MEMBERS - 1) / (t2 - t1):.0f}/s, "
        f"{CONCURRENCY} at a time); {MEMBERS} members listed in {pages} pages "
        f"in {(t3 - t2) * 1000:.0f} ms"
    )


async def _after_the_leaves(
    http: Http, owner: Account, rid: str, users: list[Account], sockets: list[WsClient]
) -> None:
    """The first 100 of ``users`` leave; the next post reaches the 120 watched
    stayers once and none of the 40 watched leavers, whose next room frame is one
    of a room they joined after (a pod gets the rooms service's frames in the order
    they were published)."""
    left = await bounded(
        100, lambda i: http.call("POST", f"/rooms/v1/rooms/{rid}/leave", users[i].token)
    )
    assert {s for s, _ in left} == {204}
    _, post = await http.call("POST", f"/rooms/v1/rooms/{rid}/messages", owner.token,
                              {"client_id": "big-2", "text": "after the leaves"}, expect=201)  # fmt: skip
    for ws in sockets[40:]:
        assert (await ws.expect("room_post", room_id=rid))["seq"] == post["seq"]
    _, other = await http.call("POST", "/rooms/v1/rooms", owner.token,
                               {"name": f"Elsewhere {secrets.token_hex(3)}", "kind": "public"},
                               expect=201)  # fmt: skip
    oid = other["room_id"]
    joined = await bounded(
        40, lambda i: http.call("POST", f"/rooms/v1/rooms/{oid}/join", users[i].token)
    )
    assert {s for s, _ in joined} == {200}
    await http.call("POST", f"/rooms/v1/rooms/{oid}/messages", owner.token,
                    {"client_id": "other-1", "text": "elsewhere"}, expect=201)  # fmt: skip
    for ws in sockets[:40]:
        assert (await ws.expect("room_post"))["room_id"] == oid


@pytest.mark.timeout(900)
async def test_a_timeline_of_ten_thousand_messages(system: System, http: Http) -> None:
    alice = await http.signup("al")
    bob = await http.signup("bo")
    reader = await http.signup("rd")
    _, room = await http.call("POST", "/rooms/v1/rooms", alice.token,
                              {"name": f"Busy {secrets.token_hex(3)}", "kind": "public"},
                              expect=201)  # fmt: skip
    rid = room["room_id"]
    await http.call("POST", f"/rooms/v1/rooms/{rid}/join", bob.token, expect=200)
    # Seed the room's history in the service's own layout (as an import would),
    # then post on top of it through the load balancer.
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        system.cfg.url("mongo"), retryWrites=False
    )
    try:
        db = client[f"{system.prefix}_rooms"]
        doc = await db["rooms"].find_one_and_update(
            {"_id": rid}, {"$inc": {"seq": SEEDED}}, return_document=True
        )
        assert doc is not None and doc["seq"] == SEEDED
        seeded = [
            {"_id": message_id(rid, s), "room": rid, "seq": s, "sender": alice.user_id,
             "client_id": f"seed-{s}", "text": f"seeded {s}", "mentions": [],
             "sent_at": 1_700_000_000_000 + s}
            for s in range(1, SEEDED + 1)
        ]  # fmt: skip
        for i in range(0, SEEDED, 1000):
            await db["messages"].insert_many(seeded[i : i + 1000])
    finally:
        await client.close()
    t0 = time.perf_counter()
    posted = await bounded(
        POSTED,
        lambda i: http.call(
            "POST", f"/rooms/v1/rooms/{rid}/messages", (alice, bob)[i % 2].token,
            {"client_id": f"live-{i}", "text": f"live {i} @{alice.username}"},
        ),
    )  # fmt: skip
    t1 = time.perf_counter()
    assert {s for s, _ in posted} == {201}
    seqs = sorted(b["seq"] for _, b in posted)
    assert seqs == list(range(SEEDED + 1, SEEDED + POSTED + 1))
    # Resends return the originals and add nothing.
    again = await bounded(
        20,
        lambda i: http.call(
            "POST", f"/rooms/v1/rooms/{rid}/messages", (alice, bob)[i % 2].token,
            {"client_id": f"live-{i}", "text": "resent"},
        ),
    )  # fmt: skip
    assert all(b["duplicate"] and b["seq"] == posted[i][1]["seq"] for i, (_, b) in enumerate(again))
    # A reader who is not a member pages from the newest to the very first.
    t2 = time.perf_counter()
    got: list[int] = []
    before: int | None = None
    pages = 0
    while True:
        q = f"?limit=200&before={before}" if before else "?limit=200"
        _, page = await http.call("GET", f"/rooms/v1/rooms/{rid}/messages{q}", reader.token,
                                  expect=200)  # fmt: skip
        pages += 1
        got += [m["seq"] for m in page["messages"]]
        before = page["next_before"]
        if before is None:
            break
    t3 = time.perf_counter()
    total = SEEDED + POSTED
    assert got == list(range(total, 0, -1))
    # bob's half mentioned alice: her notifications, each pointing at its message.
    _, notes = await http.call("GET", "/rooms/v1/notifications?limit=200", alice.token, expect=200)
    assert notes["unread"] == POSTED // 2
    first = notes["notifications"][0]
    _, at = await http.call(
        "GET", f"/rooms/v1/rooms/{rid}/messages?before={first['message_seq'] + 1}&limit=1",
        alice.token, expect=200,
    )  # fmt: skip
    assert at["messages"][0]["sender"] == bob.user_id
    print(
        f"\ntimeline at size: {POSTED} posts in {t1 - t0:.1f}s ({POSTED / (t1 - t0):.0f}/s, "
        f"{CONCURRENCY} at a time); {total} messages paged newest to first in {pages} pages "
        f"of 200 in {t3 - t2:.1f}s ({(t3 - t2) / pages * 1000:.0f} ms a page)"
    )


async def test_private_rooms_stay_private_through_the_load_balancer(
    system: System, http: Http
) -> None:
    owner, friend, stranger = await asyncio.gather(*(http.signup(p) for p in ("pa", "pb", "pc")))
    _, room = await http.call("POST", "/rooms/v1/rooms", owner.token,
                              {"name": "Surprise party", "kind": "private"}, expect=201)  # fmt: skip
    rid = room["room_id"]
    await http.call("POST", f"/rooms/v1/rooms/{rid}/invitations", owner.token,
                    {"user": friend.username}, expect=201)  # fmt: skip
    await http.call("POST", f"/rooms/v1/rooms/{rid}/invitation/accept", friend.token, expect=200)
    for method, path in (
        ("GET", f"/rooms/v1/rooms/{rid}"), ("POST", f"/rooms/v1/rooms/{rid}/join"),
        ("GET", f"/rooms/v1/rooms/{rid}/members"),
    ):  # fmt: skip
        status, body = await http.call(method, path, stranger.token)
        assert (status, body["error"]["code"]) == (404, "room_not_found")
    _, found = await http.call("GET", "/rooms/v1/directory?q=surprise", stranger.token)
    assert found["rooms"] == []
    _, members = await http.call("GET", f"/rooms/v1/rooms/{rid}/members", friend.token)
    assert {m["user_id"] for m in members["members"]} == {owner.user_id, friend.user_id}
