"""Public rooms' timeline, mentions and notifications (services/rooms/timeline.py,
notifications.py), on the real embedded servers."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from services.rooms import notifications, push, timeline
from services.rooms.state import KeyedLocks
from services.rooms.store import message_id
from tests.rooms.conftest import TEST_CONFIG, RoomsApi, RoomsFactory


async def owner_and_bob(api: RoomsApi) -> tuple[str, str, str]:
    """A public room's owner and a member named ``bob…`` (to be mentioned), and the room."""
    owner, bob = api.user(), api.user(f"bob{api.user()[:5]}")
    room = await api.room(owner)
    await api.join(bob, room)
    return owner, bob, room


def count_pushes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The numbers of the posts pushed (``room_post`` frames) from now on, in order."""
    pushed: list[int] = []
    room_post = push.room_post

    async def counted(store: Any, pusher: Any, room_doc: Any, frame: Any) -> int:
        pushed.append(frame.seq)
        return await room_post(store, pusher, room_doc, frame)

    monkeypatch.setattr(push, "room_post", counted)
    return pushed


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


async def test_pages_skip_holes(make_rooms: RoomsFactory) -> None:
    """A hole (a lost race) is skipped; an empty number is waited for (in flight) until
    it is ``inflight_grace_s`` old, then a page marks it a hole (its writer died)."""
    api = await make_rooms(replace(TEST_CONFIG, inflight_grace_s=0))
    owner = api.user()
    room = await api.room(owner)
    for i in range(1, 6):
        await api.post(owner, room, f"m{i}")
    store = api.rooms.store
    # Number 2 became a hole (a lost race); 4 was taken by a writer that died.
    await store.messages.update_one({"_id": message_id(room, 2)}, {"$set": {"hole": True}})
    await store.messages.delete_one({"_id": message_id(room, 4)})
    # In flight as far as the first two pages know (the room's watermark moves on).
    for _ in range(2):
        _, page = await api.messages(owner, room, "?limit=2")
        assert ([m["seq"] for m in page["messages"]], page["next_before"]) == ([5], 5)
    _, page = await api.messages(owner, room, "?limit=2")
    assert [m["seq"] for m in page["messages"]] == [5, 3]
    assert (await store.get_message(room, 4) or {}).get("hole") is True
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


async def test_a_mention_that_fails_before_its_notification_leaves_no_unread(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding (2026-12-07): a public room's mention took the user's notification
    number, then held its notice and wrote the notification; a failure in between (the
    outbox write, a process killed) left ``unread`` one above what the list holds, for
    good. The number is taken by the notification's own insert now, and a number no
    notification has is never counted."""
    alice, bob = api.user(), api.user(f"bob{api.user()[:5]}")
    room = await api.room(alice)
    await api.join(bob, room)
    events = api.rooms.events
    hold = events.hold_notice

    async def outbox_down(*_: Any) -> Any:
        raise RuntimeError("the outbox write failed")

    monkeypatch.setattr(events, "hold_notice", outbox_down)
    status, _ = await api.post(alice, room, f"hi @{api.username(bob)}")
    assert status == 500
    monkeypatch.setattr(events, "hold_notice", hold)
    _, page = await api.notifications(bob)
    assert (page["notifications"], page["unread"]) == ([], 0)
    # A notification written whose counter a killed process never raised is counted.
    store = api.rooms.store
    status, msg = await api.post(alice, room, f"again @{api.username(bob)}")
    assert status == 201 and msg["mentions"] == [bob]
    await store.users.update_one({"_id": bob}, {"$set": {"n": 0}})
    _, page = await api.notifications(bob)
    assert [n["seq"] for n in page["notifications"]] == [1] and page["unread"] == 1
    status, msg = await api.post(alice, room, f"third @{api.username(bob)}")
    _, page = await api.notifications(bob)
    assert [n["seq"] for n in page["notifications"]] == [2, 1] and page["unread"] == 2


async def test_a_moderator_post_does_not_notify_its_poster(api: RoomsApi) -> None:
    """Audit finding (2026-12-07): a post as the room's moderator has the sender
    ``moderator``, so leaving out the sender missed the owner or moderator who posted
    it: they were notified of their own mention. Members mentioned still are."""
    owner = api.user(f"own{api.user()[:5]}")
    bob = api.user(f"bob{api.user()[:5]}")
    room = await api.room(owner)
    await api.join(bob, room)
    text = f"@{api.username(owner)} and @{api.username(bob)}: read the rules"
    status, msg = await api.call(
        "POST", f"/v1/rooms/{room}/moderator/messages", owner, {"client_id": "m1", "text": text}
    )
    assert status == 201 and msg["sender"] == "moderator", msg
    assert msg["mentions"] == [owner, bob]
    _, mine = await api.notifications(owner)
    assert (mine["notifications"], mine["unread"]) == ([], 0)
    _, theirs = await api.notifications(bob)
    assert [n["sender"] for n in theirs["notifications"]] == ["moderator"]


async def slowed_post(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch, room: str, user: str, text: str,
    client_id: str = "slow",
) -> tuple[asyncio.Task[tuple[int, Any]], int, asyncio.Event]:  # fmt: skip
    """A post held after it took its number (before its client id and message are
    written): the task, its number, and the event that lets it go on."""
    store = api.rooms.store
    claim = store.claim_client_id
    taken: asyncio.Queue[int] = asyncio.Queue()
    go = asyncio.Event()

    async def slow(room_id: str, sender: str, cid: str, seq: int) -> bool:
        if cid == client_id:
            await taken.put(seq)
            await go.wait()
        return await claim(room_id, sender, cid, seq)

    monkeypatch.setattr(store, "claim_client_id", slow)
    task = asyncio.create_task(api.post(user, room, text, client_id=client_id))
    return task, await taken.get(), go


async def seqs_paged(api: RoomsApi, user: str, room: str, before: int | None) -> list[int]:
    got: list[int] = []
    while before is not None:
        _, page = await api.messages(user, room, f"?limit=2&before={before}")
        got += [m["seq"] for m in page["messages"]]
        before = page["next_before"]
    return got


async def test_a_page_never_skips_a_message_still_being_written(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding (2026-12-07): a post that had taken number 4 and not yet written
    it was skipped like a hole by a page read meanwhile ([5, 3]); the reader paging on
    from there never saw message 4. The page ends before it now."""
    owner, reader = api.user(), api.user()
    room = await api.room(owner)
    for i in range(1, 4):
        await api.post(owner, room, f"m{i}")
    slow, seq, go = await slowed_post(api, monkeypatch, room, owner, "m4 (slow)")
    assert seq == 4
    assert (await api.post(owner, room, "m5"))[1]["seq"] == 5
    _, page = await api.messages(reader, room, "?limit=2")
    assert ([m["seq"] for m in page["messages"]], page["next_before"]) == ([5], 5)
    # Asked again while it is still in flight: nothing past it.
    _, again = await api.messages(reader, room, "?limit=2&before=5")
    assert (again["messages"], again["next_before"]) == ([], 5)
    go.set()
    assert (await slow)[0] == 201
    assert await seqs_paged(api, reader, room, page["next_before"]) == [4, 3, 2, 1]
    # A page from the newest leaves out a number in flight above its first message:
    # newer than the page, as a message posted after it.
    slow, seq, go = await slowed_post(api, monkeypatch, room, owner, "m6", "slow6")
    _, top = await api.messages(reader, room, "?limit=2")
    assert [m["seq"] for m in top["messages"]] == [5, 4]
    go.set()
    await slow
    _, top = await api.messages(reader, room, "?limit=2")
    assert [m["seq"] for m in top["messages"]] == [6, 5]


async def test_a_post_slower_than_the_grace_takes_a_new_number(
    make_rooms: RoomsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A number empty for longer than ``inflight_grace_s`` is marked a hole by a page
    (its writer may have died); a writer that was only slow finds it taken, takes the
    room's next number and moves its client id there: the message is not lost behind
    the pages, and a resend finds it."""
    api = await make_rooms(replace(TEST_CONFIG, inflight_grace_s=0))
    owner, reader = api.user(), api.user()
    room = await api.room(owner)
    await api.post(owner, room, "m1")
    slow, seq, go = await slowed_post(api, monkeypatch, room, owner, "slow one")
    await api.post(owner, room, "m3")
    for _ in range(3):  # the watermark passes the slow post's number: marked a hole
        _, page = await api.messages(reader, room, "?limit=5")
    assert [m["seq"] for m in page["messages"]] == [3, 1]
    assert (await api.rooms.store.get_message(room, seq) or {}).get("hole") is True
    go.set()
    status, msg = await slow
    assert (status, msg["seq"], msg["text"]) == (201, 4, "slow one")
    _, page = await api.messages(reader, room)
    assert [m["seq"] for m in page["messages"]] == [4, 3, 1]
    status, again = await api.post(owner, room, "slow one", client_id="slow")
    assert (status, again["seq"], again["duplicate"]) == (201, 4, True)


async def test_a_resend_of_a_post_whose_number_became_a_hole_is_written_anew(
    make_rooms: RoomsFactory,
) -> None:
    """A post's process died after taking its client id and number; a page marked the
    number a hole once it was old: the resend writes the message under a new number."""
    api = await make_rooms(replace(TEST_CONFIG, inflight_grace_s=0))
    owner = api.user()
    room = await api.room(owner)
    store = api.rooms.store
    seq = int((await store.bump_room(room, seq=1))["seq"])
    assert await store.claim_client_id(room, owner, "died", seq)  # ... then it died
    await api.post(owner, room, "after")
    for _ in range(3):
        _, page = await api.messages(owner, room)
    assert [m["text"] for m in page["messages"]] == ["after"]
    status, msg = await api.post(owner, room, "written at last", client_id="died")
    assert (status, msg["seq"], msg["duplicate"]) == (201, 3, False)
    _, page = await api.messages(owner, room)
    assert [m["text"] for m in page["messages"]] == ["written at last", "after"]


@pytest.mark.parametrize("processes", ["one", "many"])
async def test_many_posts_mentioning_one_user_at_once_are_all_announced(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch, processes: str
) -> None:
    """Audit finding (2026-12-07): a notification's number was raced for at most 64
    times; 150 members posting "hi @alice" at once had about twenty posts stored but
    answered 500, with no notification and no ``room_post`` push, and their resends
    (``duplicate``) announced nothing either. One process writes a user's notifications
    one at a time now, and between processes (``many``: every post as if from a process
    of its own, each racing all the others) the race has no cap, every lost try being
    another notification written: every post is answered, noted and pushed."""
    tries: list[int] = []
    if processes == "many":
        monkeypatch.setattr(KeyedLocks, "__call__", lambda self, key: asyncio.Lock())
    store = api.rooms.store
    insert_notification = store.insert_notification

    async def counted_insert(doc: Any) -> bool:
        tries.append(int(doc["n"]))
        return await insert_notification(doc)

    monkeypatch.setattr(store, "insert_notification", counted_insert)
    owner, alice = api.user(), api.user(f"al{api.user()[:6]}")
    room = await api.room(owner)
    assert (await api.join(alice, room))[0] == 200
    posters = [api.user() for _ in range(150)]
    for p in posters:
        assert (await api.join(p, room))[0] == 200
    pushed = count_pushes(monkeypatch)

    text = f"hi @{api.username(alice)}"
    results = await asyncio.gather(*(api.post(p, room, text) for p in posters))
    assert [s for s, _ in results] == [201] * 150, [b for s, b in results if s != 201][:3]
    seqs = sorted(b["seq"] for _, b in results)
    assert len(set(seqs)) == 150
    _, page = await api.notifications(alice, "?limit=200")
    assert page["unread"] == 150
    assert sorted(n["message_seq"] for n in page["notifications"]) == seqs
    assert [n["seq"] for n in page["notifications"]] == list(range(150, 0, -1))
    assert sorted(pushed) == seqs
    assert (
        await store.messages.count_documents({"room": room, "unannounced": {"$exists": True}}) == 0
    )
    if processes == "one":
        assert len(tries) == 150  # one at a time: no number lost


async def test_a_resend_announces_a_post_whose_announcement_failed(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A post stored and then not announced (its mentions failed: the answer is an error)
    is announced by the client's resend, answered as the ``duplicate`` it is. Before,
    the resend announced nothing and the mention was lost for good."""
    owner, bob, room = await owner_and_bob(api)
    pushed = count_pushes(monkeypatch)

    async def broken(*_: Any) -> None:
        raise RuntimeError("the notifications could not be written")

    mentioned = notifications.mentioned
    monkeypatch.setattr(notifications, "mentioned", broken)
    text = f"hi @{api.username(bob)}"
    status, _ = await api.post(owner, room, text, client_id="c1")
    assert status == 500
    assert (pushed, (await api.notifications(bob))[1]["notifications"]) == ([], [])
    monkeypatch.setattr(notifications, "mentioned", mentioned)
    status, again = await api.post(owner, room, text, client_id="c1")
    assert status == 201 and again["duplicate"] is True and again["mentions"] == [bob]
    _, page = await api.notifications(bob)
    assert [n["message_seq"] for n in page["notifications"]] == [again["seq"]]
    assert pushed == [again["seq"]]
    # Announced once: a further resend makes nothing more.
    status, third = await api.post(owner, room, text, client_id="c1")
    assert status == 201 and third["duplicate"] is True
    assert len((await api.notifications(bob))[1]["notifications"]) == 1
    assert pushed == [again["seq"]]


async def test_copies_of_a_post_sent_while_it_is_announced_announce_nothing(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review of the announcement fix: a copy of a post (a retry, a double send) that
    came while its writer was still announcing it found the mark and announced it again:
    a push to every member and a write per mention each, past the post limit (100
    copies: 93 pushes). Only a writer that failed, or one gone past the lease, is taken
    over, by one copy."""
    owner, bob, room = await owner_and_bob(api)
    pushed: list[int] = []
    room_post = push.room_post
    writing, go = asyncio.Event(), asyncio.Event()

    async def slow(store: Any, pusher: Any, room_doc: Any, frame: Any) -> int:
        pushed.append(frame.seq)
        if len(pushed) == 1:
            writing.set()
            await go.wait()  # the writer's push takes its time
        return await room_post(store, pusher, room_doc, frame)

    monkeypatch.setattr(push, "room_post", slow)
    text = f"hi @{api.username(bob)}"
    first = asyncio.create_task(api.post(owner, room, text, client_id="c1"))
    await writing.wait()
    copies = await asyncio.gather(*(api.post(owner, room, text, client_id="c1") for _ in range(30)))
    assert all(status == 201 and body["duplicate"] for status, body in copies)
    go.set()
    status, body = await first
    assert status == 201 and body["duplicate"] is False
    assert pushed == [body["seq"]]
    assert len((await api.notifications(bob))[1]["notifications"]) == 1


async def test_a_mention_whose_writer_died_is_announced_by_the_sweep(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding (2026-12-07): a post's writer killed after storing it and before its
    mentions were made; the client's own retry came within seconds, inside the lease,
    was answered ``duplicate`` and stopped: nobody was ever notified. Now the writer
    records the announcement before the message, and the sweep of any replica takes
    over a record still there past the lease: one notification, one push, once."""
    owner, bob, room = await owner_and_bob(api)
    store = api.rooms.store
    pushed = count_pushes(monkeypatch)

    async def killed(*_: Any) -> None:
        raise RuntimeError("the process is killed here: nothing after it runs")

    announce = timeline._announce_or_release
    monkeypatch.setattr(timeline, "_announce_or_release", killed)
    text = f"hi @{api.username(bob)}"
    assert (await api.post(owner, room, text, client_id="c1"))[0] == 500
    monkeypatch.setattr(timeline, "_announce_or_release", announce)  # a live replica
    status, again = await api.post(owner, room, text, client_id="c1")  # the client's retry
    assert status == 201 and again["duplicate"] is True
    assert (await api.notifications(bob))[1]["notifications"] == [] and pushed == []
    # Nothing is due within the lease: the writer may still be at it.
    assert await timeline.announce_due(api.rooms) == 0
    # The lease passes.
    at = message_id(room, again["seq"])
    await store.announcements.update_one({"_id": at}, {"$set": {"due": 0}})
    await store.messages.update_one({"_id": at}, {"$set": {"unannounced": 1}})
    assert await timeline.announce_due(api.rooms) == 1
    _, page = await api.notifications(bob)
    assert [n["message_seq"] for n in page["notifications"]] == [again["seq"]]
    assert pushed == [again["seq"]]
    assert await store.announcements.count_documents({}) == 0
    assert "unannounced" not in (await store.get_message(room, again["seq"]) or {})
    assert await timeline.announce_due(api.rooms) == 0  # once
    assert len((await api.notifications(bob))[1]["notifications"]) == 1


async def test_the_sweep_records_only_what_is_unannounced(api: RoomsApi) -> None:
    """A post announced by its writer leaves no record; one without mentions writes none;
    a record whose message was never written (its writer died before the insert, no
    resend came) is dropped after ``UNWRITTEN_KEPT_S``, kept before."""
    owner, bob, room = await owner_and_bob(api)
    store = api.rooms.store
    assert (await api.post(owner, room, f"hi @{api.username(bob)}"))[0] == 201
    assert (await api.post(owner, room, "no one named"))[0] == 201
    assert await store.announcements.count_documents({}) == 0
    await store.hold_announcement(room, 99, 0)
    assert await timeline.announce_due(api.rooms) == 0
    assert await store.announcements.count_documents({}) == 1  # its writer may be slow
    await store.announcements.update_one(
        {"_id": message_id(room, 99)}, {"$set": {"due": 0, "at": 0}}
    )
    assert await timeline.announce_due(api.rooms) == 0
    assert await store.announcements.count_documents({}) == 0


async def test_a_posts_notices_wait_for_kafka_side_by_side(
    api: RoomsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding (2026-12-07): with the broker away each notice waited for its ack (5
    s) one after another: a post mentioning 20 users answered after 100 s, past
    HAProxy's timeout, a 504 for a stored post. The notices go side by side now, after
    the push; the outbox sends what Kafka did not take."""
    owner = api.user()
    named = [api.user(f"m{i}{api.user()[:5]}") for i in range(4)]
    room = await api.room(owner)
    for user in named:
        await api.join(user, room)
    store = api.rooms.store
    in_flight, most = 0, 0
    all_waiting = asyncio.Event()
    order: list[str] = []
    frames = notifications._push

    async def counted(rooms: Any, docs: Any) -> None:
        order.append("frames")
        await frames(rooms, docs)

    async def broker_away(key: str, value: bytes, headers: Any, topic: Any = None) -> bool:
        nonlocal in_flight, most
        order.append("notice")
        in_flight += 1
        most = max(most, in_flight)
        if in_flight == len(named):
            all_waiting.set()
        try:  # the ack never comes; held until every notice waits (or a timeout)
            await asyncio.wait_for(all_waiting.wait(), 2)
        except TimeoutError:
            pass
        in_flight -= 1
        return False

    monkeypatch.setattr(notifications, "_push", counted)
    monkeypatch.setattr(store, "send_event", broker_away)
    text = "hi " + " ".join(f"@{api.username(u)}" for u in named)
    status, body = await api.post(owner, room, text)
    assert status == 201 and sorted(body["mentions"]) == sorted(named)
    assert most == len(named), f"notices waited one after another (at most {most} at once)"
    assert order[0] == "frames"  # the online users are told first
    assert await store.outbox.size() == len(named)  # kept for the drain to send
