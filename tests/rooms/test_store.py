"""The rooms store's id layout and list reads (services/rooms/store.py), on the embedded server."""

from __future__ import annotations

from services.rooms.store import list_id, message_id, notification_id, roster_id
from tests.rooms.conftest import RoomsApi


def test_ids_sort_in_numeric_order() -> None:
    room = "a" * 24
    for make in (lambda n: message_id(room, n), lambda n: roster_id(room, n),
                 lambda n: notification_id("u1", n), lambda n: list_id("u1", "r", n)):  # fmt: skip
        ids = [make(n) for n in (1, 2, 9, 10, 99, 100, 10**11)]
        assert ids == sorted(ids)


async def test_lists_longer_than_a_chunk_are_read_whole(api: RoomsApi) -> None:
    store = api.rooms.store
    room = "b" * 24
    await store.roster.insert_many(
        [{"_id": roster_id(room, s), "user": f"u{s}"} for s in range(1, 1235) if s % 7]
    )
    # The rooms next to it in id order are not read with it.
    for other in ("b" * 23 + "a", "b" * 23 + "c"):
        await store.roster.insert_one({"_id": roster_id(other, 5), "user": "elsewhere"})
    got = await store.roster_after(room, 0, None)
    assert [x["user"] for x in got] == [f"u{s}" for s in range(1, 1235) if s % 7]
    assert [x["user"] for x in await store.roster_after(room, 700, 3)] == ["u701", "u702", "u703"]
    assert [x["user"] for x in await store.roster_after(room, 1233, 10)] == ["u1234"]
    assert await store.roster_after(room, 1234, 10) == []
    seqs = list(range(1, 1301))
    await store.insert_messages(
        [{"_id": message_id(room, s), "room": room, "seq": s} for s in seqs]
    )
    assert sorted(await store.messages_at(room, seqs[::-1])) == seqs


async def test_a_ban_counts_the_requests_behind_it_and_the_last_out_deletes_it(
    api: RoomsApi,
) -> None:
    store = api.rooms.store
    room = "c" * 24
    # A ban written before the count existed: its own request counts when one joins.
    await store.bans.insert_one({"_id": f"{room}|u1", "room": room, "user": "u1", "by": "o"})
    assert (await store.join_ban(room, "u1") or {})["n"] == 2
    await store.withdraw_from_ban(room, "u1")
    assert (await store.get_ban(room, "u1") or {})["n"] == 1  # the old one stands
    # One written now, joined twice: it goes with the third withdrawal, not before.
    assert await store.insert_ban({"_id": f"{room}|u2", "room": room, "user": "u2", "n": 1})
    for n in (2, 3):
        assert (await store.join_ban(room, "u2") or {})["n"] == n
    for left in (2, 1):
        await store.withdraw_from_ban(room, "u2")
        assert (await store.get_ban(room, "u2") or {})["n"] == left
    await store.withdraw_from_ban(room, "u2")
    assert await store.get_ban(room, "u2") is None
    assert await store.join_ban(room, "u2") is None  # none to join
    await store.withdraw_from_ban(room, "u2")  # nothing to withdraw from: no change
