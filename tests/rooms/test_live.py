"""Live frames from the rooms service: ``room_post`` to a public room's connected members
and ``notification`` for a mention, through two real gateway pods (Redis presence and
pub/sub), and the mention notices on ``<prefix>notifications`` for the notifier."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from parley_contract import frames as f
from parley_contract.envelopes import decode_notice

from services.common import routing
from services.common.routing import gateway_channel, room_channel
from services.common.state import REDIS
from services.rooms import push
from services.rooms.store import member_id, now_ms, roster_id
from tests.rooms.conftest import RecordLog, RoomsApi
from tests.support.messaging import Messaging


async def test_a_post_reaches_connected_members_and_a_mention_its_user(
    api: RoomsApi, messaging: Messaging, notices: RecordLog
) -> None:
    alice, bob, carol, dave = (api.user() for _ in range(4))
    room = await api.room(alice, name="town square")
    for u in (bob, carol):
        assert (await api.join(u, room))[0] == 200
    other = await api.room(dave, name="elsewhere")  # dave is not in `room`
    a = await messaging.connect(alice, pod=1)
    b = await messaging.connect(bob, pod=0)
    d = await messaging.connect(dave, pod=0)
    # carol is a member with no socket: nothing is published for her.

    status, msg = await api.post(alice, room, f"hello @{api.username(bob)} and @nobody")
    assert status == 201, msg
    post = await b.expect("room_post", room_id=room)
    assert post == {
        "op": "room_post", "room_id": room, "seq": msg["seq"], "sender": alice,
        "client_id": msg["client_id"], "text": msg["text"], "mentions": [bob],
        "sent_at": msg["sent_at"],
    }  # fmt: skip
    note = await b.expect("notification")
    assert note["room_id"] == room and note["room_name"] == "town square"
    assert note["message_seq"] == msg["seq"] and note["server_id"] is None
    assert note["sender"] == alice and note["kind"] == "mention"
    assert note["excerpt"].startswith("hello @")
    status, page = await api.notifications(bob)
    assert status == 200 and page["notifications"][0]["seq"] == note["seq"]
    # The sender's own sockets get the post (her other devices show it) but no notification.
    assert (await a.expect("room_post", room_id=room))["seq"] == msg["seq"]

    # Dave is not a member: a later post in his own room is the first frame he gets
    # (one gateway channel delivers in order, so an earlier room_post would be ahead).
    assert (await api.post(dave, other, "mine"))[0] == 201
    first = await d.expect_any(("room_post", "notification"))
    assert first["room_id"] == other
    assert not [x for x in a.drain() if x["op"] == "notification"]

    # A resend is answered with the original and not pushed again: the next post is next.
    assert (await api.post(alice, room, "again", client_id=msg["client_id"]))[1]["duplicate"]
    status, second = await api.post(alice, room, "second")
    assert (await b.expect("room_post", room_id=room))["seq"] == second["seq"]

    # The notifier's notice: one per notification, keyed by the user.
    await notices.until(lambda vs: len(vs) >= 1)
    notice = decode_notice(notices.records[0][1])
    assert notices.records[0][0] == bob.encode()
    assert (notice.user, notice.n, notice.kind, notice.room_id) == (
        bob,
        note["seq"],
        "public",
        room,
    )
    assert notice.message_seq == msg["seq"] and notice.sender == alice
    # Bob was connected: the notifier mails nothing for it, however late it reads it.
    assert notice.live
    assert len(notices.records) == 1


async def seed_members(api: RoomsApi, room: str, users: list[str]) -> None:
    """Members in the service's own layout (a join is ~8 writes; 1,000 through the API
    is tests/e2e/test_rooms.py's job): member documents, roster slots, the counters."""
    store = api.rooms.store
    start = int((await store.get_room(room) or {})["slots"])
    members, roster = [], []
    for i, u in enumerate(users, start=start + 1):
        members.append({"_id": member_id(room, u), "room": room, "user": u, "role": "member",
                        "slot": i, "user_slot": None, "joined_at": now_ms()})  # fmt: skip
        roster.append({"_id": roster_id(room, i), "user": u})
    await store.members.insert_many(members)
    await store.roster.insert_many(roster)
    await store.bump_room(room, slots=len(users), members=len(users))


async def test_a_room_of_1000_members_one_publish_for_every_pod_and_no_presence_read(
    api: RoomsApi, messaging: Messaging
) -> None:
    owner = api.user()
    room = await api.room(owner, name="big")
    crowd = [api.user() for _ in range(999)]
    await seed_members(api, room, crowd)
    # One who left (its roster entry stays behind, as after a crash) is not a member.
    gone = crowd[500]
    await api.rooms.store.members.delete_one({"_id": member_id(room, gone)})
    members = await push.members_of(api.rooms.store, await api.rooms.store.get_room(room) or {})
    assert members == [owner, *crowd[:500], *crowd[501:]]

    online = {crowd[0]: 0, crowd[998]: 1, owner: 0}
    sockets = {u: await messaging.connect(u, pod=pod) for u, pod in online.items()}
    two = await messaging.connect(crowd[0], pod=1)  # a second socket of one member
    left = await messaging.connect(gone, pod=1)
    redis = api.client.server.app[REDIS]
    prefix = api.settings.redis_prefix
    seen: list[bytes] = []
    pubsub = redis.pubsub()
    await pubsub.subscribe(
        room_channel(prefix), *(gateway_channel(prefix, g) for g in ("gw-a", "gw-b"))
    )
    try:
        before = await redis.info("commandstats")
        status, msg = await api.post(owner, room, "to everyone")
        assert status == 201, msg
        for u, ws in [*sockets.items(), (crowd[0], two)]:
            assert (await ws.expect("room_post", room_id=room))["seq"] == msg["seq"], u
        after = await redis.info("commandstats")

        def calls(name: str) -> int:
            return int(after.get(name, {}).get("calls", 0)) - int(
                before.get(name, {}).get("calls", 0)
            )

        async def collect() -> None:
            while not seen:
                m = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if m is not None:
                    assert m["channel"] == room_channel(prefix).encode(), m["channel"]
                    seen.append(m["data"])

        await asyncio.wait_for(collect(), 10)
        # One PUBLISH on the room channel for every pod: the frame once, the 999
        # members' ids; nothing on the pods' own channels and no presence read.
        cast = orjson.loads(seen[0])
        assert cast["op"] == "room_post" and cast["frame"]["seq"] == msg["seq"]
        assert cast["to"] == members
        assert calls("cmdstat_hgetall") == 0 and calls("cmdstat_publish") == 1
        # Redis delivered it to three subscribers: the two pods and this test.
        pushed = api.rooms.metrics.pushed.labels("room_post", "published")._value.get()
        assert pushed == 3
    finally:
        await pubsub.aclose()
    assert not [x for x in left.drain() if x.get("room_id") == room]


async def test_a_room_of_2500_members_is_multicast_in_pieces(
    api: RoomsApi, messaging: Messaging
) -> None:
    """``MULTICAST_USERS`` users per message: every member's socket still gets the
    post once, the last piece's members included."""
    owner = api.user()
    room = await api.room(owner, name="bigger")
    crowd = [api.user() for _ in range(2499)]
    await seed_members(api, room, crowd)
    assert routing.MULTICAST_USERS < 2500
    online = [crowd[0], crowd[1998], crowd[1999], crowd[2498]]
    sockets = [await messaging.connect(u, pod=i % 2) for i, u in enumerate(online)]
    status, msg = await api.post(owner, room, "to more")
    assert status == 201, msg
    for ws in sockets:
        assert (await ws.expect("room_post", room_id=room))["seq"] == msg["seq"]
    status, second = await api.post(owner, room, "next")
    for ws in sockets:
        # The next frame each gets is the next post: the first came once.
        assert (await ws.expect_any(("room_post",)))["seq"] == second["seq"]


async def test_a_push_that_cannot_reach_redis_is_counted_not_raised(make_rooms: Any) -> None:
    """Best effort: the timeline is the record. (A post needs Redis for its rate limit,
    so the push itself is called here, on a service whose Redis is unreachable.)"""
    api = await make_rooms(redis_url="redis://127.0.0.1:1/0", dependency_timeout_ms=300)
    user = api.user()
    frame = f.RoomPost(room_id="f" * 24, seq=1, sender=user, client_id="c", text="t",
                       mentions=[], sent_at=1)  # fmt: skip
    assert await api.rooms.pusher.send([(user, None, frame)], "room_post") == 0
    assert api.rooms.metrics.pushed.labels("room_post", "failed")._value.get() == 1


async def test_posts_during_a_join_and_a_leave_reach_exactly_the_members(
    api: RoomsApi, messaging: Messaging
) -> None:
    """A join or a leave is several writes (version, then membership, then count); a
    post in between reads a list that is stale under the new version, and the
    member-list cache must not keep it: the next post goes to who is a member then.
    The writes are made here one at a time, as the service makes them."""
    owner, stay, joiner, leaver = (api.user() for _ in range(4))
    room = await api.room(owner, name="changing")
    for u in (stay, leaver):
        assert (await api.join(u, room))[0] == 200
    store = api.rooms.store
    ws = {u: await messaging.connect(u, pod=i % 2) for i, u in enumerate((stay, joiner, leaver))}

    async def post(text: str) -> int:
        status, msg = await api.post(owner, room, text)
        assert status == 201, msg
        assert (await ws[stay].expect("room_post", room_id=room))["seq"] == msg["seq"]
        return int(msg["seq"])

    await post("warm")  # the list is cached now
    ws[leaver].drain()
    # A leave, up to its membership's deletion: the version is raised, the count not
    # yet lowered. A post now still reaches the leaver (the leave is not done).
    slot = int((await store.get_member(room, leaver) or {})["slot"])
    await store.bump_room(room, version=1)
    first = await post("during the leave")
    assert (await ws[leaver].expect("room_post", room_id=room))["seq"] == first
    assert await store.delete_member(room, leaver, slot)
    await store.bump_room(room, members=-1)
    await post("after the leave")
    # A join, up to its roster slot: version and count raised, no membership yet.
    bumped = await store.bump_room(room, version=1, slots=1, members=1)
    await post("during the join")
    await store.add_roster(room, int(bumped["slots"]), joiner)
    await store.members.insert_one(
        {"_id": member_id(room, joiner), "room": room, "user": joiner, "role": "member",
         "slot": int(bumped["slots"]), "user_slot": None, "joined_at": now_ms()}
    )  # fmt: skip
    after = await post("after both")
    last = await post("and again")  # now from the cache: the same members
    # The joiner's first posts are the two after the join.
    assert (await ws[joiner].expect("room_post", room_id=room))["seq"] == after
    assert (await ws[joiner].expect("room_post", room_id=room))["seq"] == last
    # The leaver's next room frame is one of its own room's: none of `room`'s after
    # the leave (the room channel delivers in publish order).
    own = await api.room(leaver, name="own")
    assert (await api.post(leaver, own, "mine"))[0] == 201
    assert (await ws[leaver].expect_any(("room_post",)))["room_id"] == own
