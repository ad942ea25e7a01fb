"""Public rooms' timeline, mentions and notifications (services/rooms/timeline.py,
notifications.py), on the real embedded servers."""

from __future__ import annotations

import asyncio

from services.rooms.store import message_id
from tests.rooms.conftest import RoomsApi


async def test_post_and_page_newest_first(api: RoomsApi) -> None:
    owner, reader = api.user(), api.user()
    room = await api.room(owner)
    for i in range(1, 8):
        status, msg = await api.post(owner, room, f"m{i}", client_id=f"c{i}")
        assert status == 201 and msg["seq"] == i and msg["duplicate"] is False
    # Anyone signed in reads a public room's history, member or not.
    status, page = await api.messages(reader, room, "?limit=3")
    assert status == 200
    assert [m["text"] for m in page["messages"]] == ["m7", "m6", "m5"]
    got = [m["seq"] for m in page["messages"]]
    while page["next_before"] is not None:
        _, page = await api.messages(reader, room, f"?limit=3&before={page['next_before']}")
        got += [m["seq"] for m in page["messages"]]
    assert got == [7, 6, 5, 4, 3, 2, 1]
    _, page = await api.messages(reader, room, "?before=100")
    assert len(page["messages"]) == 7  # before beyond the head: from the newest


async def test_a_resend_returns_the_original(api: RoomsApi) -> None:
    owner = api.user()
    room = await api.room(owner)
    _, first = await api.post(owner, room, "hello", client_id="same")
    status, again = await api.post(owner, room, "hello (edited?)", client_id="same")
    assert status == 201 and again["duplicate"] is True
    assert {k: v for k, v in again.items() if k != "duplicate"} == {
        k: v for k, v in first.items() if k != "duplicate"
    }
    # Concurrent copies of one new message: one message, the others holes.
    results = await asyncio.gather(
        *(api.post(owner, room, "race", client_id="r") for _ in range(6))
    )
    seqs = {b["seq"] for _, b in results}
    assert len(seqs) == 1 and sum(not b["duplicate"] for _, b in results) <= 1
    _, page = await api.messages(owner, room)
    assert [m["text"] for m in page["messages"]] == ["race", "hello"]
    # Another sender may use the same client id.
    other = api.user()
    await api.join(other, room)
    _, theirs = await api.post(other, room, "mine", client_id="same")
    assert theirs["duplicate"] is False and theirs["seq"] != first["seq"]


async def test_a_resend_writes_a_message_whose_writer_died_whole(api: RoomsApi) -> None:
    """Before: a post whose process died between taking the client id and writing the
    message was written by the resend from the raw request alone (no time, no
    mentions, the text not cleaned): every page holding it then answered 500. Now the
    resend writes it as a first post would, and announces it."""
    owner, bob = api.user(), api.user("bobby")
    room = await api.room(owner)
    await api.join(bob, room)
    await api.post(owner, room, "before")
    store = api.rooms.store
    seq = int((await store.bump_room(room, seq=1))["seq"])
    assert await store.claim_client_id(room, owner, "died", seq)  # ... then it died
    _, page = await api.messages(bob, room)
    assert [m["text"] for m in page["messages"]] == ["before"]
    status, msg = await api.post(owner, room, "cafe\u0301 @bobby", client_id="died")
    assert status == 201, msg
    assert (msg["seq"], msg["text"], msg["mentions"], msg["duplicate"]) == (
        seq,
        "caf\u00e9 @bobby",
        [bob],
        False,
    )
    assert msg["sent_at"] > 0
    status, page = await api.messages(bob, room)
    assert status == 200 and [m["text"] for m in page["messages"]] == ["caf\u00e9 @bobby", "before"]
    _, notes = await api.notifications(bob)
    assert [n["message_seq"] for n in notes["notifications"]] == [seq]
    status, again = await api.post(owner, room, "caf\u00e9 @bobby", client_id="died")
    assert status == 201 and again["duplicate"] is True and again["seq"] == seq
    _, notes = await api.notifications(bob)
    assert len(notes["notifications"]) == 1  # announced once


async def test_pages_skip_holes(api: RoomsApi) -> None:
    owner = api.user()
    room = await api.room(owner)
    for i in range(1, 6):
        await api.post(owner, room, f"m{i}")
    store = api.rooms.store
    # Numbers 2 and 4 became holes (a lost race, a writer that died before writing).
    await store.messages.update_one({"_id": message_id(room, 2)}, {"$set": {"hole": True}})
    await store.messages.delete_one({"_id": message_id(room, 4)})
    _, page = await api.messages(owner, room, "?limit=2")
    assert [m["seq"] for m in page["messages"]] == [5, 3]
    _, page = await api.messages(owner, room, f"?limit=2&before={page['next_before']}")
    assert [m["seq"] for m in page["messages"]] == [1] and page["next_before"] is None


async def test_mentions_notify_members_and_mark_read(api: RoomsApi) -> None:
    alice = api.user(f"alice{api.user()[:5]}")
    bob = api.user(f"bob{api.user()[:5]}")
    outsider = api.user()
    room = await api.room(alice, name="Garden")
    await api.join(bob, room)
    name_b, name_a = api.username(bob), api.username(alice)
    text = f"@{name_b.upper()}, see `@{name_b}` and @{outsider} and @{name_a} and @nobody1"
    status, msg = await api.post(alice, room, text)
    assert status == 201
    # bob (any case), outsider is no member, alice is the sender (no notification for herself).
    assert msg["mentions"] == [bob, alice]
    await api.post(alice, room, f"again @{bob}")
    status, page = await api.notifications(bob)
    assert status == 200 and page["unread"] == 2
    first = page["notifications"][-1]
    assert first["room_id"] == room and first["room_name"] == "Garden"
    assert first["message_seq"] == msg["seq"] and first["sender"] == alice
    assert first["excerpt"].startswith(f"@{name_b.upper()}") and first["read"] is False
    # Jump to the message: it is where the notification says.
    _, around = await api.messages(bob, room, f"?before={first['message_seq'] + 1}&limit=1")
    assert around["messages"][0]["text"] == text
    assert (await api.notifications(alice))[1]["notifications"] == []
    assert (await api.notifications(outsider))[1]["notifications"] == []
    status, body = await api.read(bob, 1)
    assert (status, body) == (200, {"unread": 1})
    assert (await api.read(bob, 0))[1] == {"unread": 1}  # never backwards
    _, page = await api.notifications(bob)
    assert [n["read"] for n in page["notifications"]] == [False, True]
    assert (await api.read(bob, 2))[1] == {"unread": 0}


async def test_private_rooms_have_no_server_timeline(api: RoomsApi) -> None:
    owner = api.user()
    room = await api.room(owner, "private")
    for status, body in (await api.post(owner, room, "plain"), await api.messages(owner, room)):
        assert (status, body["error"]["code"]) == (403, "forbidden")
