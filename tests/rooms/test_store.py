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
    got = await store.roster_page(room, 1, 1234)
    assert [x["user"] for x in got] == [f"u{s}" for s in range(1, 1235) if s % 7]
    seqs = list(range(1, 1301))
    await store.insert_messages(
        [{"_id": message_id(room, s), "room": room, "seq": s} for s in seqs]
    )
    assert sorted(await store.messages_at(room, seqs[::-1])) == seqs
