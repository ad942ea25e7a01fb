"""The room log against the real embedded MongoDB and Redis (services/delivery/room_log.py):
numbers without gaps, once per message across a crash between its writes, pages by
primary key, `since` found by bisection, expiry from the oldest, at log sizes a busy
room reaches."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from parley_contract import envelopes as e
from pymongo.errors import ConnectionFailure

from services.common.config import Settings
from services.delivery.moderation_keys import ModerationKeys
from services.delivery.room_log import RoomLog, entry_id
from services.delivery.store import PAGE_ITEM_BYTES, DeliveryStore


def room_id() -> str:
    return uuid.uuid4().hex[:24]


def env(room: str, i: int, sender: str = "alice") -> e.RoomEnvelope:
    return e.RoomEnvelope(
        server_id=e.room_server_id(room, sender, f"c{i}"), room=room, from_=sender,
        from_device=1, client_id=f"c{i}", body=f"Ym9keQ{i}", sent_at=e.now_ms(),
        targets=["bob.1", "carol.1", "carol.2"],
    )  # fmt: skip


def make(store: DeliveryStore, settings: Settings) -> RoomLog:
    return RoomLog(store, ModerationKeys(settings))


async def test_numbers_have_no_gaps_and_each_message_is_stored_once(
    store: DeliveryStore, settings: Settings
) -> None:
    log, room = make(store, settings), room_id()
    done = await log.append([env(room, i) for i in range(5)], time.time())
    assert (done.stored, done.repeats) == (5, 0)
    assert [fr.seq for _, fr in done.pushes] == [1, 2, 3, 4, 5]
    # Pushed to the members (the targets' users) and the sender's other sockets.
    assert (done.pushes)[0][0] == ["alice", "bob", "carol"]
    # The same records again (a worker killed before its commit), and new ones.
    again = await log.append([env(room, i) for i in range(3, 8)], time.time())
    assert (again.stored, again.repeats) == (3, 2)
    assert [fr.seq for _, fr in again.pushes] == [4, 5, 6, 7, 8]
    assert await log.head(room) == 8
    messages, last, more = await log.page(room, 0, 0, 100)
    assert [m.seq for m in messages] == list(range(1, 9)) and (last, more) == (8, False)
    assert len({m.server_id for m in messages}) == 8


async def test_a_batch_across_many_rooms_numbers_each_room_on_its_own(
    store: DeliveryStore, settings: Settings
) -> None:
    """Rooms of one batch are appended side by side (they were one after another, three
    or four round trips each): each keeps its own order, numbers and pushes."""
    log = make(store, settings)
    rooms = [room_id() for _ in range(60)]
    batch = [env(room, i) for i in range(3) for room in rooms]  # interleaved, as consumed
    done = await log.append(batch, time.time())
    assert (done.stored, done.repeats) == (180, 0)
    by_room: dict[str, list[int]] = {}
    for _, fr in done.pushes:
        by_room.setdefault(fr.room, []).append(fr.seq)
    assert by_room == {room: [1, 2, 3] for room in rooms}
    for room in rooms[:5]:
        messages, last, _ = await log.page(room, 0, 0, 10)
        expected = [e.room_server_id(room, "alice", f"c{i}") for i in range(3)]
        assert [m.server_id for m in messages] == expected and last == 3


async def test_a_writer_killed_between_its_writes_leaves_nothing_twice(
    store: DeliveryStore, settings: Settings
) -> None:
    """A writer inserts the id records (naming the numbers it plans), then the entries
    in order. Killed after the first entry of two: the records consumed again by the
    process that takes over find that one where its record says (pushed again, not
    stored again) and write the other."""
    log, room = make(store, settings), room_id()
    await log.append([env(room, 0)], time.time())
    done_before, lost = env(room, 1), env(room, 2)
    await log.ids.insert_many([
        {"_id": done_before.server_id, "room": room, "seq": 2},
        {"_id": lost.server_id, "room": room, "seq": 3},
    ])  # fmt: skip
    await log.log.insert_one(log._doc(done_before, 2, time.time()))  # ...and killed
    fresh = make(store, settings)  # the process that takes the partition over
    done = await fresh.append([done_before, lost, env(room, 3)], time.time())
    assert (done.stored, done.repeats) == (2, 1)
    pushed = {fr.server_id: fr.seq for _, fr in done.pushes}
    assert pushed == {done_before.server_id: 2, lost.server_id: 3, env(room, 3).server_id: 4}
    messages, last, more = await fresh.page(room, 0, 0, 100)
    assert [m.server_id for m in messages] == [
        env(room, 0).server_id, done_before.server_id, lost.server_id, env(room, 3).server_id,
    ]  # fmt: skip
    assert [m.seq for m in messages] == [1, 2, 3, 4] and (last, more) == (4, False)
    # Killed after the records alone, where another writer has taken the number since:
    # the message goes after it, and its record says so.
    late = env(room, 9)
    await fresh.ids.insert_one({"_id": late.server_id, "room": room, "seq": 4})
    done = await fresh.append([late], time.time())
    assert [fr.seq for _, fr in done.pushes] == [5]
    assert (await fresh.ids.find_one({"_id": late.server_id}) or {})["seq"] == 5


async def test_the_last_number_is_found_past_a_head_left_behind(
    store: DeliveryStore, settings: Settings
) -> None:
    log, room = make(store, settings), room_id()
    await log.append([env(room, i) for i in range(100)], time.time())
    await log.heads.update_one({"_id": room}, {"$set": {"n": 3}})  # its raise was lost
    assert await log.head(room) == 100
    done = await log.append([env(room, 100)], time.time())
    assert [fr.seq for _, fr in done.pushes] == [101]


async def test_pages_of_a_big_log_read_by_primary_key(
    store: DeliveryStore, settings: Settings
) -> None:
    """A log of 20,000 messages: pages from anywhere, the end, `since` by bisection."""
    log, room = make(store, settings), room_id()
    n, step = 20_000, 2_000
    t0 = time.time() - 3600
    for k in range(0, n, step):
        # Stored over an hour: message i at t0 + i * 0.18 s.
        docs = [log._doc(env(room, i), i + 1, t0 + i * 0.18) for i in range(k, k + step)]
        await log.log.insert_many(docs)
    await log.heads.update_one({"_id": room}, {"$max": {"n": n}}, upsert=True)
    messages, last, more = await log.page(room, 12_345, 0, 200)
    assert [m.seq for m in messages] == list(range(12_346, 12_546)) and (last, more) == (
        12_545,
        True,
    )
    messages, last, more = await log.page(room, n - 10, 0, 200)
    assert [m.seq for m in messages] == list(range(n - 9, n + 1)) and (last, more) == (n, False)
    messages, last, more = await log.page(room, n, 0, 200)
    assert (messages, last, more) == ([], n, False)
    # Joined (or linked) when message 15,001 was stored: nothing before it is read.
    since_ms = int((t0 + 15_000 * 0.18) * 1000)
    messages, last, more = await log.page(room, 0, since_ms, 50)
    assert messages[0].seq == 15_001 and last == 15_050 and more
    messages, _, _ = await log.page(room, 16_000, since_ms, 10)
    assert messages[0].seq == 16_001  # past it already: from the cursor
    messages, last, more = await log.page(room, 0, int(time.time() * 1000) + 60_000, 50)
    assert (messages, last, more) == ([], n, False)

    # Many rooms at once (a device reconnecting, ``POST .../rooms/logs``): the same pages,
    # a quiet room and the log's end answered without paging, on this big log too.
    quiet = room_id()
    asks = [(room, 12_345, 0), (quiet, 0, 0), (room, 0, since_ms), (room, n, 0),
            (room, n - 10, 0), (room, 100, since_ms)]  # fmt: skip
    got = await log.pages(asks, 200)
    assert got == [await log.page(*ask, 200) for ask in asks]
    assert got[1] == ([], 0, False) and got[3] == ([], n, False)
    assert got[2][0][0].seq == 15_001 and got[5][0][0].seq == 15_001


async def test_pages_of_large_messages_stop_at_the_byte_budget(
    store: DeliveryStore, settings: Settings
) -> None:
    """Messages of 60 KB: a page (and ``POST .../rooms/logs``' whole answer) stops near
    ``sync_page_bytes`` (1 MiB), not at 200 messages (12 MB); reading on from each
    page's ``next`` gets every message once."""
    log, rooms = make(store, settings), [room_id(), room_id()]
    big = "QUJD" * 15_000  # 60,000 characters
    for room in rooms:
        envs = [env(room, i) for i in range(40)]
        for x in envs:
            x.body = big
        await log.append(envs, time.time())
    per_page = settings.sync_page_bytes // (len(big) + PAGE_ITEM_BYTES)  # 17
    messages, last, more = await log.page(rooms[0], 0, 0, 200)
    assert [m.seq for m in messages] == list(range(1, per_page + 1))
    assert (last, more) == (per_page, True)

    # Many rooms: the budget is the answer's; a room it did not reach reads on from
    # where it was.
    got = await log.pages([(rooms[0], 0, 0), (rooms[1], 0, 0)], 200)
    assert got == [(messages, per_page, True), ([], 0, True)]
    seen: dict[str, list[int]] = {room: [] for room in rooms}
    cursors = dict.fromkeys(rooms, 0)
    while cursors:
        asks = [(room, after, 0) for room, after in cursors.items()]
        pages = await log.pages(asks, 200)
        assert sum(len(m.body) for page, _, _ in pages for m in page) <= settings.sync_page_bytes
        for (room, _, _), (page, last, more) in zip(asks, pages, strict=True):
            seen[room] += [m.seq for m in page]
            cursors[room] = last
            if not more:
                del cursors[room]
    assert seen == {room: list(range(1, 41)) for room in rooms}


async def test_rooms_past_a_full_answer_are_not_read(
    store: DeliveryStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty rooms with news, two messages of 60 KB each: once the answer holds its
    1 MiB, the rooms not yet read are not read at all (they say more, from where they
    were), instead of read whole and cut (up to 5,000 messages held for one answer)."""
    log, rooms = make(store, settings), [room_id() for _ in range(40)]
    big = "QUJD" * 15_000
    for room in rooms:
        envs = [env(room, i) for i in range(2)]
        for x in envs:
            x.body = big
        await log.append(envs, time.time())
    page_from = log._page_from
    reads: list[str] = []

    async def counted(room: str, start: int, after: int, limit: int) -> Any:
        reads.append(room)
        return await page_from(room, start, after, limit)

    monkeypatch.setattr(log, "_page_from", counted)
    got = await log.pages([(room, 0, 0) for room in rooms], 200)
    per_room = 2 * (len(big) + PAGE_ITEM_BYTES)
    # Read until the answer was full, at most the pages then under way (8) beyond.
    assert len(reads) <= settings.sync_page_bytes // per_room + 1 + 8 < len(rooms)
    assert sum(len(m) for m, _, _ in got) == settings.sync_page_bytes // (
        len(big) + PAGE_ITEM_BYTES
    )
    assert all(more for m, _, more in got if not m)
    unread = [room for room, (m, nxt, more) in zip(rooms, got, strict=True) if not m]
    assert unread and all(got[rooms.index(r)][1] == 0 for r in unread)


async def test_removed_messages_keep_their_numbers_and_leave_pages(
    store: DeliveryStore, settings: Settings
) -> None:
    log, room = make(store, settings), room_id()
    envs = [env(room, i) for i in range(4)]
    await log.append(envs[:2], time.time())
    # Removed before its record is consumed (its mark set first): stored blank, not pushed.
    await store.hot.mark_gone(envs[2].server_id, 3600)
    done = await log.append(envs[2:], time.time())
    assert (done.removed, [fr.seq for _, fr in done.pushes]) == (1, [4])
    assert await log.blank([envs[0].server_id]) == 1
    messages, last, more = await log.page(room, 0, 0, 100)
    assert [m.seq for m in messages] == [2, 4] and (last, more) == (4, False)
    messages, last, more = await log.page(room, 0, 0, 1)
    assert (messages, last, more) == ([], 1, True)  # a reader goes on past it


async def test_a_removal_blanks_only_an_entry_that_holds_its_message(
    store: DeliveryStore, settings: Settings
) -> None:
    """B's record still names its planned number, which another writer gave C, while
    B's writer moves B on: a removal of B then must not blank C (it did: C's body
    gone for every reader). B's writer blanks B itself once it sees the mark."""
    log, room = make(store, settings), room_id()
    c, b = env(room, 0), env(room, 1)
    await log.append([c], time.time())  # C is number 1
    await log.ids.insert_one({"_id": b.server_id, "room": room, "seq": 1})  # B planned at 1
    await store.hot.mark_gone(b.server_id, 3600)
    assert await log.blank([b.server_id]) == 0
    messages, _, _ = await log.page(room, 0, 0, 100)
    assert [(m.seq, m.server_id) for m in messages] == [(1, c.server_id)]
    # B's writer goes on: B lands at 2, is seen removed, and is stored blank.
    done = await log.append([b], time.time())
    assert done.removed == 1 and done.pushes == []
    messages, _, _ = await log.page(room, 0, 0, 100)
    assert [m.server_id for m in messages] == [c.server_id]


async def _expired_then_two(log: RoomLog, room: str, now: float) -> list[dict[str, object]]:
    """A room's log of 600 entries stored 100 days ago, then two new ones (601, 602);
    returns the old entries."""
    old = [log._doc(env(room, i), i + 1, now - 100 * 86400) for i in range(600)]
    await log.log.insert_many(old)
    await log.ids.insert_many([{"_id": d["server_id"], "room": room, "seq": d["seq"]} for d in old])
    await log.heads.update_one({"_id": room}, {"$max": {"n": 600}}, upsert=True)
    await log.append([env(room, 600), env(room, 601)], now)
    return old


async def test_expiry_deletes_each_rooms_oldest_first(
    store: DeliveryStore, settings: Settings
) -> None:
    log, room = make(store, settings), room_id()
    now = time.time()
    old = await _expired_then_two(log, room, now)
    assert await log.purge_expired(now - 30 * 86400) >= 600
    messages, last, more = await log.page(room, 0, 0, 100)
    assert [m.seq for m in messages] == [601, 602] and (last, more) == (602, False)
    assert await log.ids.find_one({"_id": old[0]["server_id"]}) is None
    assert (await log.heads.find_one({"_id": room}) or {})["low"] == 601
    assert await log.purge_expired(now - 30 * 86400) == 0
    # A room of a few messages (fewer than a head is saved for) expires too, all of it.
    small = room_id()
    await log.append([env(small, i) for i in range(3)], now - 100 * 86400)
    assert await log.purge_expired(now - 30 * 86400) == 3
    assert (await log.page(small, 0, 0, 100))[0] == []
    done = await log.append([env(small, 3)], now)  # the log goes on after them
    assert [fr.seq for _, fr in done.pushes] == [4]


async def test_a_quiet_room_whose_whole_log_expired_goes_on_after_it(
    store: DeliveryStore, settings: Settings
) -> None:
    """A room's saved head lags (saved every 32 numbers), and expiry deletes a quiet
    room's whole log. A writer that did not remember the room (restarted, or the
    partition moved) went on from the saved head, found nothing after it and took
    numbers below ``low``: readers never look there and members' cursors had passed
    them, so those messages were lost for every member. So did a writer whose
    remembered number had expired since."""
    now = time.time()
    writer, room = make(store, settings), room_id()
    for i in range(10):  # one batch each: the head is saved at the first, n = 1
        await writer.append([env(room, i)], now - 100 * 86400)
    assert (await writer.heads.find_one({"_id": room}) or {})["n"] == 1
    assert await writer.purge_expired(now - 30 * 86400) == 10
    await writer.heads.update_one({"_id": room}, {"$set": {"n": 1}})  # as a run before
    restarted = make(store, settings)
    done = await restarted.append([env(room, 10)], now)
    assert [fr.seq for _, fr in done.pushes] == [11]
    # A writer that remembers a number another writer went past, all expired since.
    other = room_id()
    for i in range(3):
        await writer.append([env(other, i)], now - 100 * 86400)  # it remembers 3
    for i in range(3, 10):
        await restarted.append([env(other, i)], now - 100 * 86400)
    await writer.purge_expired(now - 30 * 86400)
    await writer.heads.update_one({"_id": other}, {"$set": {"n": 1}})
    done = await writer.append([env(other, 10)], now)
    assert [fr.seq for _, fr in done.pushes] == [11]
    messages, last, more = await restarted.page(room, 10, 0, 100)  # a member's cursor
    assert [m.seq for m in messages] == [11] and (last, more) == (11, False)


async def test_an_expiry_run_cut_short_leaves_the_log_readable_and_the_next_finishes(
    store: DeliveryStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run fails (or is killed) in the middle of a room's chunk: readers from the
    start of the log still get what is left (``low`` used to stay on deleted entries:
    nothing for them, ever, and later runs stopped there), and the next run finishes
    the chunk."""
    log, room = make(store, settings), room_id()
    now = time.time()
    await _expired_then_two(log, room, now)
    ids_delete = log.ids.delete_many
    calls = 0

    async def fails_second_time(*args: object, **kw: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 2:  # the second chunk: MongoDB goes away
            raise ConnectionFailure("gone")
        return await ids_delete(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(log.ids, "delete_many", fails_second_time)
    with pytest.raises(ConnectionFailure):
        await log.purge_expired(now - 30 * 86400)
    messages, last, more = await log.page(room, 0, 0, 100)
    assert [m.seq for m in messages] == [601, 602] and (last, more) == (602, False)
    monkeypatch.setattr(log.ids, "delete_many", ids_delete)
    assert await log.purge_expired(now - 30 * 86400) == 100  # the chunk left unfinished
    assert await log.log.count_documents({"room": room}) == 2
    assert await log.ids.count_documents({"room": room}) == 2
    head = await log.heads.find_one({"_id": room}) or {}
    assert head["low"] == 601 and "purging" not in head
    assert await log.purge_expired(now - 30 * 86400) == 0


async def test_writers_racing_lose_nothing_and_number_without_gaps(
    store: DeliveryStore, settings: Settings
) -> None:
    """A consumer that lost its partition mid-batch and the one that took it write the
    same records at the same moment: every message is stored, the numbers have no
    gap and none twice; a message may be stored by each of them (once each), which
    clients drop by its server id (docs/delivery.md, "Private rooms' log"). Forty
    appends at once from four writers: an append may lose the race for a number many
    times in a row (each loss is a number another one stored), and goes on as long as
    they do."""
    logs, room = [make(store, settings) for _ in range(4)], room_id()
    envs = [env(room, i) for i in range(60)]
    await asyncio.gather(*(
        log.append(envs[i : i + 6], time.time()) for log in logs for i in range(0, 60, 6)
    ))  # fmt: skip
    messages, _, more = await logs[0].page(room, 0, 0, 1000)
    assert not more and [m.seq for m in messages] == list(range(1, len(messages) + 1))
    ids = [m.server_id for m in messages]
    assert set(ids) == {x.server_id for x in envs}
    assert max(ids.count(i) for i in ids) <= len(logs)
    # One writer alone, consuming the same records again: nothing new.
    again = await logs[1].append(envs, time.time())
    assert (again.stored, again.repeats) == (0, 60)
    assert entry_id(room, 1) == f"{room}|{1:016d}"


async def test_a_message_two_writers_race_for_is_stored_once_and_a_removal_blanks_it(
    store: DeliveryStore, settings: Settings
) -> None:
    """A consumer losing its partition (A) has written a message's id record when the
    partition's new owner (B) stores the same record; A's insert then loses the number
    to B's copy. A stored it again under the next number and moved the record there, so
    the sender's unsend (which blanks the entry the record names) left B's copy, body
    and all, in every member's log (audit). A now finds B's copy: a repeat."""
    a, b, room = make(store, settings), make(store, settings), room_id()
    await a.append([env(room, 0)], time.time())  # number 1
    m = env(room, 1)
    claimed, go = asyncio.Event(), asyncio.Event()
    claim = a._claim

    async def paused_claim(r: str, planned: dict[str, int]) -> Any:
        out = await claim(r, planned)  # A's id record is written
        claimed.set()
        await go.wait()
        return out

    a._claim = paused_claim  # type: ignore[method-assign]
    task = asyncio.create_task(a.append([m], time.time()))
    await claimed.wait()
    assert (await b.append([m], time.time())).stored == 1  # B stores it at 2
    go.set()
    assert ((got := await task).stored, got.repeats) == (0, 1)
    messages, _, _ = await a.page(room, 0, 0, 100)
    assert [(x.seq, x.server_id) for x in messages] == [
        (1, env(room, 0).server_id),
        (2, m.server_id),
    ]
    await store.hot.mark_gone(m.server_id, 3600)  # the sender unsends it
    assert await a.blank([m.server_id]) == 1
    messages, _, _ = await a.page(room, 0, 0, 100)
    assert [x.server_id for x in messages] == [env(room, 0).server_id]


async def test_a_room_that_fails_in_a_batch_stops_the_others_before_the_error_goes_up(
    store: DeliveryStore, settings: Settings, monkeypatch: Any
) -> None:
    """Review finding: with the rooms of a batch side by side, one room's failure went
    up while the others were still writing; the batch's retry then raced them on the
    same rooms (a message could be stored twice). Now they are cancelled and awaited
    first, and the retry stores each message once."""
    log = make(store, settings)
    bad, good = room_id(), [room_id() for _ in range(3)]
    append_room = log._append_room
    finished: list[str] = []

    async def slow_or_failing(room: str, envs: Any, now: float) -> Any:
        if room == bad:
            raise ConnectionError("MongoDB away")
        await asyncio.sleep(0.2)
        finished.append(room)
        return await append_room(room, envs, now)

    monkeypatch.setattr(log, "_append_room", slow_or_failing)
    batch = [env(room, i) for room in [*good, bad] for i in range(2)]
    with pytest.raises(ConnectionError):
        await log.append(batch, time.time())
    await asyncio.sleep(0.4)
    assert finished == []  # cancelled, not still writing behind the retry
    monkeypatch.undo()
    done = await log.append(batch, time.time())
    assert done.stored == 8 and done.repeats == 0
    for room in [*good, bad]:
        messages, last, _ = await log.page(room, 0, 0, 10)
        assert len(messages) == 2 and last == 2


async def test_a_member_who_joined_after_the_oldest_entries_expired_reads_nothing_older(
    store: DeliveryStore, settings: Settings
) -> None:
    """The log's first entries expired (``low`` past them), then a member joined: their
    pages (one room, and many at once) start at the first message stored since they
    joined. The bisection took the missing first entry for the end of the log and the
    page started at ``low``: every message from there on, stored before they joined."""
    log, room = make(store, settings), room_id()
    t0 = time.time() - 3600
    # Message i + 1 stored at t0 + i seconds.
    await log.log.insert_many([log._doc(env(room, i), i + 1, t0 + i) for i in range(20)])
    await log.heads.update_one({"_id": room}, {"$max": {"n": 20}}, upsert=True)
    assert await log.purge_expired(t0 + 5) == 5  # 1..5 expired: low is 6
    joined_ms = int((t0 + 12) * 1000)  # when message 13 was stored
    messages, last, more = await log.page(room, 0, joined_ms, 50)
    assert [m.seq for m in messages] == list(range(13, 21)) and (last, more) == (20, False)
    [(messages, last, more)] = await log.pages([(room, 0, joined_ms)], 50)
    assert [m.seq for m in messages] == list(range(13, 21)) and (last, more) == (20, False)
    # Joined before anything still in the log was stored: from ``low`` on, as before.
    messages, _, _ = await log.page(room, 0, int((t0 + 2) * 1000), 50)
    assert [m.seq for m in messages] == list(range(6, 21))
    # Joined after the last message: nothing, and the cursor at the end.
    assert await log.page(room, 0, int(time.time() * 1000), 50) == ([], 20, False)
