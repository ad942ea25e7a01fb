"""The client's event buffer (parley.events.EventBus): no server needed."""

from __future__ import annotations

import asyncio

import pytest
from parley.events import ErrorEvent, Event, EventBus, Receipt


async def test_next_event_takes_the_oldest_of_a_kind_and_leaves_the_others() -> None:
    bus = EventBus()
    bus.emit(ErrorEvent("a", "first"))
    bus.emit(Receipt("m1", "bob", "accepted"))
    bus.emit(ErrorEvent("b", "second"))
    assert await bus.next_event(Receipt) == Receipt("m1", "bob", "accepted")
    assert await bus.next_event(Event) == ErrorEvent("a", "first")
    assert await bus.next_event(ErrorEvent) == ErrorEvent("b", "second")


async def test_next_event_waits_for_one_and_times_out() -> None:
    bus = EventBus()
    waiting = asyncio.create_task(bus.next_event(Receipt, timeout=5))
    await asyncio.sleep(0)
    bus.emit(ErrorEvent("x", "not this one"))
    bus.emit(Receipt("m2", "bob", "stored"))
    assert await waiting == Receipt("m2", "bob", "stored")
    with pytest.raises(TimeoutError):
        await bus.next_event(Receipt, timeout=0.05)


async def test_a_failing_listener_does_not_stop_the_others() -> None:
    bus = EventBus()
    seen: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    bus.add_listener(broken)
    bus.add_listener(seen.append)
    bus.emit(ErrorEvent("c", "m"))
    assert seen == [ErrorEvent("c", "m")]


def test_the_buffer_keeps_the_last_events_only() -> None:
    bus = EventBus(keep=3)
    for i in range(5):
        bus.emit(ErrorEvent(str(i), ""))
    assert [e.code for e in bus._backlog] == ["2", "3", "4"]  # type: ignore[attr-defined]
