"""Mention notices for the notifier go through the rooms service's outbox: at least once
(they wait while Kafka is away) and never for a notification that was not written."""

from __future__ import annotations

from parley_contract.envelopes import MentionNotice, decode_notice

from services.rooms.events import Check
from services.rooms.store import notification_id, now_ms
from tests.rooms.conftest import RecordLog, RoomsFactory
from tests.rooms.test_events import MANUAL


async def test_a_notice_waits_while_kafka_is_away_then_goes_once(
    make_rooms: RoomsFactory, notices: RecordLog
) -> None:
    api = await make_rooms(MANUAL)
    store = api.rooms.store
    alice, bob = api.user(), api.user()
    room = await api.room(alice, name="lobby")
    assert (await api.join(bob, room))[0] == 200
    real = store.send_event

    async def broker_away(*_: object) -> bool:
        return False

    store.send_event = broker_away  # type: ignore[method-assign]
    try:
        status, msg = await api.post(alice, room, f"hi @{api.username(bob)}")
        assert status == 201 and msg["mentions"] == [bob]
        assert await store.outbox.size() == 1  # the notice, held
        assert await api.rooms.events.drain_once() == 0
    finally:
        store.send_event = real  # type: ignore[method-assign]
    assert await api.rooms.events.drain_once() == 1
    assert await store.outbox.size() == 0
    await notices.until(lambda vs: len(vs) >= 1)
    [(key, value)] = notices.records
    notice = decode_notice(value)
    assert key == bob.encode()
    assert (notice.user, notice.n, notice.room_name, notice.message_seq) == (
        bob, 1, "lobby", msg["seq"]
    )  # fmt: skip
    assert not notice.live  # bob has no connected device: the notifier may mail him


async def test_a_notice_whose_notification_was_never_written_is_dropped(
    make_rooms: RoomsFactory,
) -> None:
    api = await make_rooms(MANUAL)
    bob = api.user()
    # A process that died after holding the notice and before writing the notification.
    await api.rooms.events.hold_notice(
        MentionNotice(user=bob, n=7, room_id="b" * 24, room_name="x", kind="public",
                      sender="someone", excerpt="...", at=now_ms(), message_seq=1),
        Check("notifications", {"_id": notification_id(bob, 7)}),
    )  # fmt: skip
    assert await api.rooms.events.drain_once() == 0
    assert await api.rooms.store.outbox.size() == 0
    assert api.rooms.metrics.outbox.labels("dropped")._value.get() == 1
